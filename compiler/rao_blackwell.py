"""Cost sets: which ELBO terms each score-function site is weighted by. Pure.

Schulman et al. (2015), "Gradient estimation using stochastic computation graphs": a
score-function site's surrogate needs only the cost terms downstream of it; dropping the rest
keeps the estimator unbiased and cuts its variance (Rao-Blackwellization).
"""

from __future__ import annotations

import networkx as nx


def cost_sets(graph, terms, scores, *, downstream_only):
    """Map each score site to its cost terms (a tuple of ("model"|"guide", site) pairs).

    Args:
        graph: the dependency graph.
        terms: the ELBO's terms in order (``elbo_terms``).
        scores: (site, program) pairs (``score_sites``).
        downstream_only: if true (TraceGraph_ELBO), keep only the terms that depend on the
            site; if false (Trace_ELBO), keep every term.

    What depends on a site s: the *values* reachable from s, following an edge u -> v only
    in the program that produces v's value (the guide for guide-sampled sites, the model for
    model-only latents); then log q of those values and log p of those values and of every
    site whose model distribution reads one of them. A model edge into a guide-sampled site
    changes its log p, not its value, so reach does not continue through it. Control edges
    count like data edges. Plate slicing is decided in ``plan_reductions``; iterations of a
    sequential plate other than the site's own are dropped here, being independent of it.

    Time: one sweep over the value graph's condensation with bitsets, O((V + E) * V / 64)
    word operations, then per site work proportional to its cost set.
    """
    if downstream_only:
        index, values, model_children = dependence_bits(graph)
        names = list(graph.nodes)
        term_index = {t: i for i, t in enumerate(terms)}
    out = {}
    for site, _ in scores:
        if downstream_only:
            reached = values[site]
            log_p = reached
            for bit in _set_bits(reached):
                log_p |= model_children[names[bit]]
            found = [term_index[t] for bit in _set_bits(reached)
                     if (t := ("guide", names[bit])) in term_index]
            found += [term_index[t] for bit in _set_bits(log_p)
                      if (t := ("model", names[bit])) in term_index]
            keep = [terms[i] for i in sorted(found)]
        else:
            keep = list(terms)
        if graph.nodes[site]["sequential"]:
            keep = [t for t in keep if not _independent_iteration(graph, site, t[1])]
        out[site] = tuple(keep)
    return out


def value_producer(attrs):
    """The program that draws a site's value, or None for data, factors and params."""
    if attrs["type"] != "sample":
        return None
    return "guide" if attrs["guide_fn"] is not None else "model"


def is_value_edge(graph, v, data):
    """Whether edge u -> v makes v's value depend on u's."""
    producer = value_producer(graph.nodes[v])
    return producer is not None and producer in data["via"]


def dependence_bits(graph):
    """(node -> bit index, node -> bitset of itself and the values that depend on it,
    node -> bitset of the sites whose model distribution reads it)."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    value_graph = nx.DiGraph()
    value_graph.add_nodes_from(graph.nodes)
    model_children = {n: 0 for n in graph.nodes}
    for u, v, data in graph.edges(data=True):
        if is_value_edge(graph, v, data):
            value_graph.add_edge(u, v)
        if "model" in data["via"] or data["kind"] == "control":
            model_children[u] |= 1 << index[v]
    return index, _reach_bits(value_graph, index), model_children


def _reach_bits(graph, index):
    # A cycle is possible in principle, so sweep the condensation (strongly connected
    # components) and give every member its component's reach.
    dag = nx.condensation(graph)
    members = dag.graph["mapping"]
    comp_bits = {}
    for comp in reversed(list(nx.topological_sort(dag))):
        b = 0
        for node in dag.nodes[comp]["members"]:
            b |= 1 << index[node]
        for child in dag.successors(comp):
            b |= comp_bits[child]
        comp_bits[comp] = b
    return {node: comp_bits[members[node]] for node in graph.nodes}


def _set_bits(b):
    """Indices of the set bits of ``b``, lowest first."""
    while b:
        low = b & -b
        yield low.bit_length() - 1
        b ^= low


def _independent_iteration(graph, site, other):
    """True if ``other`` is in a different iteration of a sequential plate ``site`` is in."""
    mine = dict(graph.nodes[site]["sequential"])
    for plate, counter in graph.nodes[other]["sequential"]:
        if plate in mine and mine[plate] != counter:
            return True
    return False


def term_layout(graph, terms):
    """term -> (index in ``terms``, plates it lives in, rank of its log-prob): read once."""
    layout = {}
    for i, term in enumerate(terms):
        attrs = graph.nodes[term[1]]
        plates = attrs["guide_plates"] if term[0] == "guide" else attrs["plates"]
        layout[term] = (i, frozenset(plates), len(attrs["batch_shape"]))
    return layout


def plan_reductions(graph, site, program, costs, layout):
    """Split a site's costs by how they meet its score, so slices line up.

    Returns:
        (score_dims, sliced, whole): ``score_dims`` are the dims of the site's log-prob
        outside its plates (summed, keepdim); ``sliced`` holds (term, dims) for terms sharing
        a plate with the site, dims being the term's other dims (summed, keepdim); ``whole``
        holds the ``terms`` indices of the rest, which are summed entirely.
    """
    plates = graph.graph["plates"]
    attrs = graph.nodes[site]
    own_plates = attrs["guide_plates"] if program == "guide" else attrs["plates"]
    own = frozenset(own_plates)
    own_dims = {plates[p]["dim"] for p in own_plates}
    score_dims = tuple(d for d in range(-len(attrs["batch_shape"]), 0) if d not in own_dims)
    sliced, whole = [], []
    for term in costs:
        index, term_plates, ndim = layout[term]
        shared = term_plates & own
        if not shared:
            whole.append(index)
            continue
        kept = {plates[p]["dim"] for p in shared}
        sliced.append((term, tuple(d for d in range(-ndim, 0) if d not in kept)))
    return score_dims, tuple(sliced), tuple(whole)
