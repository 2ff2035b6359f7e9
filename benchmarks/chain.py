"""Chain benchmark: how the per-step cost grows with the number of sites.

Model: a chain of N scalar latents, ``z_0 ~ Normal(0, 1)``, ``z_i ~ Normal(z_{i-1}, 1)``,
and one observation ``x ~ Normal(z_{N-1}, 1)`` (x = 1). Mean-field guide
``z_i ~ Normal(m_i, s_i)`` with 2N params (s positive). Workloads, for N in {10, 100, 1000}:

  pathwise   every guide site reparameterized, Trace_ELBO
  half-sf    every other guide site ``.with_rsample(False)`` (score function),
             TraceGraph_ELBO: z_i is weighted by its downstream terms, which are
             log q(z_i), log p(z_i) and log p(z_{i+1}) (or log p(x) for the last site)

Contenders: svigraph, svigraph JIT (``JitTrace_ELBO`` / ``JitTraceGraph_ELBO`` when they
exist), a hand-written torch step written site by site (a Python loop over the N sites with
one leaf per param, as a person would write it, ``torch.optim.Adam``), and Pyro 1.9.2 when
installed (its TraceGraph_ELBO cost sets differ: it also keeps upstream terms).

Also printed: the ratio of svigraph's step at N=1,000 to its step at N=100 (linear growth is
10x), from the tables and from a run that alternates ten N=100 steps with one N=1,000 step
(the machine's drift between the tables, minutes apart, cancels there), with the
hand-written loop's ratio beside it; and ``sg.compile`` time of each chain.

Run: python benchmarks/chain.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
import torch.distributions as td  # noqa: E402

import svigraph as sg  # noqa: E402
from svigraph import distributions as dist  # noqa: E402
from svigraph.constraints import positive  # noqa: E402

from benchmarks.common import (SUMMARY, SVIGRAPH, SVIGRAPH_JIT, TORCH, checks_off,  # noqa: E402
                               jit_loss, machine_info, optional_pyro, pyro_row_name,
                               pyro_version, run_workload, time_steps)

pyro, pdist = optional_pyro()  # (None, None) without Pyro: its rows are skipped

LR = 0.01
X = torch.tensor(1.0)


def is_score(kind, i):
    return kind == "half-sf" and i % 2 == 1


def programs(lib, d, tag, n, kind):
    """(model, guide) for the chain of ``n``, written with ``lib`` (svigraph or pyro)."""

    def model(x):
        z = torch.tensor(0.0)
        for i in range(n):
            z = lib.sample(f"z{i}", d.Normal(z, 1.0))
        lib.sample("x", d.Normal(z, 1.0), obs=x)

    def guide(x):
        for i in range(n):
            m = lib.param(f"{tag}m{i}", torch.tensor(0.0))
            s = lib.param(f"{tag}s{i}", torch.tensor(1.0), constraint=positive)
            q = d.Normal(m, s)
            if is_score(kind, i):
                q = q.with_rsample(False) if lib is sg else q.has_rsample_(False)
            lib.sample(f"z{i}", q)

    return model, guide


def svigraph_step(n, kind, tag, jit=False):
    model, guide = programs(sg, dist, tag, n, kind)
    name = "Trace_ELBO" if kind == "pathwise" else "TraceGraph_ELBO"
    loss = jit_loss("Jit" + name) if jit else getattr(sg.infer, name)()
    if loss is None:
        return None
    svi = sg.infer.SVI(model, guide, sg.optim.Adam({"lr": LR}), loss)
    return lambda: svi.step(X)


def pyro_step(n, kind, tag):
    if pyro is None:
        return None
    model, guide = programs(pyro, pdist, tag, n, kind)
    loss = pyro.infer.Trace_ELBO() if kind == "pathwise" else pyro.infer.TraceGraph_ELBO()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), loss)
    return lambda: svi.step(X)


def torch_step(n, kind):
    """Site by site: one (m_i, log s_i) leaf pair per site, the same estimator as svigraph's
    plan (log q of a score site enters the ELBO with a stop-gradient; its surrogate weight
    is its downstream terms)."""
    ms = [torch.tensor(0.0).requires_grad_() for _ in range(n)]
    log_ss = [torch.tensor(0.0).requires_grad_() for _ in range(n)]
    opt = torch.optim.Adam(ms + log_ss, lr=LR)
    scores = [is_score(kind, i) for i in range(n)]

    def step():
        zs, log_qs = [], []
        for i in range(n):
            q = td.Normal(ms[i], log_ss[i].exp())
            z = q.sample() if scores[i] else q.rsample()
            zs.append(z)
            log_qs.append(q.log_prob(z))
        log_ps, prev = [], torch.tensor(0.0)
        for i in range(n):
            log_ps.append(td.Normal(prev, 1.0).log_prob(zs[i]))
            prev = zs[i]
        log_ps.append(td.Normal(prev, 1.0).log_prob(X))
        elbo = sum(log_ps)
        for i in range(n):
            elbo = elbo - (log_qs[i].detach() if scores[i] else log_qs[i])
        surrogate = 0.0
        for i in range(n):
            if scores[i]:
                cost = (log_ps[i] + log_ps[i + 1] - log_qs[i]).detach()
                surrogate = surrogate + log_qs[i] * cost
        loss = -(elbo + (surrogate - surrogate.detach())) if kind != "pathwise" else -elbo
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


_built = [0]


def contenders(n, kind, with_pyro=True):
    _built[0] += 1
    tag = f"chain{_built[0]}_"
    out = {SVIGRAPH: svigraph_step(n, kind, tag),
           SVIGRAPH_JIT: svigraph_step(n, kind, tag + "jit_", jit=True),
           TORCH: torch_step(n, kind)}
    step = pyro_step(n, kind, tag) if with_pyro else None
    if step is not None:
        out[pyro_row_name()] = step
    return out


def compile_seconds(n, kind):
    sg.clear_param_store()
    model, guide = programs(sg, dist, "compile_", n, kind)
    loss = sg.infer.Trace_ELBO() if kind == "pathwise" else sg.infer.TraceGraph_ELBO()
    start = time.perf_counter()
    sg.compile(model, guide, X, loss=loss)
    return time.perf_counter() - start


def growth_interleaved(kind, repeats=9):
    """(svigraph, hand-written) growth of the step from N=100 to N=1,000, each the ratio of
    medians of blocks timed alternately: ten N=100 steps against one N=1,000 step."""
    steps = {}
    for n in (100, 1000):
        _built[0] += 1
        sv, hand = svigraph_step(n, kind, f"growth{_built[0]}_"), checks_off(torch_step(n, kind))
        reps = 10 if n == 100 else 1
        steps[(SVIGRAPH, n)] = lambda f=sv, k=reps: [f() for _ in range(k)]
        steps[(TORCH, n)] = lambda f=hand, k=reps: [f() for _ in range(k)]
    timings = time_steps(steps, warmup=2, repeats=repeats, inner=1)
    return tuple(timings[(who, 1000)].median / timings[(who, 100)].median * 10
                 for who in (SVIGRAPH, TORCH))


def main(quick=False, out=sys.stdout):
    """Run the chain benchmark; print and return its markdown section."""
    torch.set_num_threads(1)
    print(f"# chain benchmark ({'quick' if quick else 'full'})\n{machine_info()}\n"
          f"pyro: {pyro_version() or 'not installed (row skipped)'}\n", file=out, flush=True)
    sections = ["## chain\n"]
    sizes = (10, 100) if quick else (10, 100, 1000)
    per_n = {}
    for kind in ("pathwise", "half-sf"):
        for n in sizes:
            # fewer, shorter blocks for the long chains; Pyro's TraceGraph on 1,000 sites
            # takes seconds a step, so its row is left out there
            inner = max(1, 200 // n) if quick else max(2, 1000 // n)
            repeats = 3 if quick else (7 if n >= 1000 else 11)
            warmup = 2 if quick else max(2, 100 // n)
            torch.manual_seed(0)
            title = f"chain N={n}, " + ("all pathwise, Trace_ELBO" if kind == "pathwise"
                                        else "half score-function, TraceGraph_ELBO")
            sections.append(run_workload(title, contenders(n, kind, with_pyro=n < 1000),
                                         warmup=warmup, repeats=repeats, inner=inner, out=out))
            per_n[(kind, n)] = SUMMARY[-1][1][SVIGRAPH] * SUMMARY[-1][2]
    lines = ["Growth with the number of sites (ms/step at N=1,000 over N=100; linear is 10x): "
             "from the tables above (run minutes apart), and timed interleaved (ten N=100 "
             "steps, then one N=1,000 step, alternately, so both see the same machine); "
             "compile time (`sg.compile`, one run):", ""]
    for kind in ("pathwise", "half-sf"):
        if (kind, 1000) in per_n:
            growth = f"{per_n[(kind, 1000)] / per_n[(kind, 100)]:.1f}x in the tables"
            sv, hand = growth_interleaved(kind)
            growth += f", interleaved svigraph {sv:.1f}x (hand-written loop {hand:.1f}x)"
        else:
            growth = "not run (--quick)"
        lines.append(f"- {kind}: {growth}; compile N=100 {compile_seconds(100, kind):.3f} s, "
                     f"N=1,000 {compile_seconds(1000, kind):.3f} s")
    text = "\n".join(lines)
    print(text, file=out, flush=True)
    sections.append(text + "\n")
    return "\n".join(sections)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    main(parser.parse_args().quick)
