"""A two-layer sigmoid belief network trained with score-function gradients and neural baselines.

Generative model: 10 top binary units z2 ~ Bernoulli(sigmoid(prior logits)); 10 middle units
z1 ~ Bernoulli(sigmoid(W2 z2 + c2)); 20 observed units x ~ Bernoulli(sigmoid(W1 z1 + c1)).
The data are 100 vectors drawn once from a randomly initialized "true" network of that shape.

Guide: an amortized encoder, q(z1 | x) then q(z2 | z1), each a Bernoulli whose logits come
from an ``nn.Linear``. Binary latents cannot be reparameterized, so both sites get
score-function gradients; each also gets a neural baseline (a small net predicting the
site's downstream cost per data point: from x for z1, from z1 for z2), trained on its own
squared error. Model and guide are trained jointly with TraceGraph_ELBO. We train once with
and once without the baselines, same seed and steps, and compare the final ELBOs.

Run: PYTHONPATH=. python examples/sbn.py [--steps N] [--quick]   (CI=1 also means quick)
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

import svigraph as sg
from svigraph import distributions as dist
from svigraph.infer import TraceGraph_ELBO, SVI

X_DIM, Z1_DIM, Z2_DIM, BATCH = 20, 10, 10, 100


def make_data(seed=0):
    """BATCH binary vectors sampled from a random SBN of the model's shape."""
    gen = torch.Generator().manual_seed(seed)
    w2 = 2 * torch.randn(Z1_DIM, Z2_DIM, generator=gen)
    w1 = 2 * torch.randn(X_DIM, Z1_DIM, generator=gen)
    z2 = torch.bernoulli(torch.full((BATCH, Z2_DIM), 0.5), generator=gen)
    z1 = torch.bernoulli(torch.sigmoid(z2 @ w2.T - 1.0), generator=gen)
    return torch.bernoulli(torch.sigmoid(z1 @ w1.T - 1.0), generator=gen)


class Baseline(nn.Module):
    """Predicts one number per data point: the expected downstream cost of a site."""

    def __init__(self, in_dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, inputs):
        return self.net(inputs).squeeze(-1)


class SBN:
    def __init__(self, use_baselines):
        self.use_baselines = use_baselines
        self.decode_z1, self.decode_x = nn.Linear(Z2_DIM, Z1_DIM), nn.Linear(Z1_DIM, X_DIM)
        self.encode_z1, self.encode_z2 = nn.Linear(X_DIM, Z1_DIM), nn.Linear(Z1_DIM, Z2_DIM)
        self.baseline_z1, self.baseline_z2 = Baseline(X_DIM), Baseline(Z1_DIM)

    def model(self, x):
        sg.module("decode_z1", self.decode_z1)
        sg.module("decode_x", self.decode_x)
        prior_logits = sg.param("prior_logits", torch.zeros(Z2_DIM))
        with sg.plate("data", len(x)):
            z2 = sg.sample("z2", dist.Bernoulli(logits=prior_logits.expand(len(x), Z2_DIM))
                           .to_event(1))
            z1 = sg.sample("z1", dist.Bernoulli(logits=self.decode_z1(z2)).to_event(1))
            sg.sample("x", dist.Bernoulli(logits=self.decode_x(z1)).to_event(1), obs=x)

    def _baseline(self, name, net, inputs):
        if not self.use_baselines:
            return {}
        sg.module(name, net)
        return {"baseline": {"nn_baseline": net, "nn_baseline_input": inputs}}

    def guide(self, x):
        sg.module("encode_z1", self.encode_z1)
        sg.module("encode_z2", self.encode_z2)
        with sg.plate("data", len(x)):
            z1 = sg.sample("z1", dist.Bernoulli(logits=self.encode_z1(x)).to_event(1),
                           infer=self._baseline("baseline_z1", self.baseline_z1, x))
            sg.sample("z2", dist.Bernoulli(logits=self.encode_z2(z1)).to_event(1),
                      infer=self._baseline("baseline_z2", self.baseline_z2, z1))


def elbo(sbn, data, particles):
    """The ELBO (per data point) estimated with ``particles`` samples."""
    return -TraceGraph_ELBO(num_particles=particles).loss(sbn.model, sbn.guide, data) / len(data)


def train(use_baselines, data, steps, lr, seed, particles, show_plan=False):
    """Train from the same initialization; return the ELBO before and after."""
    sg.clear_param_store()
    sg.set_rng_seed(seed)
    sbn = SBN(use_baselines)
    loss = TraceGraph_ELBO()
    if show_plan:
        print(sg.compile(sbn.model, sbn.guide, data, loss=loss))
    start = elbo(sbn, data, particles)
    # the baseline nets learn faster than the model and guide
    optim = sg.optim.Adam(lambda name: {"lr": 10 * lr if name.startswith("baseline") else lr})
    svi = SVI(sbn.model, sbn.guide, optim, loss)
    for _ in range(steps):
        svi.step(data)
    return start, elbo(sbn, data, particles)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--particles", type=int, default=20, help="for evaluating the ELBO")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    args = parser.parse_args(argv)
    if args.quick or "CI" in os.environ:
        args.steps, args.particles = min(args.steps, 300), min(args.particles, 5)
    torch.set_num_threads(1)
    data = make_data()
    print(f"SBN {Z2_DIM}-{Z1_DIM}-{X_DIM}, {BATCH} data points; {args.steps} steps of "
          f"Adam(lr={args.lr}); ELBO per data point from {args.particles} particles")
    result = {}
    for use_baselines in (True, False):
        start, end = train(use_baselines, data, args.steps, args.lr, args.seed, args.particles,
                           show_plan=use_baselines)
        label = "with neural baselines" if use_baselines else "without baselines"
        print(f"  {label:22s} ELBO {start:8.3f} -> {end:8.3f}")
        result[use_baselines] = (start, end)
    (start, end), (_, end_plain) = result[True], result[False]
    print(f"final ELBO: {end:.3f} with the neural baselines vs {end_plain:.3f} without "
          f"(difference {end - end_plain:+.3f} nats per data point)")
    return {"initial_elbo": start, "final_elbo": end, "final_elbo_no_baseline": end_plain,
            "initial_elbo_no_baseline": result[False][0]}


if __name__ == "__main__":
    main()
