"""``compile_plan``: the pass list, in order, each pass's output named and handed on."""

from __future__ import annotations

import functools
import types

from compiler.cache import key_hash
from compiler.estimators import assign_estimators, elbo_terms, enum_factor_terms, score_sites
from compiler.plan import Plan, ScorePlan, SitePlan, TermPlan
from compiler.rao_blackwell import cost_sets, plan_reductions, term_layout
from compiler.schema import check_graph, param_sites
from compiler.symbolic import build_objective
from compiler.validate import validate_enumeration, validate_sites


def compile_plan(graph, *, loss_name, options=(), key=None, downstream_only=False,
                 baselines=None, enumerate=False):
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
    """
    check_graph(graph)
    validate_sites(graph, can_enumerate=enumerate)
    estimators = assign_estimators(graph)
    enumerated, factors = enum_factor_terms(graph, estimators) if enumerate else ((), {})
    terms = elbo_terms(graph, estimators, exclude=factors)
    scores = score_sites(graph, estimators)
    if enumerate:
        validate_enumeration(graph, enumerated, factors, scores)
    costs = cost_sets(graph, terms, scores, downstream_only=downstream_only)
    specs = baselines(graph, scores) if baselines else {}
    stopped = frozenset((program, site) for site, program in scores if program == "guide")
    layout = term_layout(graph, terms)
    score_plans = []
    for site, program in scores:
        score_dims, sliced, whole = plan_reductions(graph, site, program, costs[site], layout)
        score_plans.append(ScorePlan(site, program, score_dims, sliced,
                                     baseline=specs.get(site), whole_terms=whole))
    sites = {
        name: SitePlan(name, est, plates=graph.nodes[name]["plates"],
                       cost=costs.get(name, ()), baseline=specs.get(name),
                       source=graph.nodes[name]["source"])
        for name, est in estimators.items()
    }
    return Plan(graph=graph, loss_name=loss_name, options=tuple(options),
                plates=types.MappingProxyType(dict(graph.graph["plates"])),
                sites=types.MappingProxyType(sites), params=tuple(param_sites(graph)),
                terms=tuple(TermPlan(t, t[1], t[0], stop_gradient=t in stopped) for t in terms),
                enum_terms=tuple(TermPlan(t, t[1], t[0], reads=r) for t, r in factors.items()),
                scores=tuple(score_plans),
                symbolic=functools.partial(build_objective, graph, terms, scores, costs,
                                           baselines=specs, stopped=stopped,
                                           enum_terms=tuple(factors)),
                key=key, key_hash=key_hash(key))
