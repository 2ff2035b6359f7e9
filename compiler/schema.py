"""The dependency graph's schema: the closed set of node kinds and attributes, and its checker.

One node per site, keyed by the site's name. Node attributes:

=================  ===========================================================================
``type``           "sample" | "observe" | "param" | "factor"
``guide_fn``       distribution class name on the guide side, or None
``model_fn``       distribution class name on the model side, or None
``reparameterized`` bool: the sampling side can draw with a pathwise gradient
``enumerate``      None | "parallel" | "sequential"
``plates``         tuple of vectorized plate names, outermost first (model side when present)
``guide_plates``   the same for the guide side
``sequential``     tuple of (plate name, iteration) for enclosing sequential plates
``batch_shape``    tuple of ints (the scoring side's batch shape; a param's shape)
``event_shape``    tuple of ints
``dtype``          "f32", "i64", ... of the value
``support``        the scoring distribution's support, as text
``infer``          the site's ``infer`` options, frozen to sorted (key, value) pairs
``guide_infer``    the guide side's ``infer`` options, frozen likewise
``reads_value``    bool: the value was read into Python (control flow)
``order``          int: position in program order (guide sites first)
``source``         tuple of (program, "file.py:line")
=================  ===========================================================================

Edges ``u -> v``: the distribution (or value) at ``v`` was computed from the value of ``u``.
Edge attributes: ``via`` (frozenset of "guide" / "model": the programs where it happens) and
``kind`` ("data" through torch operations, or "control" through a read into Python).

Graph attributes: ``plates``: name -> {"size", "subsample_size", "dim", "sequential"}.
"""

from __future__ import annotations

from compiler.errors import SvigraphError

NODE_TYPES = frozenset({"sample", "observe", "param", "factor"})
ESTIMATORS = ("pathwise", "score_function", "enumerate", "analytic_kl", "observed", "prior")
PROGRAMS = frozenset({"guide", "model"})
NODE_ATTRS = frozenset({
    "type", "guide_fn", "model_fn", "reparameterized", "enumerate", "plates", "guide_plates",
    "sequential", "batch_shape", "event_shape", "dtype", "support", "infer", "guide_infer",
    "reads_value", "order", "source",
})


class GraphSchemaError(SvigraphError, ValueError):
    """A graph handed to the compiler breaks the schema above (an internal or tool error)."""


def check_graph(graph):
    """Raise ``GraphSchemaError`` unless ``graph`` follows the schema. Pure."""
    for name, attrs in graph.nodes(data=True):
        missing = NODE_ATTRS - attrs.keys()
        if missing:
            raise GraphSchemaError(f"node {name!r} lacks attributes {sorted(missing)}", site=name)
        if attrs["type"] not in NODE_TYPES:
            raise GraphSchemaError(f"node {name!r} has type {attrs['type']!r}, not one of "
                                   f"{sorted(NODE_TYPES)}", site=name)
        for plate in attrs["plates"] + attrs["guide_plates"]:
            if plate not in graph.graph.get("plates", {}):
                raise GraphSchemaError(f"node {name!r} is in plate {plate!r}, which the graph "
                                       "does not declare", site=name, plate=plate)
    for u, v, data in graph.edges(data=True):
        if not data.get("via") or not data["via"] <= PROGRAMS:
            raise GraphSchemaError(f"edge {u!r} -> {v!r} has via={data.get('via')!r}")
        if data.get("kind") not in ("data", "control"):
            raise GraphSchemaError(f"edge {u!r} -> {v!r} has kind={data.get('kind')!r}")


def infer_option(attrs, key, default=None):
    """Read one ``infer`` option of a node (the guide side's first, then the model's)."""
    for pairs in (attrs["guide_infer"], attrs["infer"]):
        for k, v in pairs:
            if k == key:
                return v
    return default


def sample_sites(graph):
    """Names of the sample, observe and factor nodes, in program order."""
    nodes = [(a["order"], n) for n, a in graph.nodes(data=True) if a["type"] != "param"]
    return [n for _, n in sorted(nodes)]


def param_sites(graph):
    return sorted((n for n, a in graph.nodes(data=True) if a["type"] == "param"),
                  key=lambda n: graph.nodes[n]["order"])
