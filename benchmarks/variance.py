"""Gradient variance of score-function estimators: svigraph against Pyro, per parameter.

For models whose guide sites are all non-reparameterized (Bernoulli / Categorical, so every
guide site gets the score-function estimator), this draws N independent single-sample
gradient estimates of the ELBO with respect to each param's unconstrained leaf, and reports
their mean ± standard error and their variance, for four estimators:

  svigraph Trace_ELBO       ``-grad(differentiable_loss)`` (all cost terms, sliced by plate)
  svigraph TraceGraph_ELBO  the same, with downstream-only (Rao-Blackwellized) cost sets
  Pyro Trace_ELBO           ``loss_and_grads``, ``-leaf.grad`` (grads zeroed in between)
  Pyro TraceGraph_ELBO      the same (it has no ``differentiable_loss``)

Each model and guide is written once against a namespace (``sample``, ``param``, ``plate``,
``dist``) and built twice, for svigraph and for Pyro, so both run the same program; params
start at the same values with the same constraints (``unit_interval``: sigmoid of the leaf in
both; Categorical params are unconstrained logits, since Pyro's ``transform_to(simplex)`` and
svigraph's ``biject_to(simplex)`` have different leaves). No baselines: every estimate is an
independent sample. The exact gradient sums over every guide configuration
(``tests/reference.exact_grads``); for the subsampled model it is the exact gradient of the
full-data model, the quantity the subsampled estimator must be unbiased for.

Columns: exact gradient; per estimator mean ± SE and variance over N; the variance ratio
svigraph TraceGraph / Pyro TraceGraph ± its standard error (delta method, from each
sample's fourth central moment); a mark ``(!)`` on any mean more than 4 SE from the exact
gradient. Under each table: the cost set each estimator's TraceGraph Rao-Blackwellizes every
guide site against (svigraph's compiled plan; Pyro's provenance of each log-prob term).

Pyro is optional (its columns are skipped without it). Run:
    PYTHONPATH=/path/to/pyro python benchmarks/variance.py [--quick]
"""

from __future__ import annotations

import argparse
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


@dataclass
class Stats:
    mean: torch.Tensor
    se: torch.Tensor
    var: torch.Tensor
    var_se: torch.Tensor
    seconds: float


def stats(samples, seconds):
    n = samples.shape[0]
    mean = samples.mean(0)
    var = samples.var(0)
    m4 = ((samples - mean) ** 4).mean(0)
    var_se = ((m4 - var ** 2).clamp(min=0) / n).sqrt()
    return Stats(mean, (var / n).sqrt(), var, var_se, seconds)


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


def _ratio(a, b, i):
    """svigraph TG / Pyro TG variance ratio ± SE (delta method) and a verdict."""
    va, vb = float(a.var[i]), float(b.var[i])
    if vb == 0.0:
        return "n/a", "n/a"
    r = va / vb
    rel = math.sqrt((float(a.var_se[i]) / va) ** 2 + (float(b.var_se[i]) / vb) ** 2) \
        if va > 0 else float(b.var_se[i]) / vb
    se = r * rel
    verdict = "lower" if r + 3 * se < 1 else ("higher" if r - 3 * se > 1 else "equal")
    return f"{r:.3f} ± {se:.3f}", verdict


def _labels(name, numel, shape):
    if numel == 1 and len(shape) == 0:
        return [name]
    return [f"{name}[{', '.join(map(str, idx))}]"
            for idx in (torch.unravel_index(torch.tensor(i), shape) for i in range(numel))
            for idx in [[int(t) for t in idx]]]


def table(case, columns, exact_g, shapes):
    """The markdown table of one model; also returns the list of flagged means."""
    names = list(columns)
    head = ["parameter", "exact"]
    for nm in names:
        head += [f"{nm} mean ± SE", f"{nm} var"]
    has_ratio = "svigraph TraceGraph" in columns and "Pyro TraceGraph" in columns
    if has_ratio:
        head += ["var ratio sg TG / Pyro TG", "sg TG vs Pyro TG"]
    lines = ["| " + " | ".join(head) + " |",
             "| --- | " + " | ".join("---:" for _ in head[1:]) + " |"]
    flagged, verdicts = [], []
    offset = 0
    for p in case.params:
        shape = shapes[p]
        numel = math.prod(shape)
        for j, label in enumerate(_labels(p, numel, shape)):
            i = offset + j
            ex = float(exact_g[p][j])
            row = [f"`{label}`", _num(ex)]
            for nm in names:
                s = columns[nm]
                m, se = float(s.mean[i]), float(s.se[i])
                bad = abs(m - ex) > 4 * se
                if bad:
                    flagged.append((nm, label, m, se, ex))
                row += [f"{_num(m)} ± {_num(se)}{' (!)' if bad else ''}", _num(float(s.var[i]))]
            if has_ratio:
                text, verdict = _ratio(columns["svigraph TraceGraph"], columns["Pyro TraceGraph"],
                                       i)
                row += [text, verdict]
                verdicts.append((label, verdict))
            lines.append("| " + " | ".join(row) + " |")
        offset += numel
    return "\n".join(lines), flagged, verdicts


def run_case(case, n, out):
    estimators = [("svigraph Trace", lambda c: svigraph_grads(sg.infer.Trace_ELBO(), c, n)),
                  ("svigraph TraceGraph",
                   lambda c: svigraph_grads(sg.infer.TraceGraph_ELBO(), c, n))]
    if pyro is not None:
        estimators += [("Pyro Trace", lambda c: pyro_grads(pyro.infer.Trace_ELBO(), c, n)),
                       ("Pyro TraceGraph",
                        lambda c: pyro_grads(pyro.infer.TraceGraph_ELBO(), c, n))]
    exact_g = exact(case)
    sg.clear_param_store()
    case.build(SG)[1](*case.args)
    shapes = {p: tuple(sg.param(p).unconstrained().shape) for p in case.params}
    columns = {}
    for name, fn in estimators:
        start = time.perf_counter()
        with no_validation():
            samples = fn(case)
        seconds = time.perf_counter() - start
        columns[name] = _merge({p: stats(samples[p], seconds) for p in case.params},
                               case.params, seconds)
    text, flagged, verdicts = table(case, columns, exact_g, shapes)
    head = f"### {case.title}\n\nN = {n} single-sample estimates per estimator, seed {SEED}"
    head += "; " + ", ".join(f"{k} {v.seconds:.1f} s" for k, v in columns.items())
    if case.note:
        head += f"\n\n{case.note}"
    costs = ["", "Cost sets (terms each guide site's score is multiplied by; m: model, "
                 "g: guide):", ""]
    sgc = svigraph_cost_sets(case)
    pyc = pyro_cost_sets(case) if pyro is not None else None
    for site in sgc:
        line = f"- `{site}`: svigraph TraceGraph {{{', '.join(sgc[site])}}}"
        if pyc is not None:
            line += f"; Pyro TraceGraph {{{', '.join(pyc.get(site, []))}}}"
        costs.append(line)
    section = head + "\n\n" + text + "\n" + "\n".join(costs) + "\n"
    print(section, file=out, flush=True)
    return section, flagged, verdicts


def _merge(per_param, params, seconds):
    """One Stats over the concatenated (flattened) params, in ``params`` order."""
    cat = [torch.cat([getattr(per_param[p], f) for p in params])
           for f in ("mean", "se", "var", "var_se")]
    return Stats(*cat, seconds)


def main(quick=False, out=sys.stdout):
    """Run the variance benchmark; print and return its markdown section."""
    torch.set_num_threads(1)
    n = N_QUICK if quick else N_FULL
    print(f"# variance benchmark ({'quick' if quick else 'full'})\n{machine_info()}\n"
          f"pyro: {pyro_version() or 'not installed (Pyro columns skipped)'}\n",
          file=out, flush=True)
    sections = ["## variance\n",
                "Per-parameter mean ± SE and variance of single-sample ELBO-gradient estimates "
                "(d ELBO / d unconstrained leaf); `(!)`: mean more than 4 SE from the exact "
                "gradient; ratio verdict: `lower`/`higher` when the ratio is more than 3 SE "
                "from 1, else `equal`.\n"]
    note = ("Reading the ratio: both TraceGraph estimators multiply each site's score by the "
            "same cost set (listed under each table), so a ratio away from 1 comes from the "
            "rest of the surrogate. svigraph's is `elbo + sum_z log q(z) * stop(cost_z)` with "
            "the `-log q(z)` term inside `elbo` differentiated too, an extra zero-mean "
            "`-grad log q(z)` per score-function site (the score weighted by `cost_z - 1`); "
            "Pyro 1.9 drops that term for non-reparameterized sites (their "
            "`ScoreParts.entropy_term` is 0), weighting the score by `cost_z` alone. Both are "
            "unbiased; which has the lower variance depends on the cost's sign and size.\n")
    print(note, file=out, flush=True)
    sections.append(note)
    summary = []
    for case in CASES:
        text, flagged, verdicts = run_case(case, n, out)
        sections.append(text)
        counts = {v: sum(1 for _, x in verdicts if x == v) for v in ("lower", "equal", "higher")}
        line = f"- {case.key}: "
        if verdicts:
            line += ", ".join(f"{k} {v}" for k, v in counts.items() if v) + \
                " (svigraph TraceGraph variance vs Pyro TraceGraph)"
        bad = [f"{nm} `{label}` {m:.4f} ± {se:.4f} vs exact {ex:.4f}"
               for nm, label, m, se, ex in flagged]
        line += ("; means off the exact gradient by > 4 SE: " + "; ".join(bad)) if bad \
            else "; every mean within 4 SE of the exact gradient"
        summary.append(line)
    text = "Summary:\n\n" + "\n".join(summary) + "\n"
    print(text, file=out, flush=True)
    sections.append(text)
    return "\n".join(sections)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a short run (N={N_QUICK})")
    main(parser.parse_args().quick)
