"""The coin-fairness example of SVI Part I, with only the imports changed.

Six heads and four tails, a Beta(10, 10) prior: the exact posterior mean is 16/30 = 0.533.
Run: python examples/coin.py   (CI=1 in the environment makes it a 2-step smoke test)
"""

import math
import os

import torch
import torch.distributions.constraints as constraints

import svigraph as pyro
from svigraph.optim import Adam
from svigraph.infer import SVI, Trace_ELBO
import svigraph.distributions as dist

smoke_test = ('CI' in os.environ)
n_steps = 2 if smoke_test else 2000

pyro.clear_param_store()

data = []
for _ in range(6):
    data.append(torch.tensor(1.0))
for _ in range(4):
    data.append(torch.tensor(0.0))


def model(data):
    alpha0 = torch.tensor(10.0)
    beta0 = torch.tensor(10.0)
    f = pyro.sample("latent_fairness", dist.Beta(alpha0, beta0))
    for i in range(len(data)):
        pyro.sample("obs_{}".format(i), dist.Bernoulli(f), obs=data[i])


def guide(data):
    alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
    beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))


adam_params = {"lr": 0.0005, "betas": (0.90, 0.999)}
optimizer = Adam(adam_params)
svi = SVI(model, guide, optimizer, loss=Trace_ELBO())

for step in range(n_steps):
    svi.step(data)
    if step % 100 == 0:
        print('.', end='', flush=True)

alpha_q = pyro.param("alpha_q").item()
beta_q = pyro.param("beta_q").item()
inferred_mean = alpha_q / (alpha_q + beta_q)
factor = beta_q / (alpha_q * (1.0 + alpha_q + beta_q))
inferred_std = inferred_mean * math.sqrt(factor)
print("\nBased on the data and our prior belief, the fairness " +
      "of the coin is %.3f +- %.3f" % (inferred_mean, inferred_std))
print("exact posterior mean: %.3f" % (16 / 30))
