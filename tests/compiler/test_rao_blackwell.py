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
    reach = nx.descendants(graph, site) | {site}
    return tuple(t for t in terms if t[1] in reach)


@pytest.mark.parametrize("seed", range(20))
def test_downstream_cost_sets_match_naive_reachability(seed):
    """Including cycles (guide and model ordering sites oppositely)."""
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
