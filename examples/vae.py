"""A small variational autoencoder trained with the ELBO and with the IWAE bound.

Data (generated here, no downloads): 2-D points from a mixture of four Gaussians, pushed
through a fixed random two-layer "true decoder" to 24 Bernoulli pixel probabilities and
binarized: 600 training and 200 held-out binary vectors whose structure is two-dimensional.

Model: z ~ Normal(0, I) in 2-D, x ~ Bernoulli(logits = decoder(z)), decoder an MLP. Guide:
z ~ Normal(encoder(x)), an amortized MLP encoder. Minibatches of 50 via
``plate("data", 600, subsample_size=50)``.

The same VAE (same initial weights, same steps) is trained twice: with ``Trace_ELBO`` and
with ``RenyiELBO(alpha=0, num_particles=K)`` (the importance weighted autoencoder bound, K
particles in one vectorized pass). Every site is in the data plate, so RenyiELBO keeps one
weight per data point and scales the minibatch's bounds by 600/50: an unbiased estimate of
the training set's sum of per-point IWAE bounds (``print(plan)`` says so). For each trained
model we print the final training bound and a held-out estimate of log p(x) per data point:
the IWAE bound with many particles (``--eval-particles``) on the held-out vectors.

Run: python examples/vae.py [--quick] [--steps N] [--particles K] [--eval-particles M]
(defaults: 800 steps, K=5, 500 evaluation particles; e.g. --steps 5000 for a longer run)
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn

import svigraph as sg
from svigraph import distributions as dist
from svigraph.infer import SVI, RenyiELBO, Trace_ELBO

X_DIM, Z_DIM, HIDDEN = 24, 2, 64
N_TRAIN, N_TEST, BATCH = 600, 200, 50


def make_data(seed=0):
    """(train, test) binary vectors from a 4-component 2-D mixture and a random decoder."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]])
    w1 = torch.randn(Z_DIM, 16, generator=gen)
    w2 = 2.0 * torch.randn(16, X_DIM, generator=gen)
    n = N_TRAIN + N_TEST
    comp = torch.randint(0, 4, (n,), generator=gen)
    z = centers[comp] + 0.5 * torch.randn(n, Z_DIM, generator=gen)
    probs = torch.sigmoid(torch.tanh(z @ w1) @ w2)
    x = torch.bernoulli(probs, generator=gen)
    return x[:N_TRAIN], x[N_TRAIN:]


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(Z_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, X_DIM))

    def forward(self, z):
        return self.net(z)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(X_DIM, HIDDEN), nn.Tanh(),
                                 nn.Linear(HIDDEN, 2 * Z_DIM))

    def forward(self, x):
        loc, log_scale = self.net(x).chunk(2, -1)
        return loc, log_scale.clamp(-6.0, 3.0).exp()


class VAE:
    """Model and guide over a data set of ``size`` vectors, minibatches of ``batch``."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.decoder, self.encoder = Decoder(), Encoder()

    def model(self, x, batch=None):
        sg.module("decoder", self.decoder)
        with sg.plate("data", x.shape[0], subsample_size=batch, dim=-1) as idx:
            z = sg.sample("z", dist.Normal(torch.zeros(Z_DIM), 1.0).to_event(1))
            sg.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x[idx])

    def guide(self, x, batch=None):
        sg.module("encoder", self.encoder)
        with sg.plate("data", x.shape[0], subsample_size=batch, dim=-1) as idx:
            loc, scale = self.encoder(x[idx])
            sg.sample("z", dist.Normal(loc, scale).to_event(1))


def held_out_log_likelihood(vae, x, particles):
    """Per data point: the IWAE bound with ``particles`` samples, a tight estimate of log p(x)."""
    estimator = RenyiELBO(alpha=0, num_particles=particles, vectorize_particles=True,
                          max_plate_nesting=1)
    with torch.no_grad():
        return -estimator.loss(vae.model, vae.guide, x) / x.shape[0]


def train(loss, data, steps, lr, seed=0, show_plan=False):
    """Train a fresh VAE (same initial weights for every ``loss``); return it and its final
    training bound per data point (the mean of the last 20 minibatch estimates)."""
    sg.clear_param_store()
    sg.set_rng_seed(seed)
    vae = VAE(seed)
    svi = SVI(vae.model, vae.guide, sg.optim.Adam({"lr": lr}), loss)
    history = []
    for _ in range(steps):
        history.append(-svi.step(data, BATCH) / data.shape[0])
    if show_plan:
        print(svi.plan)
    return vae, sum(history[-20:]) / 20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (also if CI is set)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--particles", type=int, default=5, help="K of the IWAE bound")
    parser.add_argument("--eval-particles", type=int, default=500)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args(argv)
    quick = args.quick or "CI" in os.environ
    steps = 200 if quick else args.steps
    eval_particles = 50 if quick else args.eval_particles
    torch.set_num_threads(1)
    train_x, test_x = make_data()

    sg.clear_param_store()
    sg.set_rng_seed(0)
    untrained = held_out_log_likelihood(VAE(0), test_x, eval_particles)
    print(f"{N_TRAIN} training / {N_TEST} held-out binary vectors of {X_DIM} pixels; "
          f"{steps} steps of minibatch {BATCH}")
    print(f"untrained VAE: held-out log p(x) per point ~ {untrained:.3f}")
    results = {"untrained": untrained}
    objectives = [("Trace_ELBO", Trace_ELBO()),
                  (f"RenyiELBO(alpha=0, K={args.particles})",
                   RenyiELBO(alpha=0, num_particles=args.particles, vectorize_particles=True,
                             max_plate_nesting=1))]
    for label, loss in objectives:
        start = time.perf_counter()
        vae, final = train(loss, train_x, steps, args.lr, show_plan="Renyi" in label)
        held_out = held_out_log_likelihood(vae, test_x, eval_particles)
        elbo_test = -Trace_ELBO(num_particles=10).loss(vae.model, vae.guide, test_x) / N_TEST
        print(f"{label:<26} final training bound {final:8.3f}   held-out: ELBO {elbo_test:8.3f}"
              f", IWAE-{eval_particles} {held_out:8.3f} per point   "
              f"({time.perf_counter() - start:.1f} s)")
        results[label.split("(")[0]] = {"train_bound": final, "held_out": held_out,
                                         "held_out_elbo": elbo_test}
    return results


if __name__ == "__main__":
    main()
