"""The built-in demo: compile the coin-fairness model, show the plan, train, compare with the
exact posterior.

Ten flips, six heads; prior Beta(10, 10); the exact posterior is Beta(16, 14), mean 16/30.
"""

from __future__ import annotations

import math
import sys
import time

import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.constraints import positive
from svigraph.infer import SVI, TraceGraph_ELBO

FLIPS = torch.tensor([1.0] * 6 + [0.0] * 4)


def coin_model(flips):
    fairness = sg.sample("fairness", dist.Beta(10.0, 10.0))
    with sg.plate("flips", len(flips)):
        sg.sample("obs", dist.Bernoulli(fairness), obs=flips)


def coin_guide(flips):
    alpha = sg.param("alpha_q", torch.tensor(15.0), constraint=positive)
    beta = sg.param("beta_q", torch.tensor(15.0), constraint=positive)
    sg.sample("fairness", dist.Beta(alpha, beta))


def beta_summary(a, b):
    mean = a / (a + b)
    return mean, math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))


def _bar(fraction, width=24):
    done = int(round(fraction * width))
    return "#" * done + "." * (width - done)


def run(steps=2000, lr=0.01, lrd=0.998, seed=0, out=sys.stdout):
    """Compile, print the plan and graph, train with progress, print the posterior."""
    torch.set_num_threads(1)  # scalar-sized tensors: threads only add overhead
    sg.clear_param_store()
    sg.set_rng_seed(seed)
    loss = TraceGraph_ELBO()
    plan = sg.compile(coin_model, coin_guide, FLIPS, loss=loss)
    print("== compiled plan ==", file=out)
    print(plan, file=out)
    edges = ", ".join(f"{u}->{v}" for u, v in sorted(plan.graph.edges))
    print(f"== dependency graph: {plan.graph.number_of_nodes()} nodes; edges {edges}", file=out)
    # a decaying learning rate (lr * lrd**step) lets the estimate settle instead of jittering
    svi = SVI(coin_model, coin_guide, sg.optim.ClippedAdam({"lr": lr, "lrd": lrd}), loss)
    print(f"== training: {steps} steps of ClippedAdam(lr={lr}, lrd={lrd}) ==", file=out)
    start, every = time.perf_counter(), max(1, steps // 10)
    for step in range(1, steps + 1):
        value = svi.step(FLIPS)
        if step % every == 0 or step == steps:
            a, b = sg.param("alpha_q").item(), sg.param("beta_q").item()
            print(f"  [{_bar(step / steps)}] step {step:5d}  loss {value:8.3f}  "
                  f"mean {a / (a + b):.3f}", file=out)
    seconds = time.perf_counter() - start
    a, b = sg.param("alpha_q").item(), sg.param("beta_q").item()
    mean, std = beta_summary(a, b)
    exact_mean, exact_std = beta_summary(16.0, 14.0)
    print("== posterior of the coin's fairness ==", file=out)
    print(f"  learned  Beta({a:6.2f}, {b:6.2f})  mean {mean:.3f} +- {std:.3f}", file=out)
    print(f"  exact    Beta( 16.00,  14.00)  mean {exact_mean:.3f} +- {exact_std:.3f}", file=out)
    print(f"  {steps} steps in {seconds:.2f} s ({1e3 * seconds / steps:.2f} ms/step)", file=out)
    return mean, std
