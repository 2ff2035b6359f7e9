"""Which latent sites get an analytic KL term instead of Monte Carlo log p - log q. Pure.

``TraceMeanField_ELBO`` replaces, for a latent site z, the pair of terms
``log p(z) - log q(z)`` (z drawn from q) by ``-KL(q_z || p_z)``, its expectation given the
distributions' parameters, where the pair of families has a closed form: torch's KL registry
first, then the pairs ``compiler.kl_derived`` derives with sympy. Elsewhere the site keeps its
Monte Carlo terms, with a note in the plan saying why.

Soundness. The KL term is the conditional expectation of the site's two terms over z given
the values its two distributions read. That is the same expectation only if none of those
values depends on z itself; the model side is made safe by refusing models where a latent's
prior reads another latent (``check_mean_field``; the precise condition is weaker, but this is
the mean-field contract). A guide site whose distribution reads another guide sample u (a
non-mean-field guide) is allowed: the KL term then depends on u's value, so it is a cost term
of u, and a score-function u is Rao-Blackwellized against it (``kl_cost_sets``); a pathwise u
gets the KL's gradient through its value by autograd.

The site's value is still drawn (for the terms downstream of it), with its own estimator; the
plan labels the site ``analytic_kl``, and its note says how the value is differentiated.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from compiler.errors import MeanFieldError
from compiler.kl_derived import FAMILIES, NoClosedForm, derive
from compiler.rao_blackwell import _independent_iteration, dependence_bits
from compiler.schema import sample_sites

# torch's catch-all rules: right only when the two sides are the same family (exponential
# families) or have equal transforms (unknown until run time), so not trusted blindly
_GENERIC_TORCH_RULES = ("_kl_expfamily_expfamily", "_kl_transformed_transformed")


@dataclass(frozen=True)
class KLChoice:
    """The compiler's decision for one latent site.

    Attributes:
        analytic: whether its terms are replaced by -KL(q || p).
        rule: for an analytic site, where the KL comes from, e.g. "torch _kl_normal_normal"
            or "derived LogNormal||Gamma".
        note: one line for the printed plan: the rule, or why Monte Carlo is kept.
    """

    site: str
    analytic: bool
    rule: str = ""
    note: str = ""


# ---- family signatures: what a distribution is, structurally -----------------------------
# ("dist", cls) | ("independent", n, inner) | ("masked", inner); built by
# runtime.analytic_kl.family_signature from the distributions of the step being compiled.

def _unmask(sig):
    while sig[0] == "masked":
        sig = sig[1]
    return sig


def describe(sig):
    """``Independent(Normal, 1)``-style text of a family signature."""
    sig = _unmask(sig)
    if sig[0] == "independent":
        return f"Independent({describe(sig[2])}, {sig[1]})"
    return sig[1].__name__


def family_name(cls):
    """The ``kl_derived`` family a distribution class belongs to (through its bases), or None."""
    import torch.distributions as tdist
    for base in cls.__mro__:
        name = base.__name__
        if name in FAMILIES and getattr(tdist, name, None) is base:
            return name
    return None


@functools.lru_cache(maxsize=None)
def kl_rule(q_cls, p_cls):
    """(label, callable(q, p) -> KL over the batch shape) for two distribution classes.

    Raises:
        NoClosedForm: neither torch's registry nor the symbolic derivation has the pair.
    """
    from torch.distributions.kl import _dispatch_kl
    fun = _dispatch_kl(q_cls, p_cls)
    if fun is not NotImplemented and fun.__name__ not in _GENERIC_TORCH_RULES:
        return f"torch {fun.__name__}", fun
    if fun is not NotImplemented and fun.__name__ == "_kl_expfamily_expfamily" and q_cls is p_cls:
        return f"torch {fun.__name__}", fun
    q_name, p_name = family_name(q_cls), family_name(p_cls)
    if q_name is None or p_name is None:
        raise NoClosedForm(f"torch's KL registry has no rule for {q_cls.__name__} || "
                           f"{p_cls.__name__}, and no symbolic density is known for "
                           f"{(q_cls if q_name is None else p_cls).__name__}")
    derived = derive(q_name, p_name)
    return f"derived {q_name}||{p_name}", derived


def match_signatures(q_sig, p_sig):
    """The KL rule label for two family signatures, or raise NoClosedForm with the reason.

    Masks are peeled (the runtime applies them); Independent wrappers must agree on how many
    dims they reinterpret, and the KL is then summed over those dims.
    """
    q, p = _unmask(q_sig), _unmask(p_sig)
    if q[0] == "independent" or p[0] == "independent":
        nq = q[1] if q[0] == "independent" else 0
        np_ = p[1] if p[0] == "independent" else 0
        if nq != np_:
            raise NoClosedForm(f"guide {describe(q)} and model {describe(p)} reinterpret "
                               "different numbers of batch dims as event dims")
        return match_signatures(q[2], p[2])
    return kl_rule(q[1], p[1])[0]


# ---- the pass -------------------------------------------------------------------------------

def latent_sites(graph):
    """Sample sites drawn by the guide and scored by the model, in program order."""
    return [n for n in sample_sites(graph)
            if graph.nodes[n]["type"] == "sample" and graph.nodes[n]["guide_fn"] is not None
            and graph.nodes[n]["model_fn"] is not None]


def check_mean_field(graph):
    """Raise ``MeanFieldError`` if a latent's model distribution reads another latent."""
    latents = {n for n in sample_sites(graph) if graph.nodes[n]["type"] == "sample"}
    for name in latent_sites(graph):
        for u, _, data in sorted(graph.in_edges(name, data=True), key=lambda e: e[0]):
            if u in latents and "model" in data["via"]:
                how = "reads the value" if data["kind"] == "data" else \
                    "follows control flow on the value"
                where = [src for prog, src in graph.nodes[name]["source"] if prog == "model"]
                raise MeanFieldError(
                    f"site {name!r}: the model's distribution depends on latent {u!r}, so "
                    "TraceMeanField_ELBO's analytic KL would not be the expectation of "
                    "log p - log q",
                    [f"model {graph.nodes[name]['model_fn']} at {name!r} {how} of {u!r}"
                     + (f" ({where[0]})" if where else ""),
                     "TraceMeanField_ELBO needs a mean-field model: each latent's prior "
                     "reads no other latent"],
                    "use Trace_ELBO or TraceGraph_ELBO for hierarchical models (or make the "
                    f"prior of {name!r} independent of {u!r})", site=name)


def choose_analytic_kl(graph, estimators, pairs):
    """Decide, for each latent site, analytic KL or Monte Carlo.

    Args:
        graph: the dependency graph.
        estimators: site -> estimator (``assign_estimators``).
        pairs: site -> (guide family signature, model family signature).

    Returns:
        site -> KLChoice, for every latent site.
    """
    check_mean_field(graph)
    out = {}
    for name in latent_sites(graph):
        attrs, est = graph.nodes[name], estimators[name]
        if est not in ("pathwise", "score_function"):
            continue
        if attrs["guide_plates"] != attrs["plates"]:
            out[name] = KLChoice(name, False, note=(
                f"Monte Carlo: guide plates {attrs['guide_plates']} differ from model plates "
                f"{attrs['plates']}"))
            continue
        if name not in pairs:
            out[name] = KLChoice(name, False, note="Monte Carlo: no distributions recorded")
            continue
        q_sig, p_sig = pairs[name]
        try:
            rule = match_signatures(q_sig, p_sig)
        except NoClosedForm as why:
            out[name] = KLChoice(name, False, note=(
                f"Monte Carlo: no closed form for KL({describe(q_sig)} || {describe(p_sig)}): "
                f"{why}"))
            continue
        value = "reparameterized" if est == "pathwise" else "score function"
        out[name] = KLChoice(name, True, rule, note=(
            f"KL({describe(q_sig)} || {describe(p_sig)}) by {rule}; value {value}"))
    return out


def split_terms(terms, choices):
    """(Monte Carlo terms without the analytic sites' pairs, the ("kl", site) terms)."""
    analytic = [name for name, c in choices.items() if c.analytic]
    replaced = set(analytic)
    return (tuple(t for t in terms if t[1] not in replaced),
            tuple(("kl", name) for name in analytic))


def kl_cost_sets(graph, costs, kl_terms, scores, *, downstream_only):
    """Add KL terms to the score sites' cost sets.

    ``KL(q_v || p_v)`` is a function of the values v's two distributions read (its parents in
    the graph), not of v's value: it is downstream of a score site s iff one of v's parents
    is s or a value that depends on s.
    """
    if not kl_terms:
        return costs
    if downstream_only:
        index, values, _ = dependence_bits(graph)
        parents = {t: sum(1 << index[u] for u in graph.predecessors(t[1])) for t in kl_terms}
    out = dict(costs)
    for site, _ in scores:
        if downstream_only:
            reached = values[site]
            extra = [t for t in kl_terms if parents[t] & reached]
        else:
            extra = list(kl_terms)
        if graph.nodes[site]["sequential"]:
            extra = [t for t in extra if not _independent_iteration(graph, site, t[1])]
        out[site] = tuple(costs.get(site, ())) + tuple(extra)
    return out

