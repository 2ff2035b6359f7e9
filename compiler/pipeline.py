"""``compile_plan``: the pass list, in order, each pass's output named and handed on."""

from __future__ import annotations

import dataclasses
import functools
import types

from compiler.analytic_kl import choose_analytic_kl, kl_cost_sets, split_terms
from compiler.cache import key_hash
from compiler.estimators import (assign_estimators, elbo_terms, enum_factor_terms,
                                 enumerated_sites, score_sites, term_reads)
from compiler.plan import Plan, ScorePlan, SitePlan, TermPlan
from compiler.rao_blackwell import cost_sets, plan_reductions, term_layout
from compiler.schema import check_graph, param_sites
from compiler.symbolic import build_objective
from compiler.validate import validate_enumeration, validate_sites


def compile_plan(graph, *, loss_name, options=(), key=None, downstream_only=False,
                 baselines=None, enumerate=False, analytic_kl=None):
    """Compile a dependency graph into a Plan. Pure: ``graph`` is not modified.

    Args:
        graph: a frozen graph in the schema of ``compiler.schema``.
        loss_name: the objective's name, for printing.
        options: (name, value) pairs of the objective's options, for printing.
        key: the structure key the plan is cached under.
        downstream_only: Rao-Blackwellize against downstream costs (TraceGraph_ELBO) rather
            than every term (Trace_ELBO). Plate slicing applies either way.
        baselines: optional pass ``graph, score_sites -> {site: BaselineSpec}``.
        enumerate: sum out model sites marked for enumeration exactly (TraceEnum_ELBO).
        analytic_kl: site -> (guide, model) family signatures: replace each latent's
            log p - log q by -KL(q || p) where it has a closed form (TraceMeanField_ELBO).
    """
    check_graph(graph)
    validate_sites(graph, can_enumerate=enumerate)
    estimators = assign_estimators(graph)
    guide_enum, reads = (), {}
    if enumerate:
        guide_enum = enumerated_sites(graph, estimators, "guide")
        reads = term_reads(graph, guide_enum + enumerated_sites(graph, estimators, "model"))
    enumerated, factors = enum_factor_terms(graph, estimators, reads) if enumerate else ((), {})
    terms = elbo_terms(graph, estimators, exclude=factors)
    scores = score_sites(graph, estimators)
    kl_choices = {} if analytic_kl is None else choose_analytic_kl(graph, estimators, analytic_kl)
    terms, kl_terms = split_terms(terms, kl_choices)
    if enumerate:
        validate_enumeration(graph, estimators, factors, scores)
    # with enumeration, a score site's costs include the contraction's factors it feeds
    costs = cost_sets(graph, terms + tuple(factors), scores, downstream_only=downstream_only)
    costs = kl_cost_sets(graph, costs, kl_terms, scores, downstream_only=downstream_only)
    specs = baselines(graph, scores) if baselines else {}
    stopped = frozenset((program, site) for site, program in scores if program == "guide")
    layout = term_layout(graph, terms + kl_terms)
    score_plans = []
    for site, program in scores:
        score_dims, sliced, whole = plan_reductions(
            graph, site, program, [t for t in costs[site] if t in layout], layout)
        score_plans.append(ScorePlan(site, program, score_dims, sliced,
                                     baseline=specs.get(site), whole_terms=whole))
    sites = {
        name: SitePlan(name, est, plates=graph.nodes[name]["plates"],
                       cost=costs.get(name, ()), baseline=specs.get(name),
                       source=graph.nodes[name]["source"])
        for name, est in estimators.items()
    }
    for name, choice in kl_choices.items():
        sites[name] = dataclasses.replace(
            sites[name], note=choice.note,
            estimator="analytic_kl" if choice.analytic else sites[name].estimator)
    return Plan(graph=graph, loss_name=loss_name, options=tuple(options),
                plates=types.MappingProxyType(dict(graph.graph["plates"])),
                sites=types.MappingProxyType(sites), params=tuple(param_sites(graph)),
                terms=tuple(TermPlan(t, t[1], t[0], stop_gradient=t in stopped,
                                     reads=reads.get(t, ())) for t in terms),
                enum_terms=tuple(TermPlan(t, t[1], t[0], reads=r) for t, r in factors.items()),
                kl_terms=tuple(TermPlan(t, t[1], t[0]) for t in kl_terms),
                scores=tuple(score_plans), guide_enum=guide_enum,
                symbolic=functools.partial(build_objective, graph, terms + kl_terms, scores, costs,
                                           baselines=specs, stopped=stopped,
                                           enum_terms=tuple(factors)),
                key=key, key_hash=key_hash(key))
