"""Gaussian-mixture benchmark: ms per SVI step, svigraph against hand-written torch (and Pyro).

Model: K=3 component means ``locs ~ Normal(0, 10)`` (one latent of event shape [K]); in a
plate of N=1,000 points, ``z_n ~ Categorical(uniform)`` and ``x_n ~ Normal(locs[z_n], 1)``.
The data are a fixed draw from three well-separated components. Workloads:

  graph  guide: ``locs ~ Normal(m, s)`` (pathwise) and a per-point ``Categorical(logits_n)``
         for every z_n (score function), TraceGraph_ELBO: each z_n is Rao-Blackwellized
         against slice n of its downstream terms (log q(z_n), log p(z_n), log p(x_n))
  enum   the assignment summed out exactly in the model (``infer={"enumerate": "parallel"}``),
         guide ``locs`` only, TraceEnum_ELBO(max_plate_nesting=1)

Contenders: svigraph (the default plan), svigraph JIT (``JitTraceGraph_ELBO`` /
``JitTraceEnum_ELBO`` when they exist), a hand-written torch step of exactly the same math
(same estimator, same stop-gradients, ``torch.optim.Adam``), and Pyro 1.9.2 when installed.

Run: python benchmarks/gmm.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
import torch.distributions as td  # noqa: E402

import svigraph as sg  # noqa: E402
from svigraph import distributions as dist  # noqa: E402
from svigraph.constraints import positive  # noqa: E402

from benchmarks.common import (SVIGRAPH, SVIGRAPH_JIT, TORCH, jit_loss, machine_info,  # noqa: E402
                               optional_pyro, pyro_row_name, pyro_version,
                               run_workload)

pyro, pdist = optional_pyro()  # (None, None) without Pyro: its rows are skipped

K, N, LR = 3, 1000, 0.01
WORKLOADS = {
    "graph": "gmm K=3, N=1,000: per-point Categorical guide (score function), TraceGraph_ELBO",
    "enum": "gmm K=3, N=1,000: assignment enumerated in the model, TraceEnum_ELBO",
}


def make_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(0, K, (N,), generator=g)
    return torch.tensor([-5.0, 0.0, 5.0])[z] + torch.randn(N, generator=g)


DATA = make_data()
WEIGHTS = torch.ones(K) / K


def _init_logits():
    return torch.zeros(N, K)


# ---- svigraph / Pyro: the same program text, written against either library ------------
def programs(lib, d, tag, kind):
    """(model, guide) written with ``lib`` (svigraph or pyro) and its distributions ``d``."""

    def model(data):
        locs = lib.sample("locs", d.Normal(torch.zeros(K), 10.0).to_event(1))
        with lib.plate("data", N):
            z = lib.sample("z", d.Categorical(WEIGHTS),
                           infer={"enumerate": "parallel"} if kind == "enum" else None)
            lib.sample("x", d.Normal(locs[z], 1.0), obs=data)

    def guide(data):
        m = lib.param(f"{tag}m", torch.tensor([-1.0, 0.0, 1.0]))
        s = lib.param(f"{tag}s", torch.ones(K), constraint=positive)
        lib.sample("locs", d.Normal(m, s).to_event(1))
        if kind == "graph":
            logits = lib.param(f"{tag}logits", _init_logits())
            with lib.plate("data", N):
                lib.sample("z", d.Categorical(logits=logits))

    return model, guide


def svigraph_step(kind, tag, jit=False):
    model, guide = programs(sg, dist, tag, kind)
    if jit:
        loss = jit_loss("JitTraceGraph_ELBO") if kind == "graph" else \
            jit_loss("JitTraceEnum_ELBO", max_plate_nesting=1)
        if loss is None:
            return None
    else:
        loss = sg.infer.TraceGraph_ELBO() if kind == "graph" else \
            sg.infer.TraceEnum_ELBO(max_plate_nesting=1)
    svi = sg.infer.SVI(model, guide, sg.optim.Adam({"lr": LR}), loss)
    return lambda: svi.step(DATA)


def pyro_step(kind, tag):
    if pyro is None:
        return None
    model, guide = programs(pyro, pdist, tag, kind)
    loss = pyro.infer.TraceGraph_ELBO() if kind == "graph" else \
        pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), loss)
    return lambda: svi.step(DATA)


# ---- hand-written torch -----------------------------------------------------------------
def torch_step(kind):
    """The same estimator in plain torch: leaves m, log s (and the logits), Adam(lr)."""
    m = torch.tensor([-1.0, 0.0, 1.0]).requires_grad_()
    log_s = torch.zeros(K).requires_grad_()
    leaves = [m, log_s]
    if kind == "graph":
        logits = _init_logits().requires_grad_()
        leaves.append(logits)
    opt = torch.optim.Adam(leaves, lr=LR)
    prior = td.Independent(td.Normal(torch.zeros(K), 10.0), 1)
    log_w = WEIGHTS.log()
    data = DATA

    def step():
        q_locs = td.Independent(td.Normal(m, log_s.exp()), 1)
        locs = q_locs.rsample()
        elbo = prior.log_prob(locs) - q_locs.log_prob(locs)
        if kind == "graph":
            q_z = td.Categorical(logits=logits)
            z = q_z.sample()
            log_q = q_z.log_prob(z)
            per_point = td.Categorical(WEIGHTS).log_prob(z) + td.Normal(locs[z], 1.0).log_prob(data)
            elbo = elbo + per_point.sum() - log_q.detach().sum()   # log q: stop-gradient
            cost = (per_point - log_q).detach()                     # slice n's downstream terms
            surrogate = (log_q * cost).sum()
            loss = -(elbo + (surrogate - surrogate.detach()))
        else:
            joint = log_w + td.Normal(locs, 1.0).log_prob(data.unsqueeze(-1))   # [N, K]
            loss = -(elbo + joint.logsumexp(-1).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


_built = [0]


def contenders(kind):
    _built[0] += 1
    tag = f"gmm{_built[0]}_"
    out = {SVIGRAPH: svigraph_step(kind, tag), SVIGRAPH_JIT: svigraph_step(kind, tag + "jit_", True),
           TORCH: torch_step(kind)}
    step = pyro_step(kind, tag)
    if step is not None:
        out[pyro_row_name()] = step
    return out


def main(quick=False, out=sys.stdout):
    """Run the gmm benchmark; print and return its markdown section."""
    torch.set_num_threads(1)
    warmup, repeats, inner = (5, 5, 5) if quick else (20, 15, 10)
    print(f"# gmm benchmark ({'quick' if quick else 'full'})\n{machine_info()}\n"
          f"pyro: {pyro_version() or 'not installed (row skipped)'}\n", file=out, flush=True)
    sections = ["## gmm\n"]
    for kind, title in WORKLOADS.items():
        torch.manual_seed(0)
        sections.append(run_workload(title, contenders(kind), warmup=warmup, repeats=repeats,
                                     inner=inner, out=out))
    return "\n".join(sections)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    main(parser.parse_args().quick)
