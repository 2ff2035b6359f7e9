"""Tracing into the dependency graph: exact node sets, edge sets and attributes for small models."""

import networkx as nx
import pytest
import torch

import svigraph as sg
from compiler.schema import NODE_ATTRS, GraphSchemaError, check_graph
from svigraph import distributions as dist
from svigraph.constraints import positive, simplex
from svigraph.tracing import trace_graph

# The node attributes every test pins (dtype, support, infer, order and source are left out).
PINNED = ("type", "guide_fn", "model_fn", "reparameterized", "enumerate", "plates",
          "guide_plates", "sequential", "batch_shape", "event_shape", "reads_value")


def node(type, guide_fn=None, model_fn=None, reparameterized=False, enumerate=None, plates=(),
         guide_plates=(), sequential=(), batch_shape=(), event_shape=(), reads_value=False):
    """The expected pinned attributes of one node (defaults: those of an unplated param)."""
    return {"type": type, "guide_fn": guide_fn, "model_fn": model_fn,
            "reparameterized": reparameterized, "enumerate": enumerate, "plates": plates,
            "guide_plates": guide_plates, "sequential": sequential,
            "batch_shape": batch_shape, "event_shape": event_shape, "reads_value": reads_value}


def latent(fn, reparameterized, guide_fn=None, **kw):
    """A latent sample site with the same family in model and guide (unless told)."""
    return node("sample", guide_fn or fn, fn, reparameterized, **kw)


def observed(fn, **kw):
    return node("observe", None, fn, False, **kw)


def nodes_of(graph):
    return {name: {k: attrs[k] for k in PINNED} for name, attrs in graph.nodes(data=True)}


def edges_of(graph):
    """``{(u, v): (via, kind)}`` for every edge (``via`` compares equal to a plain set)."""
    return {(u, v): (d["via"], d["kind"]) for u, v, d in graph.edges(data=True)}


def traced(model, guide, *args, **kwargs):
    """Trace ``model`` / ``guide``, check the schema, and return the graph."""
    graph = trace_graph(model, guide, args, kwargs).graph
    check_graph(graph)
    assert nx.is_frozen(graph)
    return graph


G, M, GM = {"guide"}, {"model"}, {"guide", "model"}


def data(via):
    return (via, "data")


def control(via):
    return (via, "control")


# ---------------------------------------------------------------------------------------------
# 1. the seed's discrete chain

def chain_model():
    probs_a = torch.tensor([0.3, 0.7])
    probs_b = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    probs_c = torch.tensor([[0.5, 0.5], [0.6, 0.4]])
    a = sg.sample("a", dist.Categorical(probs_a))
    b = sg.sample("b", dist.Categorical(probs_b[a]))
    sg.sample("c", dist.Categorical(probs_c[b]), obs=torch.tensor(0))


def chain_guide():
    qa = sg.param("qa", torch.tensor([0.5, 0.5]), constraint=simplex)
    qb = sg.param("qb", torch.tensor([0.4, 0.6]), constraint=simplex)
    sg.sample("a", dist.Categorical(qa))
    sg.sample("b", dist.Categorical(qb))


CHAIN_NODES = {
    "qa": node("param", batch_shape=(2,)),
    "qb": node("param", batch_shape=(2,)),
    "a": latent("Categorical", False),
    "b": latent("Categorical", False),
    "c": observed("Categorical"),
}
CHAIN_EDGES = {
    ("qa", "a"): data(G),
    ("qb", "b"): data(G),
    ("a", "b"): data(M),
    ("b", "c"): data(M),
}


def test_discrete_chain_graph_is_exact():
    """The seed's a -> b -> c chain: direct model edges only (no a -> c), params feed the guide."""
    graph = traced(chain_model, chain_guide)
    assert nodes_of(graph) == CHAIN_NODES
    assert edges_of(graph) == CHAIN_EDGES
    assert not graph.has_edge("a", "c")
    assert graph.graph["plates"] == {}


def test_compile_exposes_the_same_graph():
    """``sg.compile(...).graph`` under TraceGraph_ELBO is the traced dependency graph."""
    plan = sg.compile(chain_model, chain_guide, loss=sg.infer.TraceGraph_ELBO())
    check_graph(plan.graph)
    assert nodes_of(plan.graph) == CHAIN_NODES
    assert edges_of(plan.graph) == CHAIN_EDGES


def test_traced_program_keeps_both_traces():
    """The TracedProgram carries the guide and model traces the graph was built from."""
    result = trace_graph(chain_model, chain_guide, (), {})
    assert [n for n, s in result.guide_trace.items() if s["type"] == "sample"] == ["a", "b"]
    assert [n for n, s in result.model_trace.items() if s["type"] == "sample"] == ["a", "b", "c"]
    assert int(result.model_trace["a"]["value"]) == int(result.guide_trace["a"]["value"])
    order = {n: a["order"] for n, a in result.graph.nodes(data=True)}
    assert sorted(order, key=order.get) == ["qa", "qb", "a", "b", "c"]


# ---------------------------------------------------------------------------------------------
# 2. a longer continuous chain under three guides

def normal_chain_model(x):
    z1 = sg.sample("z1", dist.Normal(0.0, 1.0))
    z2 = sg.sample("z2", dist.Normal(z1, 1.0))
    z3 = sg.sample("z3", dist.Normal(2.0 * z2, 1.0))
    sg.sample("obs", dist.Normal(z3, 1.0), obs=x)


def mean_field_guide(x):
    for i in (1, 2, 3):
        loc = sg.param(f"loc{i}", torch.tensor(0.0))
        scale = sg.param(f"scale{i}", torch.tensor(1.0), constraint=positive)
        sg.sample(f"z{i}", dist.Normal(loc, scale))


def reverse_guide(x):
    loc = sg.param("loc3", torch.tensor(0.0))
    w = sg.param("w", torch.tensor(0.5))
    z3 = sg.sample("z3", dist.Normal(loc, 1.0))
    z2 = sg.sample("z2", dist.Normal(w * z3, 1.0))
    sg.sample("z1", dist.Normal(z2, 1.0))


def forward_guide(x):
    loc = sg.param("loc1", torch.tensor(0.0))
    z1 = sg.sample("z1", dist.Normal(loc, 1.0))
    z2 = sg.sample("z2", dist.Normal(z1, 1.0))
    sg.sample("z3", dist.Normal(z2 + 1.0, 1.0))


def normal_latents():
    return {f"z{i}": latent("Normal", True) for i in (1, 2, 3)}


MODEL_CHAIN_EDGES = {("z1", "z2"): data(M), ("z2", "z3"): data(M), ("z3", "obs"): data(M)}


def test_normal_chain_mean_field_guide():
    """A mean-field guide adds only param -> latent edges; the model chain stays direct."""
    graph = traced(normal_chain_model, mean_field_guide, torch.tensor(0.5))
    params = {f"{p}{i}": node("param") for p in ("loc", "scale") for i in (1, 2, 3)}
    assert nodes_of(graph) == {**params, **normal_latents(), "obs": observed("Normal")}
    expected = {(f"{p}{i}", f"z{i}"): data(G) for p in ("loc", "scale") for i in (1, 2, 3)}
    assert edges_of(graph) == {**expected, **MODEL_CHAIN_EDGES}


def test_normal_chain_reverse_guide_makes_a_cycle():
    """A guide run in reverse (z3, z2 | z3, z1 | z2) gives guide edges against the model's."""
    graph = traced(normal_chain_model, reverse_guide, torch.tensor(0.5))
    assert nodes_of(graph) == {"loc3": node("param"), "w": node("param"), **normal_latents(),
                               "obs": observed("Normal")}
    assert edges_of(graph) == {
        ("loc3", "z3"): data(G), ("w", "z2"): data(G),
        ("z3", "z2"): data(G), ("z2", "z1"): data(G),
        **MODEL_CHAIN_EDGES,
    }
    assert not nx.is_directed_acyclic_graph(graph)
    order = {n: a["order"] for n, a in graph.nodes(data=True)}
    assert sorted(order, key=order.get) == ["loc3", "w", "z3", "z2", "z1", "obs"]


def test_normal_chain_forward_guide_merges_via():
    """A guide with the model's own structure puts both programs on the shared edges."""
    graph = traced(normal_chain_model, forward_guide, torch.tensor(0.5))
    assert nodes_of(graph) == {"loc1": node("param"), **normal_latents(),
                               "obs": observed("Normal")}
    assert edges_of(graph) == {
        ("loc1", "z1"): data(G),
        ("z1", "z2"): data(GM), ("z2", "z3"): data(GM), ("z3", "obs"): data(M),
    }


# ---------------------------------------------------------------------------------------------
# 3. plates

def local_model(x):
    beta = sg.sample("beta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with sg.plate("N", 5):
        z = sg.sample("z", dist.Normal(beta.sum(), 1.0))
        sg.sample("x", dist.Normal(z, 1.0), obs=x)


def local_guide(x):
    m = sg.param("m", torch.zeros(2))
    sg.sample("beta", dist.Normal(m, 1.0).to_event(1))
    with sg.plate("N", 5):
        lz = sg.param("lz", torch.zeros(5))
        sg.sample("z", dist.Normal(lz, 1.0))


def test_global_and_local_latents_in_a_plate():
    """A global latent outside the plate, a local latent and an observation inside it."""
    graph = traced(local_model, local_guide, torch.arange(5.0))
    assert nodes_of(graph) == {
        "m": node("param", batch_shape=(2,)),
        "lz": node("param", batch_shape=(5,)),
        "beta": latent("Independent", True, event_shape=(2,)),
        "z": latent("Normal", True, plates=("N",), guide_plates=("N",), batch_shape=(5,)),
        "x": observed("Normal", plates=("N",), batch_shape=(5,)),
    }
    assert edges_of(graph) == {
        ("m", "beta"): data(G), ("lz", "z"): data(G),
        ("beta", "z"): data(M), ("z", "x"): data(M),
    }
    assert graph.graph["plates"] == {
        "N": {"size": 5, "subsample_size": 5, "dim": -1, "sequential": False}}


def grid_model(y):
    scale = sg.sample("scale", dist.LogNormal(0.0, 1.0))
    with sg.plate("rows", 3, dim=-2):
        r = sg.sample("r", dist.Normal(torch.zeros(3, 1), 1.0))
        with sg.plate("cols", 4, dim=-1):
            sg.sample("y", dist.Normal(r, scale), obs=y)


def grid_guide(y):
    sg.sample("scale", dist.LogNormal(sg.param("s_loc", torch.tensor(0.0)), 1.0))
    with sg.plate("rows", 3, dim=-2):
        sg.sample("r", dist.Normal(sg.param("r_loc", torch.zeros(3, 1)), 1.0))


def test_nested_plates_with_explicit_dims():
    """Nested plates list outermost first; each plate's size and dim reach the graph."""
    graph = traced(grid_model, grid_guide, torch.zeros(3, 4))
    assert nodes_of(graph) == {
        "s_loc": node("param"),
        "r_loc": node("param", batch_shape=(3, 1)),
        "scale": latent("LogNormal", True),
        "r": latent("Normal", True, plates=("rows",), guide_plates=("rows",), batch_shape=(3, 1)),
        "y": observed("Normal", plates=("rows", "cols"), batch_shape=(3, 4)),
    }
    assert edges_of(graph) == {
        ("s_loc", "scale"): data(G), ("r_loc", "r"): data(G),
        ("r", "y"): data(M), ("scale", "y"): data(M),
    }
    assert graph.graph["plates"] == {
        "rows": {"size": 3, "subsample_size": 3, "dim": -2, "sequential": False},
        "cols": {"size": 4, "subsample_size": 4, "dim": -1, "sequential": False},
    }


def test_plates_are_listed_by_nesting_not_by_dim():
    """An outer plate on dim -1 around an inner one on dim -2 still lists the outer first."""
    def model():
        with sg.plate("outer", 2, dim=-1):
            with sg.plate("inner", 3, dim=-2):
                sg.sample("v", dist.Normal(0.0, 1.0), obs=torch.zeros(3, 2))

    def guide():
        pass

    graph = traced(model, guide)
    assert nodes_of(graph) == {
        "v": observed("Normal", plates=("outer", "inner"), batch_shape=(3, 2))}
    assert edges_of(graph) == {}
    assert graph.graph["plates"] == {
        "outer": {"size": 2, "subsample_size": 2, "dim": -1, "sequential": False},
        "inner": {"size": 3, "subsample_size": 3, "dim": -2, "sequential": False},
    }


def subsampled_model(x):
    mu = sg.sample("mu", dist.Normal(0.0, 1.0))
    with sg.plate("data", 10, subsample_size=4) as idx:
        sg.sample("x", dist.Normal(mu, 1.0), obs=x[idx])


def subsampled_guide(x):
    sg.sample("mu", dist.Normal(sg.param("mu_loc", torch.tensor(0.0)), 1.0))


def test_subsampled_plate():
    """A subsampled plate records full size and subsample size; the site has the subsample's."""
    graph = traced(subsampled_model, subsampled_guide, torch.arange(10.0))
    assert nodes_of(graph) == {
        "mu_loc": node("param"),
        "mu": latent("Normal", True),
        "x": observed("Normal", plates=("data",), batch_shape=(4,)),
    }
    assert edges_of(graph) == {("mu_loc", "mu"): data(G), ("mu", "x"): data(M)}
    assert graph.graph["plates"] == {
        "data": {"size": 10, "subsample_size": 4, "dim": -1, "sequential": False}}


def test_subsampled_plate_in_guide_and_model():
    """A local latent in a subsampled plate on both sides: both plate lists and the shapes."""
    def model(x):
        with sg.plate("data", 6, subsample_size=2) as idx:
            z = sg.sample("z", dist.Normal(0.0, 1.0))
            sg.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    def guide(x):
        locs = sg.param("locs", torch.zeros(6))
        with sg.plate("data", 6, subsample_size=2) as idx:
            sg.sample("z", dist.Normal(locs[idx], 1.0))

    graph = traced(model, guide, torch.arange(6.0))
    assert nodes_of(graph) == {
        "locs": node("param", batch_shape=(6,)),
        "z": latent("Normal", True, plates=("data",), guide_plates=("data",), batch_shape=(2,)),
        "x": observed("Normal", plates=("data",), batch_shape=(2,)),
    }
    assert edges_of(graph) == {("locs", "z"): data(G), ("z", "x"): data(M)}
    assert graph.graph["plates"] == {
        "data": {"size": 6, "subsample_size": 2, "dim": -1, "sequential": False}}


def sequential_model(x):
    mu = sg.sample("mu", dist.Normal(0.0, 1.0))
    for i in sg.plate("steps", 3):
        with sg.plate("inner", 2):
            sg.sample(f"x_{i}", dist.Normal(mu, 1.0), obs=x[i])


def test_sequential_plate_gives_iteration_pairs():
    """``for i in sg.plate(...)`` tags each site with (plate, iteration), not a vectorized plate."""
    graph = traced(sequential_model, subsampled_guide, torch.zeros(3, 2))
    expected = {"mu_loc": node("param"), "mu": latent("Normal", True)}
    for i in range(3):
        expected[f"x_{i}"] = observed("Normal", plates=("inner",), sequential=(("steps", i),),
                                      batch_shape=(2,))
    assert nodes_of(graph) == expected
    assert edges_of(graph) == {("mu_loc", "mu"): data(G),
                               **{("mu", f"x_{i}"): data(M) for i in range(3)}}
    assert graph.graph["plates"] == {
        "steps": {"size": 3, "subsample_size": 3, "dim": None, "sequential": True},
        "inner": {"size": 2, "subsample_size": 2, "dim": -1, "sequential": False},
    }


def test_sequential_plate_latents_in_guide():
    """Latents inside a sequential plate in both programs carry the model side's pairs."""
    def model():
        for i in sg.plate("seq", 2):
            z = sg.sample(f"z_{i}", dist.Normal(0.0, 1.0))
            sg.sample(f"x_{i}", dist.Normal(z, 1.0), obs=torch.tensor(float(i)))

    def guide():
        for i in sg.plate("seq", 2):
            sg.sample(f"z_{i}", dist.Normal(0.0, 1.0))

    graph = traced(model, guide)
    expected = {}
    for i in range(2):
        expected[f"z_{i}"] = latent("Normal", True, sequential=(("seq", i),))
        expected[f"x_{i}"] = observed("Normal", sequential=(("seq", i),))
    assert nodes_of(graph) == expected
    assert edges_of(graph) == {(f"z_{i}", f"x_{i}"): data(M) for i in range(2)}
    assert graph.graph["plates"] == {
        "seq": {"size": 2, "subsample_size": 2, "dim": None, "sequential": True}}


# ---------------------------------------------------------------------------------------------
# 4. control flow on sampled values

def branch_guide(p_z):
    z = sg.sample("z", dist.Bernoulli(p_z))
    if z.item() == 1.0:
        loc = sg.param("w_loc", torch.tensor(0.0))
        sg.sample("w", dist.Normal(loc, 1.0))


def branch_model(p_z):
    z = sg.sample("z", dist.Bernoulli(torch.tensor(0.5)))
    sg.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))
    if z:
        w = sg.sample("w", dist.Normal(0.0, 1.0))
        sg.sample("x", dist.Normal(w, 1.0), obs=torch.tensor(1.0))
    else:
        sg.sample("x", dist.Normal(0.0, 2.0), obs=torch.tensor(1.0))


def test_branch_taken_adds_control_edges():
    """A guide's ``.item()`` read of z makes control edges to w (guide) and every model site."""
    graph = traced(branch_model, branch_guide, torch.tensor(1.0))
    assert nodes_of(graph) == {
        "z": latent("Bernoulli", False, reads_value=True),
        "w_loc": node("param"),
        "w": latent("Normal", True),
        "y": observed("Normal"),
        "x": observed("Normal"),
    }
    assert edges_of(graph) == {
        ("w_loc", "w"): data(G),
        ("w", "x"): data(M),
        ("z", "w"): control(GM),  # after the guide's read and after the model's `if z:`
        ("z", "y"): control(G),   # before the model's read, after the guide's
        ("z", "x"): control(GM),
    }


def test_branch_not_taken_still_reads_value():
    """The other branch: no w at all, yet z was read and controls the model's sites."""
    graph = traced(branch_model, branch_guide, torch.tensor(0.0))
    assert nodes_of(graph) == {
        "z": latent("Bernoulli", False, reads_value=True),
        "y": observed("Normal"),
        "x": observed("Normal"),
    }
    assert edges_of(graph) == {("z", "y"): control(G), ("z", "x"): control(GM)}


READS = {
    "int": lambda k: int(k),
    "item": lambda k: int(k.item()),
    "tolist": lambda k: k.tolist(),
    "index": lambda k: k,  # the tensor itself as a list index: Tensor.__index__
}


@pytest.mark.parametrize("read", sorted(READS))
def test_sampled_index_into_a_list_of_params(read):
    """``locs[int(k)]`` in the guide: data edge from the chosen param only, control edge from k."""
    def guide():
        k = sg.sample("k", dist.Categorical(torch.tensor([0.0, 0.0, 1.0])))  # always 2
        locs = [sg.param(f"loc_{j}", torch.tensor(float(j))) for j in range(3)]
        sg.sample("w", dist.Normal(locs[READS[read](k)], 1.0))

    def model():
        sg.sample("k", dist.Categorical(torch.ones(3) / 3))
        w = sg.sample("w", dist.Normal(0.0, 1.0))
        sg.sample("x", dist.Normal(w, 1.0), obs=torch.tensor(0.0))

    graph = traced(model, guide)
    assert nodes_of(graph) == {
        "k": latent("Categorical", False, reads_value=True),
        **{f"loc_{j}": node("param") for j in range(3)},
        "w": latent("Normal", True),
        "x": observed("Normal"),
    }
    assert edges_of(graph) == {
        ("loc_2", "w"): data(G),
        ("k", "w"): control(G),
        ("k", "x"): control(G),
        ("w", "x"): data(M),
    }


def test_tensor_index_is_data_not_control():
    """Indexing a tensor with a sampled tensor stays in torch: a data edge, no read."""
    def guide():
        k = sg.sample("k", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])))
        locs = sg.param("locs", torch.zeros(3))
        sg.sample("w", dist.Normal(locs[k], 1.0))

    def model():
        k = sg.sample("k", dist.Categorical(torch.ones(3) / 3))
        w = sg.sample("w", dist.Normal(torch.tensor([0.0, 1.0, 2.0])[k], 1.0))
        sg.sample("x", dist.Normal(w, 1.0), obs=torch.tensor(0.0))

    graph = traced(model, guide)
    assert nodes_of(graph) == {
        "k": latent("Categorical", False),
        "locs": node("param", batch_shape=(3,)),
        "w": latent("Normal", True),
        "x": observed("Normal"),
    }
    assert edges_of(graph) == {("locs", "w"): data(G), ("k", "w"): data(GM), ("w", "x"): data(M)}


def test_deterministic_mix_of_two_latents():
    """A value computed from two latents (through stack, exp, sum) gives an edge from each."""
    def model():
        a = sg.sample("a", dist.Normal(0.0, 1.0))
        b = sg.sample("b", dist.Normal(0.0, 1.0))
        u = sg.sample("u", dist.Normal(0.0, 1.0))
        mix = torch.stack([2.0 * a, b.exp()]).sum(0)
        c = sg.sample("c", dist.Normal(mix, 1.0))
        sg.sample("x", dist.Normal(c, torch.nn.functional.softplus(u)), obs=torch.tensor(0.0))

    def guide():
        for name in ("a", "b", "u", "c"):
            sg.sample(name, dist.Normal(0.0, 1.0))

    graph = traced(model, guide)
    assert nodes_of(graph) == {n: latent("Normal", True) for n in "abuc"} | {
        "x": observed("Normal")}
    assert edges_of(graph) == {
        ("a", "c"): data(M), ("b", "c"): data(M), ("c", "x"): data(M), ("u", "x"): data(M)}


def test_data_and_control_on_one_edge_is_data():
    """A site both computed from z and placed after a read of z keeps kind "data"."""
    def model():
        z = sg.sample("z", dist.Normal(0.0, 1.0))
        sign = 1.0 if z.item() > 0 else -1.0
        sg.sample("x", dist.Normal(sign * z, 1.0), obs=torch.tensor(0.0))

    def guide():
        sg.sample("z", dist.Normal(0.0, 1.0))

    graph = traced(model, guide)
    assert nodes_of(graph) == {"z": latent("Normal", True, reads_value=True),
                               "x": observed("Normal")}
    assert edges_of(graph) == {("z", "x"): data(M)}


def two_latents_guide():
    sg.sample("a", dist.Normal(0.0, 1.0))
    sg.sample("b", dist.Normal(0.0, 1.0))


# Ways of reading sampled values into Python; each must make a control edge from what it read.
PYTHON_READS = {
    "bool": (lambda a, b: bool(a > b), {"a", "b"}),
    "float": (lambda a, b: float(a - b) > 0, {"a", "b"}),
    "tolist": (lambda a, b: (a + b).tolist() > 0, {"a", "b"}),
    "torch.equal": (lambda a, b: torch.equal(a, b), {"a", "b"}),
    "torch.allclose": (lambda a, b: torch.allclose(a, b), {"a", "b"}),
    "in": (lambda a, b: 0.5 in a, {"a"}),
}


@pytest.mark.parametrize("how", list(PYTHON_READS))
def test_every_python_read_is_control(how):
    """Branching on a latent through any read into Python gives control edges to later sites."""
    read, read_sites = PYTHON_READS[how]

    def model():
        a = sg.sample("a", dist.Normal(0.0, 1.0))
        b = sg.sample("b", dist.Normal(0.0, 1.0))
        if read(a, b):
            pass
        sg.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    graph = traced(model, two_latents_guide)
    assert {n for n, a in graph.nodes(data=True) if a["reads_value"]} == read_sites
    assert edges_of(graph) == {(u, "x"): control(M) for u in read_sites}




def _setitem(a, b):
    loc = torch.zeros(2)
    loc[0] = a
    loc[1] = b
    return loc.sum()


def _inplace(a, b):
    loc = a.clone()
    loc.add_(b)
    return loc


def _out(a, b):
    loc = torch.empty(())
    torch.add(a, b, out=loc)
    return loc


def _augmented(a, b):
    loc = torch.zeros(())
    loc += a
    loc += b
    return loc


@pytest.mark.parametrize("compute", [
    pytest.param(f, id=f.__name__.strip("_")) for f in (_setitem, _inplace, _out, _augmented)])
def test_in_place_computation_keeps_both_parents(compute):
    """A loc built from two latents by mutating a buffer still depends on both of them."""
    def model():
        a = sg.sample("a", dist.Normal(0.0, 1.0))
        b = sg.sample("b", dist.Normal(0.0, 1.0))
        sg.sample("x", dist.Normal(compute(a, b), 1.0), obs=torch.tensor(0.0))

    graph = traced(model, two_latents_guide)
    assert edges_of(graph) == {("a", "x"): data(M), ("b", "x"): data(M)}




@pytest.mark.parametrize("how", [
    "distribution_mask", "handler_mask", "handler_scale"])
def test_mask_or_scale_from_a_latent_is_a_parent(how):
    """A site whose mask (or scale) is computed from a latent has that latent as a parent."""
    def model():
        a = sg.sample("a", dist.Normal(0.0, 1.0))
        sg.sample("b", dist.Normal(0.0, 1.0))
        fn = dist.Normal(0.0, 1.0)
        if how == "distribution_mask":
            sg.sample("x", fn.mask(a > 0), obs=torch.tensor(0.0))
            return
        handler = (sg.handlers.mask(mask=a > 0) if how == "handler_mask"
                   else sg.handlers.scale(scale=a.exp()))
        with handler:
            sg.sample("x", fn, obs=torch.tensor(0.0))

    graph = traced(model, two_latents_guide)
    assert edges_of(graph) == {("a", "x"): data(M)}


def test_factor_site_in_graph():
    """``sg.factor`` makes a "factor" node with an edge from each latent its value used."""
    def model():
        a = sg.sample("a", dist.Normal(0.0, 1.0))
        b = sg.sample("b", dist.Normal(0.0, 1.0))
        sg.factor("f", -(a - b) ** 2)

    graph = traced(model, two_latents_guide)
    assert nodes_of(graph) == {"a": latent("Normal", True), "b": latent("Normal", True),
                               "f": node("factor", None, "_Factor", False)}
    assert edges_of(graph) == {("a", "f"): data(M), ("b", "f"): data(M)}


def test_param_shared_by_model_and_guide():
    """A param read by both programs has one edge into the site, via both."""
    def model():
        z = sg.sample("z", dist.Normal(sg.param("theta", torch.tensor(0.0)), 1.0))
        sg.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.0))

    def guide():
        sg.sample("z", dist.Normal(sg.param("theta", torch.tensor(0.0)), 1.0))

    graph = traced(model, guide)
    assert nodes_of(graph) == {"theta": node("param"), "z": latent("Normal", True),
                               "x": observed("Normal")}
    assert edges_of(graph) == {("theta", "z"): data(GM), ("z", "x"): data(M)}


def test_module_params_feed_the_site_they_compute():
    """An amortized guide's ``sg.module`` weights are parents of the site the net computes
    (tracing lends the module tagged copies of its parameters, and gives its own back)."""
    net = torch.nn.Linear(1, 1)
    own = (net.weight, net.bias)

    def guide(x):
        sg.module("net", net)
        sg.sample("z", dist.Normal(net(x).squeeze(-1), 1.0))

    def model(x):
        z = sg.sample("z", dist.Normal(0.0, 1.0))
        sg.sample("x", dist.Normal(z, 1.0), obs=x.squeeze(-1))

    graph = traced(model, guide, torch.ones(1))
    assert nodes_of(graph) == {"net.weight": node("param", batch_shape=(1, 1)),
                               "net.bias": node("param", batch_shape=(1,)),
                               "z": latent("Normal", True), "x": observed("Normal")}
    assert edges_of(graph) == {("net.weight", "z"): data(G), ("net.bias", "z"): data(G),
                               ("z", "x"): data(M)}
    assert net.weight is own[0] and net.bias is own[1]


def test_module_gets_its_parameters_back_when_tracing_fails():
    net = torch.nn.Linear(1, 1)
    own = net.weight

    def guide(x):
        sg.module("net", net)
        raise RuntimeError("guide failed")

    with pytest.raises(RuntimeError, match="guide failed"):
        traced(lambda x: None, guide, torch.ones(1))
    assert net.weight is own and type(net.weight) is torch.nn.Parameter


# ---------------------------------------------------------------------------------------------
# 5. observed values used downstream

def ar_model(xs):
    rho = sg.sample("rho", dist.Normal(0.0, 1.0))
    prev = torch.tensor(0.0)
    for t in range(len(xs)):
        prev = sg.sample(f"x_{t}", dist.Normal(rho * prev, 1.0), obs=xs[t])


def ar_guide(xs):
    sg.sample("rho", dist.Normal(sg.param("rho_loc", torch.tensor(0.0)), 1.0))


def test_autoregressive_observations_feed_the_next_site():
    """x_t observed, x_{t+1}'s loc computed from it: edges x_t -> x_{t+1} and rho -> each x_t."""
    graph = traced(ar_model, ar_guide, torch.tensor([0.5, -1.0, 2.0, 0.0]))
    assert nodes_of(graph) == {"rho_loc": node("param"), "rho": latent("Normal", True),
                               **{f"x_{t}": observed("Normal") for t in range(4)}}
    assert edges_of(graph) == {
        ("rho_loc", "rho"): data(G),
        **{("rho", f"x_{t}"): data(M) for t in range(4)},
        **{(f"x_{t}", f"x_{t + 1}"): data(M) for t in range(3)},
    }


def test_observed_value_into_a_latent():
    """An observation that parameterizes a later latent's prior gives obs -> latent (model)."""
    def model():
        x = sg.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(1.5))
        z = sg.sample("z", dist.Normal(x, 1.0))
        sg.sample("y", dist.Normal(z, 1.0), obs=torch.tensor(0.0))

    def guide():
        sg.sample("z", dist.Normal(0.0, 1.0))

    graph = traced(model, guide)
    assert nodes_of(graph) == {"z": latent("Normal", True), "x": observed("Normal"),
                               "y": observed("Normal")}
    assert edges_of(graph) == {("x", "z"): data(M), ("z", "y"): data(M)}


# ---------------------------------------------------------------------------------------------
# 6. reparameterization and enumeration flags

def test_with_rsample_false_is_not_reparameterized():
    """``.with_rsample(False)`` on the guide's Normal clears ``reparameterized``."""
    def model():
        z = sg.sample("z", dist.Normal(0.0, 1.0))
        v = sg.sample("v", dist.Normal(0.0, 1.0))
        sg.sample("x", dist.Normal(z + v, 1.0), obs=torch.tensor(0.0))

    def guide():
        sg.sample("z", dist.Normal(0.0, 1.0).with_rsample(False))
        sg.sample("v", dist.Normal(0.0, 1.0))

    graph = traced(model, guide)
    assert nodes_of(graph) == {"z": latent("Normal", False), "v": latent("Normal", True),
                               "x": observed("Normal")}
    assert edges_of(graph) == {("z", "x"): data(M), ("v", "x"): data(M)}


def test_model_only_latents_follow_the_model_distribution():
    """A latent the guide lacks is drawn from the model: reparameterized iff the model's fn is."""
    def model():
        c = sg.sample("c", dist.Categorical(torch.tensor([0.5, 0.5])))
        n = sg.sample("n", dist.Normal(0.0, 1.0).with_rsample(False))
        g = sg.sample("g", dist.Normal(c.float(), 1.0))
        sg.sample("x", dist.Normal(g + n, 1.0), obs=torch.tensor(0.0))

    def guide():
        pass

    graph = traced(model, guide)
    assert nodes_of(graph) == {
        "c": node("sample", None, "Categorical", False),
        "n": node("sample", None, "Normal", False),
        "g": node("sample", None, "Normal", True),
        "x": observed("Normal"),
    }
    assert edges_of(graph) == {("c", "g"): data(M), ("g", "x"): data(M), ("n", "x"): data(M)}


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_enumerate_option_shows_in_graph(mode):
    """``infer={"enumerate": mode}`` on a guide site, or a model-only site, sets ``enumerate``."""
    def model():
        a = sg.sample("a", dist.Categorical(torch.tensor([0.3, 0.7])))
        b = sg.sample("b", dist.Bernoulli(0.5), infer={"enumerate": mode})
        sg.sample("x", dist.Normal(a.float() + b, 1.0), obs=torch.tensor(0.0))

    def guide():
        sg.sample("a", dist.Categorical(torch.tensor([0.5, 0.5])), infer={"enumerate": mode})

    graph = traced(model, guide)
    assert nodes_of(graph) == {
        "a": latent("Categorical", False, enumerate=mode),
        "b": node("sample", None, "Bernoulli", False, enumerate=mode),
        "x": observed("Normal"),
    }
    assert graph.nodes["a"]["guide_infer"] == (("enumerate", mode),)
    assert graph.nodes["b"]["infer"] == (("enumerate", mode),)
    assert edges_of(graph) == {("a", "x"): data(M), ("b", "x"): data(M)}


# ---------------------------------------------------------------------------------------------
# 7. the schema checker

ALL_MODELS = [
    (chain_model, chain_guide, ()),
    (normal_chain_model, mean_field_guide, (torch.tensor(0.5),)),
    (normal_chain_model, reverse_guide, (torch.tensor(0.5),)),
    (local_model, local_guide, (torch.arange(5.0),)),
    (grid_model, grid_guide, (torch.zeros(3, 4),)),
    (subsampled_model, subsampled_guide, (torch.arange(10.0),)),
    (sequential_model, subsampled_guide, (torch.zeros(3, 2),)),
    (branch_model, branch_guide, (torch.tensor(1.0),)),
    (ar_model, ar_guide, (torch.tensor([0.5, -1.0]),)),
]


@pytest.mark.parametrize("model,guide,args", ALL_MODELS,
                         ids=[m.__name__ + "/" + g.__name__ for m, g, _ in ALL_MODELS])
def test_every_traced_graph_passes_the_schema(model, guide, args):
    """Each traced graph has exactly the schema's node attributes and valid edges."""
    graph = trace_graph(model, guide, args, {}).graph
    check_graph(graph)
    for _, attrs in graph.nodes(data=True):
        assert set(attrs) == NODE_ATTRS
    for _, _, d in graph.edges(data=True):
        assert isinstance(d["via"], frozenset) and set(d) == {"via", "kind"}


def hand_built():
    graph = nx.DiGraph()
    graph.graph["plates"] = {"N": {"size": 2, "subsample_size": 2, "dim": -1, "sequential": False}}
    base = {"type": "sample", "guide_fn": "Normal", "model_fn": "Normal", "reparameterized": True,
            "enumerate": None, "plates": (), "guide_plates": (), "sequential": (),
            "batch_shape": (), "event_shape": (), "dtype": "f32", "support": "real",
            "infer": (), "guide_infer": (), "reads_value": False, "order": 0, "source": ()}
    graph.add_node("z", **base)
    graph.add_node("x", **dict(base, type="observe", guide_fn=None, plates=("N",),
                               batch_shape=(2,), order=1))
    graph.add_edge("z", "x", via=frozenset({"model"}), kind="data")
    return graph


def test_hand_built_graph_passes():
    """The well-formed hand-built graph the failing cases start from passes the checker."""
    check_graph(hand_built())


def test_bad_node_type_is_rejected():
    """A node type outside sample / observe / param / factor is rejected."""
    graph = hand_built()
    graph.nodes["z"]["type"] = "latent"
    with pytest.raises(GraphSchemaError, match="'z'.*'latent'"):
        check_graph(graph)


@pytest.mark.parametrize("via", [frozenset({"x"}), frozenset(), frozenset({"model", "x"})])
def test_bad_edge_via_is_rejected(via):
    """An edge whose ``via`` is empty or names anything but guide / model is rejected."""
    graph = hand_built()
    graph.edges["z", "x"]["via"] = via
    with pytest.raises(GraphSchemaError, match="'z' -> 'x'.*via"):
        check_graph(graph)


def test_bad_edge_kind_is_rejected():
    """An edge kind other than data / control is rejected."""
    graph = hand_built()
    graph.edges["z", "x"]["kind"] = "maybe"
    with pytest.raises(GraphSchemaError, match="kind"):
        check_graph(graph)


def test_missing_attribute_and_undeclared_plate_are_rejected():
    """A node lacking a schema attribute, or in a plate the graph does not declare, is rejected."""
    graph = hand_built()
    del graph.nodes["x"]["reads_value"]
    with pytest.raises(GraphSchemaError, match="reads_value"):
        check_graph(graph)
    graph = hand_built()
    graph.graph["plates"] = {}
    with pytest.raises(GraphSchemaError, match="'N'"):
        check_graph(graph)


def test_a_module_registered_twice_in_one_run_keeps_its_store_entries():
    """sg.module called in the guide and again in the model: tracing lends the module a
    tagged copy after the first call, and the second must still register the module's own
    Parameter (the optimizer finds params by their store names)."""
    net = torch.nn.Linear(2, 1)
    own = dict(net.named_parameters())
    x = torch.randn(5, 2)

    def guide(x):
        sg.module("net", net)
        with sg.plate("d", 5):
            sg.sample("z", dist.Normal(net(x).squeeze(-1), 1.0))

    def model(x):
        sg.module("net", net)
        with sg.plate("d", 5):
            z = sg.sample("z", dist.Normal(0.0, 1.0))
            sg.sample("y", dist.Normal(z, 1.0), obs=torch.zeros(5))

    sg.clear_param_store()
    graph = traced(model, guide, x)
    assert ("net.weight", "z") in graph.edges
    store = sg.get_param_store()
    for name, p in own.items():
        assert dict(store.named_parameters())[f"net.{name}"] is p
        assert getattr(net, name) is p
