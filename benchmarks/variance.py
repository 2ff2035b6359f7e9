"""Score-function gradient mean and variance, per parameter: svigraph against Pyro 1.9.

Five small models whose guide sites are all non-reparameterized (Bernoulli / Categorical),
so every guide site uses the score-function estimator. For each, N single-sample estimates
of d ELBO / d (unconstrained param leaf), no baselines, from four estimators: svigraph
``Trace_ELBO`` and ``TraceGraph_ELBO`` (``-grad differentiable_loss``) and Pyro's
(``-leaf.grad`` after ``loss_and_grads``). Each model and guide is written once against a
namespace (``sample``, ``param``, ``plate``, ``dist``) and built for both libraries, with the
same initial params, constraints and seed, so the libraries draw the same values sample by
sample. The exact gradient sums over every guide configuration
(``tests/reference.exact_grads``); for the subsampled model it is the full-data gradient,
which the subsampled estimator must be unbiased for. Distribution validation is off while
sampling (it changes no value, only time).

Columns per parameter: the exact gradient; each estimator's mean ± SE, marked ``(!)`` when
more than 4 SE from the exact gradient, and its variance; the variance ratios svigraph TG /
Pyro TG, svigraph Trace / Pyro Trace and svigraph TG / svigraph Trace (the
Rao-Blackwellization gain), each ± a paired delta-method SE. Above each table:
max |svigraph - Pyro| over all samples and params, for TraceGraph and for Trace. Below it:
the cost set each TraceGraph multiplies every guide site's score by (svigraph's compiled
plan; the provenance of Pyro's log-prob terms).

Pyro is optional (without it, only the svigraph columns). Run from the repository root:
    PYTHONPATH=/path/to/pyro python benchmarks/variance.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
from torch.distributions.constraints import real, unit_interval  # noqa: E402

import svigraph as sg  # noqa: E402
from svigraph import distributions as dist  # noqa: E402

from benchmarks.common import machine_info, pyro_version  # noqa: E402
from tests.reference import exact_grads  # noqa: E402

try:  # optional: Pyro columns when it is installed
    import pyro
    import pyro.distributions as pdist
    import pyro.infer
except ImportError:
    pyro = None

SEED = 0
SG_TR, SG_TG = "svigraph Trace", "svigraph TraceGraph"
PY_TR, PY_TG = "Pyro Trace", "Pyro TraceGraph"
N_FULL, N_QUICK = 1500, 300
SG = SimpleNamespace(sample=sg.sample, param=sg.param, plate=sg.plate, dist=dist)
PY = (SimpleNamespace(sample=pyro.sample, param=pyro.param, plate=pyro.plate, dist=pdist)
      if pyro is not None else None)


# ---- models (each ``build(ns)`` returns (model, guide) for one namespace) ---------------
def two_branch(ns):
    """(1) two independent branches: a -> xa, b -> xb."""
    def model():
        a = ns.sample("a", ns.dist.Bernoulli(0.3))
        b = ns.sample("b", ns.dist.Bernoulli(0.6))
        ns.sample("xa", ns.dist.Normal(3.0 * a, 1.0), obs=torch.tensor(2.5))
        ns.sample("xb", ns.dist.Normal(5.0 * b, 1.0), obs=torch.tensor(0.5))

    def guide():
        pa = ns.param("pa", torch.tensor(0.5), constraint=unit_interval)
        pb = ns.param("pb", torch.tensor(0.5), constraint=unit_interval)
        ns.sample("a", ns.dist.Bernoulli(pa))
        ns.sample("b", ns.dist.Bernoulli(pb))

    return model, guide


PLATE_DATA = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])


def global_local(ns):
    """(2) a global Bernoulli z and a plate of 5 local Bernoulli w with observations x."""
    def model(data):
        z = ns.sample("z", ns.dist.Bernoulli(0.3))
        with ns.plate("data", 5):
            w = ns.sample("w", ns.dist.Bernoulli(0.2 + 0.6 * z))
            ns.sample("x", ns.dist.Bernoulli(0.15 + 0.7 * w), obs=data)

    def guide(data):
        qz = ns.param("qz", torch.tensor(0.6), constraint=unit_interval)
        qw = ns.param("qw", torch.tensor([0.3, 0.5, 0.7, 0.4, 0.6]), constraint=unit_interval)
        z = ns.sample("z", ns.dist.Bernoulli(qz))
        with ns.plate("data", 5):
            ns.sample("w", ns.dist.Bernoulli(qw * (0.5 + 0.5 * z)))

    return model, guide


PROBS_A = torch.tensor([0.3, 0.7])
PROBS_B = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
PROBS_C = torch.tensor([[0.5, 0.5], [0.6, 0.4]])


def categorical_chain(ns):
    """(3) the Categorical chain a -> b -> c (c observed) of Pyro's TraceGraph_ELBO /
    TrackNonReparam documentation, with a guide a ~ Cat(la), b ~ Cat(lb[a]) on logits."""
    def model():
        a = ns.sample("a", ns.dist.Categorical(PROBS_A))
        b = ns.sample("b", ns.dist.Categorical(PROBS_B[a]))
        ns.sample("c", ns.dist.Categorical(PROBS_C[b]), obs=torch.tensor(0))

    def guide():
        la = ns.param("la", torch.tensor([0.2, -0.1]), constraint=real)
        lb = ns.param("lb", torch.tensor([[0.3, -0.2], [-0.4, 0.1]]), constraint=real)
        a = ns.sample("a", ns.dist.Categorical(logits=la))
        ns.sample("b", ns.dist.Categorical(logits=lb[a]))

    return model, guide


def deterministic_mix(ns):
    """(4) a deterministic intermediate s = a + 2 b mixes two latents; x observes s; an
    independent latent c has its own observation y."""
    def model():
        a = ns.sample("a", ns.dist.Bernoulli(0.4))
        b = ns.sample("b", ns.dist.Bernoulli(0.5))
        s = a + 2.0 * b
        ns.sample("x", ns.dist.Normal(s, 1.0), obs=torch.tensor(2.2))
        c = ns.sample("c", ns.dist.Bernoulli(0.3))
        ns.sample("y", ns.dist.Normal(4.0 * c, 1.0), obs=torch.tensor(0.8))

    def guide():
        pa = ns.param("pa", torch.tensor(0.5), constraint=unit_interval)
        pb = ns.param("pb", torch.tensor(0.5), constraint=unit_interval)
        pc = ns.param("pc", torch.tensor(0.5), constraint=unit_interval)
        ns.sample("a", ns.dist.Bernoulli(pa))
        ns.sample("b", ns.dist.Bernoulli(pb))
        ns.sample("c", ns.dist.Bernoulli(pc))

    return model, guide


SUB_DATA = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
SUB_INIT = torch.tensor([0.2, 0.4, 0.6, 0.8, 0.3, 0.5, 0.7, 0.55])


def subsampled(ns, subsample_size=4):
    """(5) a plate of 8 subsampled to 4, a non-reparameterized local w per datum. With
    ``subsample_size=None`` it is the full-data model (the exact gradient's reference)."""
    def model(data):
        with ns.plate("data", 8, subsample_size=subsample_size) as idx:
            w = ns.sample("w", ns.dist.Bernoulli(0.3))
            ns.sample("x", ns.dist.Bernoulli(0.2 + 0.6 * w), obs=data[idx])

    def guide(data):
        qw = ns.param("qw", SUB_INIT.clone(), constraint=unit_interval)
        with ns.plate("data", 8, subsample_size=subsample_size) as idx:
            ns.sample("w", ns.dist.Bernoulli(qw[idx]))

    return model, guide


@dataclass
class Case:
    key: str
    title: str
    build: object            # ns -> (model, guide)
    params: tuple
    args: tuple = ()
    exact_build: object = None  # ns -> (model, guide) whose exact gradient is the target
    note: str = ""


CASES = [
    Case("two-branch", "(1) two independent Bernoulli branches a -> xa, b -> xb",
         two_branch, ("pa", "pb")),
    Case("global-local", "(2) global Bernoulli z + plate of 5 local Bernoulli w, observed x",
         global_local, ("qz", "qw"), (PLATE_DATA,)),
    Case("categorical-chain", "(3) Categorical chain a -> b -> c (c observed), logits guide",
         categorical_chain, ("la", "lb")),
    Case("deterministic-mix", "(4) deterministic s = a + 2b mixes two latents; independent c",
         deterministic_mix, ("pa", "pb", "pc")),
    Case("subsampled", "(5) plate of 8 subsampled to 4, non-reparameterized local w",
         subsampled, ("qw",), (SUB_DATA,),
         exact_build=lambda ns: subsampled(ns, subsample_size=None),
         note="exact = gradient of the full-data ELBO (plate of 8, no subsampling), which "
              "the subsampled estimator must be unbiased for"),
]


# ---- sampling gradient estimates ---------------------------------------------------------
@contextmanager
def no_validation():
    """Distribution argument/support validation off (svigraph, torch and Pyro alike) while
    sampling: it changes no value, only time (it halves Pyro's TraceGraph step)."""
    prev_torch = torch.distributions.Distribution._validate_args
    prev_pyro = pyro.infer.util.is_validation_enabled() if pyro is not None else None
    torch.distributions.Distribution.set_default_validate_args(False)
    if pyro is not None:
        pyro.enable_validation(False)
    try:
        yield
    finally:
        if pyro is not None:
            pyro.enable_validation(prev_pyro)
        torch.distributions.Distribution.set_default_validate_args(prev_torch)


def svigraph_grads(elbo, case, n):
    """(n, k) ELBO-gradient samples per param (k = leaf numel) from svigraph."""
    model, guide = case.build(SG)
    sg.clear_param_store()
    sg.set_rng_seed(SEED)
    guide(*case.args)                      # create the params
    out = {p: [] for p in case.params}
    for _ in range(n):
        leaves = [sg.param(p).unconstrained() for p in case.params]
        loss = elbo.differentiable_loss(model, guide, *case.args)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        for p, leaf, g in zip(case.params, leaves, grads):
            out[p].append(-(g if g is not None else torch.zeros_like(leaf)).reshape(-1))
    return {p: torch.stack(v) for p, v in out.items()}


def pyro_grads(elbo, case, n):
    """(n, k) ELBO-gradient samples per param from Pyro's ``loss_and_grads``."""
    model, guide = case.build(PY)
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    guide(*case.args)
    leaves = [pyro.param(p).unconstrained() for p in case.params]
    out = {p: [] for p in case.params}
    for _ in range(n):
        for leaf in leaves:
            leaf.grad = None
        elbo.loss_and_grads(model, guide, *case.args)
        for p, leaf in zip(case.params, leaves):
            g = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            out[p].append(-g.detach().clone().reshape(-1))
    return {p: torch.stack(v) for p, v in out.items()}


def exact(case):
    """{param: flat exact ELBO gradient}."""
    model, guide = (case.exact_build or case.build)(SG)
    sg.clear_param_store()
    guide(*case.args)
    _, grads = exact_grads(model, guide, list(case.params), *case.args)
    return {p: g.reshape(-1) for p, g in grads.items()}


def stats(samples):
    """(mean, SE of the mean, variance) per column of an (n, k) sample."""
    n = samples.shape[0]
    var = samples.var(0)
    return samples.mean(0), (var / n).sqrt(), var


# ---- cost sets (what each TraceGraph Rao-Blackwellizes against) -------------------------
def svigraph_cost_sets(case):
    model, guide = case.build(SG)
    sg.clear_param_store()
    sg.set_rng_seed(SEED)
    plan = sg.compile(model, guide, *case.args, loss=sg.infer.TraceGraph_ELBO())
    return {name: sorted(f"{side[0]}:{site}" for side, site in site_plan.cost)
            for name, site_plan in plan.sites.items() if site_plan.estimator == "score_function"}


def pyro_cost_sets(case):
    """Pyro 1.9's TraceGraph_ELBO adds each log-prob term to the cost of every
    non-reparameterized site in its provenance; recompute those sets from one trace."""
    try:
        from pyro.infer.tracegraph_elbo import TrackNonReparam
        from pyro.infer.enum import get_importance_trace
        from pyro.ops.provenance import get_provenance
    except ImportError:
        return None
    model, guide = case.build(PY)
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    with TrackNonReparam():
        model_tr, guide_tr = get_importance_trace("dense", float("inf"), model, guide,
                                                  case.args, {})
    sets = {}
    for side, tr in (("m", model_tr), ("g", guide_tr)):
        for name, site in tr.nodes.items():
            if site["type"] == "sample":
                for key in get_provenance(site["log_prob_sum"]):
                    sets.setdefault(key, set()).add(f"{side}:{name}")
    return {k: sorted(v) for k, v in sets.items()}


# ---- formatting ---------------------------------------------------------------------------
def _num(x):
    return f"{x:.4f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def var_ratio(a, b):
    """Per column of two (n, k) samples: var(a) / var(b) and its SE by the delta method,
    for paired samples (same seed, so the two sample variances are correlated)."""
    n = a.shape[0]
    va, vb = a.var(0), b.var(0)
    da, db = (a - a.mean(0)) ** 2, (b - b.mean(0)) ** 2

    def cov(x, y):
        return ((x - x.mean(0)) * (y - y.mean(0))).mean(0)

    rel2 = cov(da, da) / va ** 2 + cov(db, db) / vb ** 2 - 2 * cov(da, db) / (va * vb)
    r = va / vb
    return r, r * (rel2.clamp(min=0) / n).sqrt()


def _ratio_text(r, se):
    return f"{r:.3f} ± {se:.3f}" if math.isfinite(r) and math.isfinite(se) else "n/a"


def _verdict(r, se):
    if not (math.isfinite(r) and math.isfinite(se)):
        return "n/a"
    return "lower" if r + 3 * se < 1 else ("higher" if r - 3 * se > 1 else "equal")


def _labels(name, shape):
    """``name`` for a scalar, else ``name[i, j]`` per element in row-major order."""
    if len(shape) == 0:
        return [name]
    return [f"{name}[{', '.join(map(str, idx))}]"
            for idx in itertools.product(*(range(k) for k in shape))]


RATIOS = [("var ratio sg TG / Pyro TG", SG_TG, PY_TG),
          ("var ratio sg Trace / Pyro Trace", SG_TR, PY_TR),
          ("var ratio sg TG / sg Trace", SG_TG, SG_TR)]


def table(raw, exact_g, labels):
    """The markdown table of one model, the flagged means and the ratios (name -> (r, se))."""
    names = list(raw)
    ratios = {title: var_ratio(raw[num], raw[den])
              for title, num, den in RATIOS if num in raw and den in raw}
    head = ["parameter", "exact"]
    for nm in names:
        head += [f"{nm} mean ± SE", f"{nm} var"]
    head += list(ratios)
    lines = ["| " + " | ".join(head) + " |",
             "| --- | " + " | ".join("---:" for _ in head[1:]) + " |"]
    st = {nm: stats(raw[nm]) for nm in names}
    flagged = []
    for i, label in enumerate(labels):
        ex = float(exact_g[i])
        row = [f"`{label}`", _num(ex)]
        for nm in names:
            mean, se, var = (float(t[i]) for t in st[nm])
            bad = abs(mean - ex) > 4 * se
            if bad:
                flagged.append((nm, label, mean, se, ex))
            row += [f"{_num(mean)} ± {_num(se)}{' (!)' if bad else ''}", _num(var)]
        row += [_ratio_text(float(r[i]), float(se[i])) for r, se in ratios.values()]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), flagged, ratios


def run_case(case, n, out):
    """Sample, tabulate and print one model; returns (markdown, summary line)."""
    estimators = [(SG_TR, lambda c: svigraph_grads(sg.infer.Trace_ELBO(), c, n)),
                  (SG_TG, lambda c: svigraph_grads(sg.infer.TraceGraph_ELBO(), c, n))]
    if pyro is not None:
        estimators += [(PY_TR, lambda c: pyro_grads(pyro.infer.Trace_ELBO(), c, n)),
                       (PY_TG, lambda c: pyro_grads(pyro.infer.TraceGraph_ELBO(), c, n))]
    exact_d = exact(case)
    exact_g = torch.cat([exact_d[p] for p in case.params])
    sg.clear_param_store()
    case.build(SG)[1](*case.args)
    labels = [lab for p in case.params
              for lab in _labels(p, tuple(sg.param(p).unconstrained().shape))]
    raw, seconds = {}, {}
    for name, fn in estimators:
        start = time.perf_counter()
        with no_validation():
            samples = fn(case)
        seconds[name] = time.perf_counter() - start
        raw[name] = torch.cat([samples[p] for p in case.params], dim=1)
    text, flagged, ratios = table(raw, exact_g, labels)

    head = f"### {case.title}\n\nN = {n} single-sample estimates per estimator, seed {SEED}; "
    head += ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    if case.note:
        head += f"\n\n{case.note}"
    gaps = {}
    if PY_TG in raw:
        gaps = {kind: float((raw[a] - raw[b]).abs().max())
                for kind, a, b in (("TraceGraph", SG_TG, PY_TG), ("Trace", SG_TR, PY_TR))}
        scale = max(float(raw[PY_TG].abs().max()), float(raw[PY_TR].abs().max()))
        head += ("\n\nSample by sample (same seed, so the same draws): "
                 + ", ".join(f"max |svigraph {k} - Pyro {k}| = {g:.2e}" for k, g in gaps.items())
                 + f" (largest |Pyro sample| {scale:.2f})")
    costs = ["", "Cost sets (the terms each guide site's score is multiplied by; m: model, "
                 "g: guide):", ""]
    sgc = svigraph_cost_sets(case)
    pyc = pyro_cost_sets(case) if pyro is not None else None
    for site in sgc:
        line = f"- `{site}`: svigraph TraceGraph {{{', '.join(sgc[site])}}}"
        if pyc is not None:
            same = " (same)" if sorted(pyc.get(site, [])) == sgc[site] else " (DIFFERENT)"
            line += f"; Pyro TraceGraph {{{', '.join(pyc.get(site, []))}}}{same}"
        costs.append(line)
    section = head + "\n\n" + text + "\n" + "\n".join(costs) + "\n"
    print(section, file=out, flush=True)

    parts = []

    def span(title):
        r = ratios[title][0]
        return f"{float(r.min()):.3f}–{float(r.max()):.3f}"

    if pyro is not None:
        parts.append(f"variance ratio svigraph / Pyro: TG {span(RATIOS[0][0])}, "
                     f"Trace {span(RATIOS[1][0])}")
        parts.append("max |svigraph - Pyro| per sample: "
                     + ", ".join(f"{k} {g:.1e}" for k, g in gaps.items()))
    r, se = ratios[RATIOS[2][0]]
    verdicts = [_verdict(float(a), float(b)) for a, b in zip(r, se)]
    counts = ", ".join(f"{v} {verdicts.count(v)}" for v in ("lower", "equal", "higher", "n/a")
                       if verdicts.count(v))
    parts.append(f"svigraph TG / Trace variance {span(RATIOS[2][0])} ({counts})")
    bad = [f"{nm} `{label}` {m:.4f} ± {s:.4f} vs exact {ex:.4f}"
           for nm, label, m, s, ex in flagged]
    parts.append(("means > 4 SE from exact: " + "; ".join(bad)) if bad else
                 f"all {len(raw) * len(labels)} means within 4 SE of exact")
    cost_ok = pyc is None or all(sorted(pyc.get(k, [])) == v for k, v in sgc.items())
    if pyc is not None:
        parts.append("cost sets " + ("identical" if cost_ok else "DIFFER"))
    return section, f"- {case.key}: " + "; ".join(parts)


def main(quick=False, out=sys.stdout):
    """Run the variance benchmark; print and return its markdown section."""
    torch.set_num_threads(1)
    n = N_QUICK if quick else N_FULL
    print(f"# variance benchmark ({'quick' if quick else 'full'})\n{machine_info()}\n"
          f"pyro: {pyro_version() or 'not installed (Pyro columns skipped)'}\n",
          file=out, flush=True)
    intro = ("Per-parameter mean ± SE and variance of single-sample ELBO-gradient estimates "
             "(d ELBO / d unconstrained leaf), no baselines; `(!)`: mean more than 4 SE from "
             "the exact gradient. Variance ratios carry a paired delta-method SE. In the "
             "summary, `lower`/`equal`/`higher` says whether the ratio svigraph TraceGraph / "
             "svigraph Trace_ELBO is more than 3 SE below 1, within 3 SE of 1, or more than "
             "3 SE above 1; `higher` is possible because the upstream terms TraceGraph drops "
             "have zero mean but can be negatively correlated with the terms it keeps.\n")
    sections = ["## variance\n", intro]
    print(intro, file=out, flush=True)
    summary = []
    for case in CASES:
        text, line = run_case(case, n, out)
        sections.append(text)
        summary.append(line)
    text = "Summary:\n\n" + "\n".join(summary) + "\n"
    print(text, file=out, flush=True)
    sections.append(text)
    return "\n".join(sections)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a short run (N={N_QUICK})")
    main(parser.parse_args().quick)
