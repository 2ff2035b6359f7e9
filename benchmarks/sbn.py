"""Sigmoid belief net benchmark: two Bernoulli layers, score-function guide, neural baselines.

Model (Neal 1992; Mnih & Gregor 2014): in a plate of B=100 data points,
``z1 ~ Bernoulli(sigmoid(b1))`` (10 units), ``z2 ~ Bernoulli(sigmoid(z1 W12 + b2))`` (10 units),
``x ~ Bernoulli(sigmoid(z2 W2x + bx))`` (20 observed dims); each layer ``.to_event(1)``.
Guide: ``z2 ~ Bernoulli(sigmoid(x V + c))``, ``z1 ~ Bernoulli(sigmoid(z2 U + d))``, both
score function, each with a neural baseline ``nn.Linear(20, 1)`` of x. TraceGraph_ELBO:
z2's cost is slice n of log q(z2), log q(z1), log p(z1), log p(z2), log p(x); z1's is slice
n of log q(z1), log p(z1), log p(z2). The data are a fixed random binary batch.

Contenders: svigraph, svigraph JIT (``JitTraceGraph_ELBO`` when it exists), a hand-written
torch step of the same estimator (same costs, baselines and baseline losses, Adam), and
Pyro 1.9.2's TraceGraph_ELBO when installed.

Run: python benchmarks/sbn.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
import torch.distributions as td  # noqa: E402
from torch import nn  # noqa: E402

import svigraph as sg  # noqa: E402
from svigraph import distributions as dist  # noqa: E402

from benchmarks.common import (SVIGRAPH, SVIGRAPH_JIT, TORCH, jit_loss, machine_info,  # noqa: E402
                               optional_pyro, pyro_row_name, pyro_version,
                               run_workload)

pyro, pdist = optional_pyro()  # (None, None) without Pyro: its rows are skipped

B, H1, H2, D, LR = 100, 10, 10, 20, 1e-3
TITLE = "sigmoid belief net 10-10-20, batch 100, neural baselines, TraceGraph_ELBO"


class Baseline(nn.Module):
    """A per-data-point baseline: one linear unit of x, shape [B]."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(D, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


class Nets(nn.Module):
    """All trainable weights: model (p) and guide (q) layers and the two baselines."""

    def __init__(self):
        super().__init__()
        self.p_b1 = nn.Parameter(torch.zeros(H1))
        self.p_12 = nn.Linear(H1, H2)
        self.p_2x = nn.Linear(H2, D)
        self.q_x2 = nn.Linear(D, H2)
        self.q_21 = nn.Linear(H2, H1)
        self.base_z2 = Baseline()
        self.base_z1 = Baseline()


def make_nets(seed=0):
    torch.manual_seed(seed)
    return Nets()


PROTOTYPE = make_nets()
DATA = (torch.rand(B, D, generator=torch.Generator().manual_seed(1)) < 0.3).float()


def programs(lib, d, nets, tag):
    """(model, guide) written with ``lib`` (svigraph or pyro); ``nets`` holds the weights."""

    def model(x):
        lib.module(f"{tag}nets", nets)
        with lib.plate("batch", B):
            z1 = lib.sample("z1", d.Bernoulli(logits=nets.p_b1.expand(B, H1)).to_event(1))
            z2 = lib.sample("z2", d.Bernoulli(logits=nets.p_12(z1)).to_event(1))
            lib.sample("x", d.Bernoulli(logits=nets.p_2x(z2)).to_event(1), obs=x)

    def guide(x):
        lib.module(f"{tag}nets", nets)
        with lib.plate("batch", B):
            z2 = lib.sample("z2", d.Bernoulli(logits=nets.q_x2(x)).to_event(1),
                            infer={"baseline": {"nn_baseline": nets.base_z2,
                                                "nn_baseline_input": x}})
            lib.sample("z1", d.Bernoulli(logits=nets.q_21(z2)).to_event(1),
                       infer={"baseline": {"nn_baseline": nets.base_z1, "nn_baseline_input": x}})

    return model, guide


def svigraph_step(tag, jit=False):
    nets = copy.deepcopy(PROTOTYPE)
    model, guide = programs(sg, dist, nets, tag)
    loss = jit_loss("JitTraceGraph_ELBO") if jit else sg.infer.TraceGraph_ELBO()
    if loss is None:
        return None
    svi = sg.infer.SVI(model, guide, sg.optim.Adam({"lr": LR}), loss)
    return lambda: svi.step(DATA)


def pyro_step(tag):
    if pyro is None:
        return None
    nets = copy.deepcopy(PROTOTYPE)
    model, guide = programs(pyro, pdist, nets, tag)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), pyro.infer.TraceGraph_ELBO())
    return lambda: svi.step(DATA)


def torch_step():
    """The same estimator in torch: per-row costs, baselines read before their update,
    each baseline trained on its squared error (added at zero value), one Adam."""
    nets = copy.deepcopy(PROTOTYPE)
    opt = torch.optim.Adam(nets.parameters(), lr=LR)
    x = DATA

    def bern(logits):
        return td.Independent(td.Bernoulli(logits=logits), 1)

    def step():
        q2 = bern(nets.q_x2(x))
        z2 = q2.sample()
        q1 = bern(nets.q_21(z2))
        z1 = q1.sample()
        lq2, lq1 = q2.log_prob(z2), q1.log_prob(z1)            # [B] each
        lp1 = bern(nets.p_b1.expand(B, H1)).log_prob(z1)
        lp2 = bern(nets.p_12(z1)).log_prob(z2)
        lpx = bern(nets.p_2x(z2)).log_prob(x)
        elbo = (lp1 + lp2 + lpx).sum() - (lq1 + lq2).detach().sum()
        cost2 = (lpx + lp2 + lp1 - lq2 - lq1).detach()
        cost1 = (lp1 + lp2 - lq1).detach()
        b2, b1 = nets.base_z2(x), nets.base_z1(x)
        surrogate = (lq2 * (cost2 - b2.detach())).sum() + (lq1 * (cost1 - b1.detach())).sum()
        surrogate = surrogate - ((b2 - cost2) ** 2).sum() - ((b1 - cost1) ** 2).sum()
        loss = -(elbo + (surrogate - surrogate.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


_built = [0]


def contenders():
    _built[0] += 1
    tag = f"sbn{_built[0]}_"
    out = {SVIGRAPH: svigraph_step(tag), SVIGRAPH_JIT: svigraph_step(tag + "jit_", jit=True),
           TORCH: torch_step()}
    step = pyro_step(tag)
    if step is not None:
        out[pyro_row_name()] = step
    return out


def main(quick=False, out=sys.stdout):
    """Run the sigmoid belief net benchmark; print and return its markdown section."""
    torch.set_num_threads(1)
    warmup, repeats, inner = (5, 5, 10) if quick else (30, 15, 20)
    print(f"# sigmoid belief net benchmark ({'quick' if quick else 'full'})\n{machine_info()}\n"
          f"pyro: {pyro_version() or 'not installed (row skipped)'}\n", file=out, flush=True)
    torch.manual_seed(0)
    return "## sigmoid belief net\n\n" + run_workload(
        TITLE, contenders(), warmup=warmup, repeats=repeats, inner=inner, out=out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    main(parser.parse_args().quick)
