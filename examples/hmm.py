"""A discrete hidden Markov model learned by exact enumeration.

Synthetic data: 20 sequences of 100 steps from a 3-state HMM with Gaussian emissions. The
model sums the hidden states out exactly with TraceEnum_ELBO; `sg.markov` lets enumeration
reuse dims, so memory stays linear in the sequence length. Decoding the most likely states
(infer_discrete) is not implemented yet.

Run: python examples/hmm.py [--quick] [--steps N]
"""

from __future__ import annotations

import argparse
import os

import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.infer import SVI, TraceEnum_ELBO

TRUE_TRANS = torch.tensor([[0.90, 0.05, 0.05], [0.05, 0.90, 0.05], [0.05, 0.05, 0.90]])
TRUE_LOCS = torch.tensor([-3.0, 0.0, 3.0])


def simulate(steps, sequences, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.zeros(sequences, dtype=torch.long)
    xs = torch.empty(steps, sequences)
    for t in range(steps):
        z = torch.multinomial(TRUE_TRANS[z], 1, generator=gen).squeeze(-1)
        xs[t] = TRUE_LOCS[z] + torch.randn(sequences, generator=gen)
    return xs


def model(xs):
    trans = sg.param("trans", torch.full((3, 3), 1 / 3) + 0.1 * torch.eye(3),
                     constraint=sg.constraints.simplex)
    locs = sg.param("locs", torch.tensor([-1.0, 0.5, 1.0]))
    with sg.plate("sequences", xs.shape[1], dim=-1):
        z = 0
        for t in sg.markov(range(xs.shape[0])):
            z = sg.sample(f"z_{t}", dist.Categorical(trans[z]), infer={"enumerate": "parallel"})
            sg.sample(f"x_{t}", dist.Normal(locs[z], 1.0), obs=xs[t])


def guide(xs):
    pass  # every latent is summed out in the model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    quick = args.quick or "CI" in os.environ
    steps = 30 if quick else args.steps
    torch.set_num_threads(1)
    sg.clear_param_store()
    sg.set_rng_seed(0)
    xs = simulate(30 if quick else 100, 20)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    svi = SVI(model, guide, sg.optim.Adam({"lr": 0.05}), elbo)
    first = -svi.step(xs)
    for _ in range(steps - 1):
        last = -svi.step(xs)
    per_obs = xs.numel()
    locs = sg.param("locs").detach().sort().values
    print(f"log-likelihood per observation: {first / per_obs:.3f} -> {last / per_obs:.3f}")
    print("emission means, learned vs true:", [round(v, 2) for v in locs.tolist()],
          TRUE_LOCS.tolist())
    stay = sg.param("trans").detach().diagonal()
    print("probability of staying, learned:", [round(v, 2) for v in stay.tolist()], "(true 0.9)")
    return {"first": first / per_obs, "last": last / per_obs, "locs": locs}


if __name__ == "__main__":
    main()
