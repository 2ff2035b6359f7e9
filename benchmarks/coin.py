"""Coin-fairness benchmark: ms per SVI step of svigraph against hand-written torch (and Pyro).

Model: fairness ~ Beta(10, 10); 10 flips (6 heads) ~ Bernoulli(fairness). Guide:
Beta(alpha_q, beta_q) with alpha_q, beta_q positive params initialized at 15 (the leaves are
their logs). Adam(lr=5e-4), one particle. Workloads:

  a        pathwise gradient (Beta.rsample), Trace_ELBO, flips in a vectorized plate
  a-loop   the same, written as the original per-flip loop (10 scalar observe sites)
  b        score-function gradient (Beta(...).with_rsample(False)) with a decaying-average
           baseline (beta 0.95), TraceGraph_ELBO, flips in a vectorized plate

Contenders per workload: svigraph ``SVI.step``; a hand-written pure-torch step of the same
math and optimizer (the ratio column divides by it); Pyro's ``SVI.step`` with the same model
and guide, only when ``import pyro`` works.

Run: python benchmarks/coin.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
from torch.distributions import Bernoulli as TorchBernoulli  # noqa: E402
from torch.distributions import Beta as TorchBeta  # noqa: E402

import svigraph as sg  # noqa: E402
from svigraph import distributions as dist  # noqa: E402
from svigraph.constraints import positive  # noqa: E402

from benchmarks.common import (SVIGRAPH, SVIGRAPH_JIT, TORCH, jit_loss, machine_info,  # noqa: E402
                               optional_pyro, pyro_version, run_workload)

pyro, pdist = optional_pyro()  # (None, None) without Pyro: its rows are skipped

LR = 5e-4
INIT = 15.0
FLIPS = torch.tensor([1.0] * 6 + [0.0] * 4)
FLIP_LIST = [FLIPS[i].clone() for i in range(len(FLIPS))]   # the seed example's list data
BASELINE = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.95}}
EXACT_MEAN = 16.0 / 30.0

WORKLOADS = {
    "a": ("(a) pathwise, Trace_ELBO, flips in a plate", "pathwise", False),
    "a-loop": ("(a) pathwise, Trace_ELBO, per-flip loop (10 observe sites, the seed example)",
               "pathwise", True),
    "b": ("(b) score function + decaying-average baseline (0.95), TraceGraph_ELBO, "
          "flips in a plate", "score", False),
}


# ---- svigraph --------------------------------------------------------------------------
def svigraph_contender(kind, loop, tag, jit=False):
    """(step, posterior_mean) for svigraph (its JIT objective with ``jit``; None when there
    is none); param names carry ``tag`` so contenders built in one process never share
    parameters."""
    a_name, b_name = f"{tag}alpha_q", f"{tag}beta_q"

    def model(data):
        f = sg.sample("fairness", dist.Beta(10.0, 10.0))
        if loop:
            for i in range(len(data)):
                sg.sample(f"obs_{i}", dist.Bernoulli(f), obs=data[i])
        else:
            with sg.plate("flips", len(data)):
                sg.sample("obs", dist.Bernoulli(f), obs=data)

    def guide(data):
        a = sg.param(a_name, torch.tensor(INIT), constraint=positive)
        b = sg.param(b_name, torch.tensor(INIT), constraint=positive)
        if kind == "pathwise":
            sg.sample("fairness", dist.Beta(a, b))
        else:
            sg.sample("fairness", dist.Beta(a, b).with_rsample(False), infer=BASELINE)

    name = "Trace_ELBO" if kind == "pathwise" else "TraceGraph_ELBO"
    loss = jit_loss("Jit" + name) if jit else getattr(sg.infer, name)()
    if loss is None:
        return None
    svi = sg.infer.SVI(model, guide, sg.optim.Adam({"lr": LR}), loss)
    data = FLIP_LIST if loop else FLIPS

    def step():
        return svi.step(data)

    def mean():
        a, b = sg.param(a_name).item(), sg.param(b_name).item()
        return a / (a + b)

    return step, mean


# ---- hand-written torch -----------------------------------------------------------------
def torch_contender(kind, loop):
    """(step, posterior_mean): the same estimator written directly in torch.

    Leaves log(alpha_q), log(beta_q); prior built once; torch.optim.Adam(lr) with
    zero_grad / backward / step. Returns the -ELBO estimate as a float, like SVI.step.
    """
    log_a = torch.tensor(INIT).log().requires_grad_()
    log_b = torch.tensor(INIT).log().requires_grad_()
    opt = torch.optim.Adam([log_a, log_b], lr=LR)
    prior = TorchBeta(torch.tensor(10.0), torch.tensor(10.0))
    data = FLIP_LIST if loop else FLIPS

    def log_joint(z):
        lp = prior.log_prob(z)
        if loop:
            for x in data:
                lp = lp + TorchBernoulli(z).log_prob(x)
            return lp
        return lp + TorchBernoulli(z).log_prob(data).sum()

    if kind == "pathwise":
        def step():
            q = TorchBeta(log_a.exp(), log_b.exp())
            z = q.rsample()
            loss = -(log_joint(z) - q.log_prob(z))
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()
    else:
        avg = [torch.zeros(())]   # the decaying average of the cost, updated after use

        def step():
            q = TorchBeta(log_a.exp(), log_b.exp())
            z = q.sample()
            log_q = q.log_prob(z)
            elbo = log_joint(z) - log_q
            cost = elbo.detach()
            advantage = cost - avg[0]
            avg[0] = 0.95 * avg[0] + 0.05 * cost
            surrogate = log_q * advantage
            loss = -(elbo + (surrogate - surrogate.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.item()

    def mean():
        a, b = log_a.exp().item(), log_b.exp().item()
        return a / (a + b)

    return step, mean


# ---- Pyro (optional) --------------------------------------------------------------------
def pyro_contender(kind, loop, tag):
    """(step, posterior_mean) for Pyro's SVI, or None when Pyro is not installed."""
    if pyro is None:
        return None
    a_name, b_name = f"{tag}alpha_q", f"{tag}beta_q"

    def model(data):
        f = pyro.sample("fairness", pdist.Beta(10.0, 10.0))
        if loop:
            for i in range(len(data)):
                pyro.sample(f"obs_{i}", pdist.Bernoulli(f), obs=data[i])
        else:
            with pyro.plate("flips", len(data)):
                pyro.sample("obs", pdist.Bernoulli(f), obs=data)

    def guide(data):
        a = pyro.param(a_name, torch.tensor(INIT), constraint=positive)
        b = pyro.param(b_name, torch.tensor(INIT), constraint=positive)
        if kind == "pathwise":
            pyro.sample("fairness", pdist.Beta(a, b))
        else:
            pyro.sample("fairness", pdist.Beta(a, b).has_rsample_(False), infer=BASELINE)

    loss = pyro.infer.Trace_ELBO() if kind == "pathwise" else pyro.infer.TraceGraph_ELBO()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), loss)
    data = FLIP_LIST if loop else FLIPS

    def step():
        return svi.step(data)

    def mean():
        a, b = pyro.param(a_name).item(), pyro.param(b_name).item()
        return a / (a + b)

    return step, mean


_built = [0]


def contenders(key):
    """{name: (step, mean)} for one workload, freshly initialized."""
    _, kind, loop = WORKLOADS[key]
    _built[0] += 1
    tag = f"bench{_built[0]}_"
    out = {SVIGRAPH: svigraph_contender(kind, loop, tag)}
    jit = svigraph_contender(kind, loop, tag + "jit_", jit=True)
    if jit is not None:
        out[SVIGRAPH_JIT] = jit
    out[TORCH] = torch_contender(kind, loop)
    p = pyro_contender(kind, loop, tag)
    if p is not None:
        out[f"pyro {pyro_version()}"] = p
    return out


# ---- checks and timing ------------------------------------------------------------------
def posterior_check(key, steps, with_pyro=True, tol=0.015, out=sys.stdout):
    """Train fresh contenders ``steps`` steps each; print and return their posterior means
    (``name -> (mean, near)``, near: within ``tol`` of 16/30; the guide starts 0.033 off)."""
    torch.manual_seed(0)
    means = {}
    for name, (step, mean) in contenders(key).items():
        if name.startswith("pyro") and not with_pyro:
            continue
        for _ in range(steps):
            step()
        m = mean()
        means[name] = (m, abs(m - EXACT_MEAN) < tol)
    print(f"posterior mean after {steps} steps, workload {key}: {_show(means, tol)}",
          file=out, flush=True)
    return means


def _show(means, tol):
    return ", ".join(f"{name} {m:.4f} ({'within' if ok else 'NOT within'} {tol} of 16/30)"
                     for name, (m, ok) in means.items())


def bench(key, warmup, repeats, inner, out=sys.stdout):
    """Time one workload; print its heading and table; return the markdown."""
    title = WORKLOADS[key][0]
    torch.manual_seed(0)
    steps = {name: step for name, (step, _) in contenders(key).items()}
    return run_workload(f"coin {title}", steps, warmup=warmup, repeats=repeats, inner=inner,
                        out=out)


def main(quick=False, out=sys.stdout):
    """Run the coin benchmark; print and return its markdown section."""
    torch.set_num_threads(1)
    warmup, repeats, inner = (20, 5, 20) if quick else (50, 21, 40)
    check_steps = 1000 if quick else 1500
    sections = ["## coin\n"]
    print(f"# coin benchmark ({'quick' if quick else 'full'})\n{machine_info()}\n"
          f"pyro: {pyro_version() or 'not installed (column skipped)'}\n", file=out, flush=True)
    for key in WORKLOADS:
        sections.append(bench(key, warmup, repeats, inner, out=out))
    tol = 0.015
    lines = [f"Correctness: posterior mean after {check_steps} steps from fresh params (seed 0, "
             f"Adam lr 5e-4); exact 16/30 = {EXACT_MEAN:.4f}, the guide starts at 0.5.\n"]
    for key, with_pyro in (("a", True), ("b", False)):   # Pyro's (b) step is slow: skipped
        means = posterior_check(key, check_steps, with_pyro=with_pyro, tol=tol, out=out)
        lines.append(f"- workload {key}: {_show(means, tol)}")
    sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    main(parser.parse_args().quick)
