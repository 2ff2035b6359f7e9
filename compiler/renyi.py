"""The Rényi α bound's plan: which plates the log weights are kept per slice of, the
minibatch scale, the score sites, and the printed and symbolic forms. Pure.

Li & Turner (2016), "Rényi divergence variational inference"; Burda et al. (2016),
"Importance weighted autoencoders" (α = 0); Mnih & Rezende (2016), "Variational inference for
Monte Carlo objectives" (the leave-one-out baseline of the score-function sites).

With K particles z_1..z_K drawn from the guide, each with log weight
w_k = log p(x, z_k) - log q(z_k), the estimate is

    L = 1/(1-α) log( 1/K Σ_k exp((1-α) w_k) ).

Plates that every site is in (all of the model's and the guide's sites) factorize the joint,
so the weight is kept per slice i of those plates and L = Σ_i L_i (as Pyro does); this is a
tighter bound than one joint weight. When such a common plate is subsampled, each slice's
weight is taken at scale 1 (the plate's size/subsample factor divided back out) and the sum
of per-slice bounds is multiplied by that factor: an unbiased estimate of the full data's sum
of per-slice bounds. A subsampled plate that some site is outside of (a global latent) keeps
its factor inside w_k: the estimate is then the bound of the minibatch-rescaled model.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from typing import Any, Optional

import sympy as sp

from compiler.errors import EnumerationError, SvigraphError
from compiler.plan import Plan
from compiler.schema import infer_option
from compiler.symbolic import format_sum, format_term, term_plates


class RenyiError(SvigraphError, ValueError):
    """RenyiELBO was asked for something its bound cannot do (α = 1, enumeration...)."""



@dataclass(frozen=True)
class RenyiLayout:
    """What the runtime needs to turn per-particle terms into the Rényi bound.

    Attributes:
        alpha: the order α (never 1).
        num_particles: K.
        particle_dim: the vectorized particle plate's dim, or None (particles run one by one).
        slice_dims: dims of the plates common to every site (the particle plate excluded):
            the log weights keep these dims, all others are summed.
        common_scale: product of size/subsample over the subsampled common plates; divided
            out of each slice's weight and multiplied onto the sum of per-slice bounds.
        common_plates: (name, size, subsample) of the common plates, for printing.
        rescaled_plates: (name, size, subsample) of subsampled plates that some site is
            outside of: their factor stays inside the weights.
        scores: (site, program) of the score-function sites, in program order.
    """

    alpha: float
    num_particles: int
    particle_dim: Optional[int]
    slice_dims: tuple
    common_scale: float
    common_plates: tuple
    rescaled_plates: tuple
    scores: tuple

    @property
    def keep_dims(self):
        """Dims of a term kept when reducing it to a log weight."""
        extra = () if self.particle_dim is None else (self.particle_dim,)
        return frozenset(self.slice_dims + extra)


def renyi_layout(graph, terms, scores, *, alpha, num_particles, particle_plate=None):
    """The RenyiLayout of a compiled graph. Pure.

    Args:
        terms: the plan's ELBO terms; scores: its (site, program) score sites.
        particle_plate: the name of the vectorized particle plate, if particles are vectorized.
    """
    plates = graph.graph["plates"]
    members = [tuple(term_plates(graph, t)) for t in terms]
    members += [tuple(term_plates(graph, (program, site))) for site, program in scores]
    vectorized = {p for p, info in plates.items() if not info["sequential"]}
    common = set(vectorized)
    for names in members:
        common &= set(names)
    particle_dim = None
    if particle_plate is not None and particle_plate in plates:
        particle_dim = plates[particle_plate]["dim"]
        common.discard(particle_plate)
    common_info, scale = [], 1.0
    for name in sorted(common, key=lambda p: plates[p]["dim"]):
        info = plates[name]
        common_info.append((name, info["size"], info["subsample_size"]))
        if info["subsample_size"] != info["size"]:
            scale *= info["size"] / info["subsample_size"]
    rescaled = tuple((name, info["size"], info["subsample_size"])
                     for name, info in sorted(plates.items())
                     if name not in common and name != particle_plate
                     and info["subsample_size"] != info["size"])
    return RenyiLayout(alpha=float(alpha), num_particles=int(num_particles),
                       particle_dim=particle_dim,
                       slice_dims=tuple(plates[p]["dim"] for p, _, _ in common_info),
                       common_scale=scale, common_plates=tuple(common_info),
                       rescaled_plates=rescaled, scores=tuple(scores))


def check_renyi_graph(graph, scores):
    """Refuse what the bound cannot take: enumerated sites and per-site baselines."""
    for name, attrs in graph.nodes(data=True):
        if attrs["type"] == "sample" and attrs["enumerate"] is not None:
            raise EnumerationError(
                f"site {name!r} is marked for enumeration, which RenyiELBO does not do",
                [f"infer={{'enumerate': {attrs['enumerate']!r}}}"],
                "remove the enumerate flag (the site is then sampled), or use TraceEnum_ELBO",
                site=name)
    for site, _ in scores:
        if infer_option(graph.nodes[site], "baseline", ()):
            raise RenyiError(
                f"site {site!r} asks for a baseline, which RenyiELBO does not take",
                ["RenyiELBO gives every score-function site the leave-one-out baseline of "
                 "its particle (VIMCO), built from the other particles' log weights"],
                f"remove infer={{'baseline': ...}} from site {site!r}, or train with "
                "TraceGraph_ELBO", site=site)


@dataclass(frozen=True, eq=False, repr=False)
class RenyiPlan(Plan):
    """A Plan for the Rényi bound: ``renyi`` holds its RenyiLayout; printing shows the
    bound, the per-particle weight and which estimate minibatches give."""

    renyi: Any = None

    def __str__(self):
        return format_renyi_plan(self)

    def pretty(self, source=False):
        return format_renyi_plan(self, source=source)


def make_renyi_plan(plan, layout):
    """The RenyiPlan of a plan compiled with Trace_ELBO's passes: every term keeps its
    gradient (the bound needs log q's direct gradient), every score site is weighted by
    every term of its slice, and the objective is the bound."""
    terms = tuple(dataclasses.replace(t, stop_gradient=False) for t in plan.terms)
    all_terms = tuple(t.key for t in terms)
    sites = {name: (dataclasses.replace(s, cost=all_terms) if s.cost else s)
             for name, s in plan.sites.items()}
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(Plan)}
    fields.update(terms=terms, sites=types.MappingProxyType(sites),
                  symbolic=lambda: renyi_objective(plan.graph, all_terms, layout))
    return RenyiPlan(**fields, renyi=layout)


# ---- what is computed, in words, sympy and print ---------------------------------------

def _alpha_text(alpha):
    return f"{alpha:g}"


def estimate_statement(layout):
    """Lines saying which estimate the plan computes (minibatches included)."""
    a = layout.alpha
    if a == 0:
        kind = "the IWAE bound: E[bound] <= log p(x), rising to it as K grows"
    elif 0 < a < 1:
        kind = "E[bound] <= L_alpha <= log p(x), rising to L_alpha as K grows"
    elif a > 1:
        kind = "E[bound] falls with K from the ELBO (K=1) to L_alpha <= ELBO"
    else:
        kind = "not a lower bound on log p(x) (alpha < 0: L_alpha >= log p(x))"
    lines = [f"K-sample Rényi bound, alpha={_alpha_text(a)}: {kind}"]
    if layout.common_plates:
        names = ", ".join(p for p, _, _ in layout.common_plates)
        lines.append(f"one weight per slice of plate(s) {names} (every site is in them), "
                     "bound summed over the slices")
    sub = [(p, n, b) for p, n, b in layout.common_plates if n != b]
    if sub:
        text = ", ".join(f"{p} {n}/{b}" for p, n, b in sub)
        lines.append(f"minibatch over common plate(s) ({text}): each slice's weight at scale 1, "
                     f"sum of slice bounds x {layout.common_scale:g}: unbiased for the full "
                     "data's sum of per-slice bounds")
    if layout.rescaled_plates:
        text = ", ".join(f"{p} {n}/{b}" for p, n, b in layout.rescaled_plates)
        lines.append(f"minibatch over plate(s) not every site is in ({text}): their scale "
                     "stays inside w[k], so this is the bound of the minibatch-rescaled model "
                     "averaged over minibatches; it is not unbiased for the full-data bound "
                     "(it is as subsample -> size, and for alpha -> 1)")
    return lines


def renyi_objective(graph, terms, layout):
    """(objective, surrogate) as sympy: the bound in the particle weights w[k, slices]."""
    alpha = sp.nsimplify(layout.alpha)
    beta = 1 - alpha
    k = sp.Symbol("k", integer=True, positive=True)
    K = layout.num_particles
    slices = [sp.Symbol(f"i_{p}", integer=True, nonnegative=True)
              for p, _, _ in layout.common_plates]
    w = sp.IndexedBase("w")[(k, *slices)]
    per_slice = sp.log(sp.Sum(sp.exp(beta * w), (k, 1, K)) / K) / beta
    bound = per_slice
    for sym, (_, _, size) in reversed(list(zip(slices, layout.common_plates))):
        bound = sp.Sum(bound, (sym, 0, size - 1))
    bound = sp.nsimplify(layout.common_scale) * bound
    pieces = [bound]
    for site, program in layout.scores:
        score = sp.IndexedBase(f"{program}:{site}")[(k, *slices)]
        vimco = sp.IndexedBase("loo")[(k, *slices)]
        piece = sp.Sum(score * sp.Function("stop")(per_slice - vimco), (k, 1, K))
        for sym, (_, _, size) in reversed(list(zip(slices, layout.common_plates))):
            piece = sp.Sum(piece, (sym, 0, size - 1))
        pieces.append(sp.nsimplify(layout.common_scale) * piece)
    return bound, sp.Add(*pieces)


def format_renyi_plan(plan, source=False):
    """The usual plan listing, its objective section replaced by the Rényi bound's."""
    from compiler.printing import _wrap, format_plan
    layout = plan.renyi
    base = format_plan(plan, source=source).splitlines()
    cut = next(i for i, line in enumerate(base) if line in ("  costs", "  baselines",
                                                             "  objective"))
    lines = base[:cut]
    graph = plan.graph
    keep = [p for p, _, _ in layout.common_plates]
    if layout.particle_dim is not None:
        keep.append(next(p for p, i in plan.plates.items() if i["dim"] == layout.particle_dim
                         and p not in keep))
    weight = format_sum(graph, [t.key for t in plan.terms], keep=keep)
    a = _alpha_text(layout.alpha)
    slices = "".join(f", {p}" for p, _, _ in layout.common_plates)
    wlabel = f"w[k{slices}]"
    width = max(len(wlabel), len("surrogate"))

    def labelled(label, text):
        return _wrap(f"    {label:<{width}} = ", text, width + 7)

    lines.append("  objective")
    lines += labelled(wlabel, weight)
    if layout.alpha == 0:
        per_slice = f"log(mean_k exp(w[k{slices}]))"
    else:
        per_slice = f"1/(1-{a}) * log(mean_k exp((1-{a}) * w[k{slices}]))"
    bound = per_slice
    for p, _, _ in reversed(layout.common_plates):
        bound = f"sum[{p}]({bound})"
    if layout.common_scale != 1.0:
        bound = f"{layout.common_scale:g} * {bound}"
    lines += labelled("bound", bound + f"   k = 1..{layout.num_particles}")
    if layout.scores:
        scores = " + ".join(format_term(graph, (program, site), keep=keep).replace(
            f"{program}:{site}", f"{program}:{site}[k{slices}]") for site, program in layout.scores)
        if len(layout.scores) > 1:
            scores = f"({scores})"
        own = f"bound[{slices[2:]}]" if slices else "bound"
        text = f"bound + sum_k {scores} * stop({own} - loo[k{slices}])"
        if layout.common_scale != 1.0:
            text = f"bound + {layout.common_scale:g} * sum_k {scores} * stop({own} - loo[k{slices}])"
        lines += labelled("surrogate", text)
        lines.append("    loo[k] = the bound with w[k] replaced by the mean of the other "
                     "particles' weights (VIMCO)" if layout.num_particles > 1 else
                     "    loo = 0 (one particle: no other particle to build a baseline from)")
    lines.append("  estimate")
    for text in estimate_statement(layout):
        lines += _wrap("    ", text, 6)
    lines.append("}")
    return "\n".join(lines)

