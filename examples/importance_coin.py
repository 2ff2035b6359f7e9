"""Importance sampling on the coin-fairness model: the evidence and the posterior, checked
against their closed forms.

Beta(10, 10) prior, six heads in ten flips. The marginal likelihood of the flip sequence is
B(10 + 6, 10 + 4) / B(10, 10) and the posterior is Beta(16, 14) (mean 16/30). Importance
sampling estimates both, first proposing from the prior (guide=None), then from a Beta guide.
Run: python examples/importance_coin.py   (CI=1 in the environment makes it shorter)
"""

import math
import os

import torch

import svigraph as pyro
import svigraph.distributions as dist
from svigraph.distributions import constraints
from svigraph.infer import EmpiricalMarginal, Importance

NUM_SAMPLES = 200 if "CI" in os.environ else 2000  # CI=1: a quick smoke run
data = torch.tensor([1.0] * 6 + [0.0] * 4)


def model(data):
    f = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
    # the seed's model with its loop over flips vectorized: one site, the same density
    with pyro.plate("flips", len(data)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)
    return f


def guide(data):
    # the seed tutorial's initial guide, Beta(15, 15): close to, not at, the posterior
    alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
    beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))


def log_beta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def log_evidence_se(posterior):
    """Delta-method standard error of log(mean weight): sd(w) / (mean(w) sqrt(N))."""
    w = torch.stack(posterior.log_weights).double()
    w = (w - w.max()).exp()
    return float(w.std() / (w.mean() * math.sqrt(len(w))))


def report(name, posterior, exact_log_z, exact_mean):
    marginal = EmpiricalMarginal(posterior)  # the model returns the fairness: "_RETURN"
    ess = float(posterior.get_ESS())
    print(f"{name}")
    print(f"  log evidence  {float(posterior.get_log_normalizer()):.4f} "
          f"+- {log_evidence_se(posterior):.4f}   exact {exact_log_z:.4f}")
    print(f"  ESS           {ess:.0f} of {len(posterior.log_weights)}")
    print(f"  posterior     mean {float(marginal.mean):.4f} +- "
          f"{math.sqrt(float(marginal.variance) / ess):.4f}   exact {exact_mean:.4f}")


def main():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    heads, tails = 6, 4
    exact_log_z = log_beta(10 + heads, 10 + tails) - log_beta(10, 10)
    exact_mean = (10 + heads) / (20 + heads + tails)
    prior = Importance(model, guide=None, num_samples=NUM_SAMPLES).run(data)
    report("proposal: the prior Beta(10, 10)", prior, exact_log_z, exact_mean)
    guided = Importance(model, guide=guide, num_samples=NUM_SAMPLES).run(data)
    report("proposal: the guide Beta(15, 15)", guided, exact_log_z, exact_mean)
    print("exact posterior Beta(16, 14), mean 16/30 = 0.5333")


if __name__ == "__main__":
    main()
