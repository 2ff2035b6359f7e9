"""A 1-D Gaussian mixture with each point's assignment summed out exactly in the model.

Synthetic data: N = 400 points from three components with means -3, 0.5, 4, weights 0.2,
0.3, 0.5 and a shared scale 0.8, drawn with a fixed seed. The model puts priors on the
weights (Dirichlet), the means (Normal) and the scale (LogNormal); the guide is a point mass
(Delta) at a learned value for each, so training finds the MAP estimate. The assignment of
each point is a model site marked for parallel enumeration: TraceEnum_ELBO sums it out of
p(x_n | assignment) p(assignment) for every point at once (one enumeration dim of size 3 left
of the data plate), so the loss is exact given the globals and needs no discrete guide.

Prints the learned means, weights and scale next to the truth, and the compiled plan, whose
``contraction`` section shows the sum-product it runs.

Run: PYTHONPATH=. python examples/gmm_enum.py [--steps N] [--quick]   (CI=1 also means quick)
"""

from __future__ import annotations

import argparse
import os

import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.constraints import positive, simplex
from svigraph.infer import SVI, TraceEnum_ELBO

K, N = 3, 400
TRUE_LOCS = torch.tensor([-3.0, 0.5, 4.0])
TRUE_WEIGHTS = torch.tensor([0.2, 0.3, 0.5])
TRUE_SCALE = 0.8


def make_data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(TRUE_WEIGHTS, N, replacement=True, generator=gen)
    return TRUE_LOCS[labels] + TRUE_SCALE * torch.randn(N, generator=gen)


def model(data):
    weights = sg.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = sg.sample("scale", dist.LogNormal(0.0, 2.0))
    with sg.plate("components", K):
        locs = sg.sample("locs", dist.Normal(0.0, 10.0))
    with sg.plate("data", len(data)):
        assignment = sg.sample("assignment", dist.Categorical(weights),
                               infer={"enumerate": "parallel"})
        sg.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def guide(data):
    """MAP: a point mass at a learned value for each global; the means start at the data's
    quantiles (a common initialization; any spread-out start works)."""
    start = torch.quantile(data, torch.tensor([1 / 6, 1 / 2, 5 / 6]))
    weights = sg.param("weights_map", torch.ones(K) / K, constraint=simplex)
    scale = sg.param("scale_map", torch.tensor(1.0), constraint=positive)
    locs = sg.param("locs_map", start)
    sg.sample("weights", dist.Delta(weights, event_dim=1))
    sg.sample("scale", dist.Delta(scale))
    with sg.plate("components", K):
        sg.sample("locs", dist.Delta(locs))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    steps = 120 if (args.quick or "CI" in os.environ) else args.steps
    torch.set_num_threads(1)
    sg.clear_param_store()
    sg.set_rng_seed(0)
    data = make_data()
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    svi = SVI(model, guide, sg.optim.Adam({"lr": 0.05}), elbo)
    first = svi.step(data)
    for _ in range(steps - 1):
        last = svi.step(data)
    order = sg.param("locs_map").detach().argsort()
    learned = {"locs": sg.param("locs_map").detach()[order],
               "weights": sg.param("weights_map").detach()[order],
               "scale": float(sg.param("scale_map").detach())}
    print(f"loss {first:.1f} -> {last:.1f} after {steps} steps")
    print("means   learned", [round(v, 2) for v in learned["locs"].tolist()],
          " true", TRUE_LOCS.tolist())
    print("weights learned", [round(v, 3) for v in learned["weights"].tolist()],
          " true", [round(v, 3) for v in TRUE_WEIGHTS.tolist()])
    print(f"scale   learned {learned['scale']:.3f}  true {TRUE_SCALE}")
    print(svi.plan if getattr(svi, "plan", None) is not None else elbo.last_plan)
    return {"first": first, "last": last, **learned}


if __name__ == "__main__":
    main()
