"""The cost-set pass against a naive reference (networkx descendants) on random graphs."""

import random

import networkx as nx
import pytest

from compiler.estimators import assign_estimators, elbo_terms, score_sites
from compiler.rao_blackwell import cost_sets
from compiler.schema import check_graph


def node(kind, order, guide=True, model=True, reparam=False, sequential=()):
    return {"type": kind, "guide_fn": "Bernoulli" if guide else None,
            "model_fn": "Bernoulli" if model else None, "reparameterized": reparam,
            "enumerate": None, "plates": (), "guide_plates": (), "sequential": sequential,
            "batch_shape": (), "event_shape": (), "dtype": "f32", "support": "boolean",
            "infer": (), "guide_infer": (), "reads_value": False, "order": order, "source": ()}


def random_graph(seed, n=30, p=0.12):
    rng = random.Random(seed)
    g = nx.DiGraph(plates={})
    for i in range(n):
        observed = rng.random() < 0.3
        g.add_node(f"s{i}", **node("observe" if observed else "sample", i, guide=not observed,
                                   reparam=rng.random() < 0.3))
    for i in range(n):
        for j in range(n):
            if i != j and rng.random() < p and g.nodes[f"s{j}"]["type"] != "param":
                g.add_edge(f"s{i}", f"s{j}", via=frozenset({rng.choice(["guide", "model"])}),
                           kind="data")
    return g


def naive_costs(graph, terms, site):
    """Values reachable along edges of the program producing the target's value; then log q
    of those and log p of those and of their model children."""
    def producer(v):
        a = graph.nodes[v]
        return None if a["type"] != "sample" else ("guide" if a["guide_fn"] else "model")

    values = nx.DiGraph([(u, v) for u, v, d in graph.edges(data=True) if producer(v) in d["via"]])
    values.add_nodes_from(graph.nodes)
    reached = nx.descendants(values, site) | {site}
    log_p = set(reached) | {v for u, v, d in graph.edges(data=True)
                            if u in reached and ("model" in d["via"] or d["kind"] == "control")}
    return tuple(t for t in terms if (t[0] == "guide" and t[1] in reached)
                 or (t[0] == "model" and t[1] in log_p))


@pytest.mark.parametrize("seed", range(20))
def test_downstream_cost_sets_match_naive_reachability(seed):
    """Random edges in either program, cycles included."""
    graph = random_graph(seed)
    check_graph(graph)
    estimators = assign_estimators(graph)
    terms = elbo_terms(graph, estimators)
    scores = score_sites(graph, estimators)
    assert scores, "the random graph should have score-function sites"
    costs = cost_sets(graph, terms, scores, downstream_only=True)
    for site, _ in scores:
        assert costs[site] == naive_costs(graph, terms, site)
    full = cost_sets(graph, terms, scores, downstream_only=False)
    assert all(full[site] == terms for site, _ in scores)


def test_sequential_iterations_are_independent():
    g = nx.DiGraph(plates={"seq": {"size": 2, "subsample_size": 2, "dim": None,
                                   "sequential": True}})
    g.add_node("a0", **node("sample", 0, sequential=(("seq", 0),)))
    g.add_node("a1", **node("sample", 1, sequential=(("seq", 1),)))
    est = assign_estimators(g)
    terms = elbo_terms(g, est)
    costs = cost_sets(g, terms, score_sites(g, est), downstream_only=False)
    assert costs["a0"] == (("guide", "a0"), ("model", "a0"))


def test_reverse_ordered_guide_does_not_over_reach():
    """Model z2 -> z1 -> x, guide z1 -> z2: z1's value comes from the guide, so z2 reaches
    log p(z1) (whose model distribution reads z2) but not x or log q(z1)."""
    g = nx.DiGraph(plates={})
    for i, name in enumerate(["z1", "z2", "x"]):
        g.add_node(name, **node("observe" if name == "x" else "sample", i, guide=name != "x"))
    g.add_edge("z1", "z2", via=frozenset({"guide"}), kind="data")
    g.add_edge("z2", "z1", via=frozenset({"model"}), kind="data")
    g.add_edge("z1", "x", via=frozenset({"model"}), kind="data")
    est = assign_estimators(g)
    terms = elbo_terms(g, est)
    costs = cost_sets(g, terms, score_sites(g, est), downstream_only=True)
    assert costs["z2"] == (("guide", "z2"), ("model", "z1"), ("model", "z2"))
    assert costs["z1"] == (("guide", "z1"), ("guide", "z2"), ("model", "z1"), ("model", "z2"),
                           ("model", "x"))
