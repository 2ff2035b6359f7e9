"""Tracing: run the guide and the model once with provenance on, and build the dependency graph.

``trace_graph`` returns a frozen ``networkx.DiGraph`` in the schema of ``compiler.schema``:
one node per site, an edge ``u -> v`` when the distribution (or value) at ``v`` was computed
from the value of ``u``. Dependencies come from provenance through torch operations, never
from site order. A value read into Python (``.item()``, ``bool()``, ...) is control-flow
dependence: every site recorded after the read, in that program, and every model site after
a read in the guide, gets a ``control`` edge from the sites read.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass

import networkx as nx
import torch
from torch.distributions import constraints

from compiler.errors import ModelGuideMismatchError, ShapeMismatchError, SupportError
from svigraph.effects import Messenger
from svigraph.handlers import replay, trace
from svigraph.ops.provenance import (detach_provenance, get_provenance, on_python_read,
                                     restore_lent_parameters, restore_plain_tensors,
                                     track_provenance)
from svigraph.params import get_param_store
from svigraph.primitives import _Factor
from svigraph.trace_struct import site_log_prob

_PACKAGE_DIRS = tuple(
    os.path.dirname(os.path.abspath(m.__file__)) + os.sep
    for m in (sys.modules["svigraph"], sys.modules["compiler"], torch)
)
_USER_FILES_IN_PACKAGE = (os.path.join("svigraph", "demo.py"),)  # built-in example models
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
# Files a read passes through on its way from the caller to the listener.
_READ_PLUMBING = (os.path.join(_TORCH_DIR, "_tensor.py"), os.path.join(_TORCH_DIR, "overrides.py"),
                  os.path.abspath(sys.modules["svigraph.ops.provenance"].__file__))


@dataclass
class TracedProgram:
    """The result of tracing: the graph, and the two traces it was built from."""

    graph: nx.DiGraph
    guide_trace: dict
    model_trace: dict


@functools.lru_cache(maxsize=None)
def _user_file(co_filename):
    """The base name of a code file outside svigraph, torch and contextlib, else None."""
    filename = os.path.abspath(co_filename)
    if not filename.startswith(_PACKAGE_DIRS) and "contextlib" not in filename:
        return os.path.basename(filename)
    return None


def user_source():
    """``file.py:line`` of the innermost frame outside svigraph and torch."""
    frame = sys._getframe(1)
    while frame is not None:
        name = _user_file(frame.f_code.co_filename)
        if name is not None:
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _read_by_user_code():
    """Whether the read being reported was made by the user's program.

    Reads inside torch (argument validation in distribution constructors, say) or inside
    svigraph are not the user's control flow, and would otherwise make every parameter a
    control parent of every later site.
    """
    frame = sys._getframe(2)
    while frame is not None and os.path.abspath(frame.f_code.co_filename) in _READ_PLUMBING:
        frame = frame.f_back
    if frame is None:
        return True
    filename = os.path.abspath(frame.f_code.co_filename)
    return not filename.startswith(_PACKAGE_DIRS) or filename.endswith(_USER_FILES_IN_PACKAGE)


class _ProvenanceTracer(Messenger):
    """Tags each site's value with its own name and records what its distribution read."""

    def __init__(self, program):
        super().__init__(None)
        self.program = program
        self.deps = {}       # site -> frozenset of names its distribution (or value) read
        self.order = []      # sample sites in program order
        self.sources = {}
        self.reads = []      # (position in self.order, provenance) for each read into Python

    def listen(self, provenance, func):
        if _read_by_user_code():
            self.reads.append((len(self.order), provenance))

    def postprocess_message(self, msg):
        kind, name = msg["type"], msg["name"]
        if kind == "param":
            self.deps.setdefault(name, frozenset())
            msg["value"] = _tag(msg["value"], name)
        elif kind == "sample":
            value = detach_provenance(msg["value"])
            if msg["is_observed"] and not isinstance(msg["fn"], _Factor):
                check_observed(name, msg["fn"], value)  # before log_prob, for a clear error
            probe = dict(msg, value=value)
            self.deps[name] = (get_provenance(site_log_prob(probe))
                               | (get_provenance(msg["value"]) if msg["is_observed"] else frozenset())
                               | get_provenance(msg["mask"]) | get_provenance(msg["scale"])
                               ) - {name}
            self.order.append(name)
            self.sources[name] = user_source()
            msg["value"] = _tag(value, name)


def _tag(value, name):
    tagged = track_provenance(detach_provenance(value), frozenset({name}))
    if hasattr(value, "unconstrained"):
        tagged.unconstrained = value.unconstrained
    return tagged


def trace_graph(model, guide, args, kwargs, replay_guide=None):
    """Run ``guide`` then ``model`` (replayed on the guide) once and build their graph.

    Args:
        replay_guide: a name -> record mapping of guide values to reuse, so that the traced
            structure is exactly that of an earlier run.

    Returns:
        TracedProgram.
    """
    # torch's argument validation would run every check through the provenance wrapper;
    # tracing does its own support and shape checks (check_sites), so it is off meanwhile.
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        return _trace_graph(model, guide, args, kwargs, replay_guide)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)


def _trace_graph(model, guide, args, kwargs, replay_guide):
    guide_tracer, model_tracer = _ProvenanceTracer("guide"), _ProvenanceTracer("model")
    guide_fn = replay(guide, trace=replay_guide) if replay_guide is not None else guide
    # The tracer sits outside the trace handler: it must tag values before trace copies them.
    try:
        with on_python_read(guide_tracer.listen), guide_tracer:
            guide_trace = trace(guide_fn).get_trace(*args, **kwargs)
    except BaseException:
        restore_plain_tensors()
        restore_lent_parameters()
        raise
    try:
        with on_python_read(model_tracer.listen), model_tracer:
            model_trace = trace(replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    finally:
        restore_plain_tensors()
        restore_lent_parameters()
    check_sites(guide_trace, model_trace)
    graph = build_graph(guide_trace, model_trace, guide_tracer, model_tracer)
    return TracedProgram(nx.freeze(graph), guide_trace, model_trace)


# ---------------------------------------------------------------------------------------------
# checks that need values (the rest are compiler passes on the graph)

def check_sites(guide_trace, model_trace):
    # a guide enumerating in parallel gives values extra leading (enumeration) dims
    enumerating = any("enum_dim" in site for site in guide_trace.values())
    for name, site in guide_trace.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"] and not isinstance(site["fn"], _Factor):
            raise ModelGuideMismatchError(
                f"guide site {name!r} is observed (obs=...); a guide may only sample latents",
                [f"guide: {type(site['fn']).__name__} with obs of shape "
                 f"{tuple(site['value'].shape)}"],
                f"remove obs=... from the guide's sample({name!r}, ...); observations belong "
                "in the model",
                site=name)
        model_site = model_trace.get(name)
        if model_site is not None and model_site["type"] == "sample":
            _check_pair(name, site, model_site, enumerating)


def check_observed(name, fn, value):
    """Observed data must have the site's shape (up to broadcasting) and lie in its support."""
    expected = tuple(fn.batch_shape + fn.event_shape)
    try:
        torch.broadcast_shapes(tuple(value.shape), expected)
        ok = len(value.shape) >= len(fn.event_shape) and \
            tuple(value.shape[len(value.shape) - len(fn.event_shape):]) == tuple(fn.event_shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ShapeMismatchError(
            f"site {name!r}: observed data of shape {tuple(value.shape)} does not fit "
            f"{type(fn).__name__} of batch {tuple(fn.batch_shape)} event {tuple(fn.event_shape)}",
            [f"expected {expected} (or a shape broadcastable to it)"],
            "pass data of the site's shape; if its last dims are one observation, declare them "
            "with .to_event(n); if they are independent, put the site in a sg.plate",
            site=name, shapes={"data": tuple(value.shape), "expected": expected})
    _check_support(name, fn, value, "observed value")


def _plates_text(site):
    frames = [f for f in reversed(site["cond_indep_stack"]) if f.dim is not None]
    return "(" + ", ".join(f"{f.name}[{f.subsample_size}] dim={f.dim}" for f in frames) + ")"


def _fits(shape, expected, enumerating):
    """The guide's value has the model's shape; under guide enumeration the two need only
    broadcast (enumeration dims, reused under markov, sit left of the plates)."""
    if shape == expected or not enumerating:
        return shape == expected
    return all(a == b or 1 in (a, b) for a, b in zip(reversed(shape), reversed(expected)))


def _check_pair(name, guide_site, model_site, enumerating=False):
    gfn, mfn = guide_site["fn"], model_site["fn"]
    value = detach_provenance(guide_site["value"])
    expected = tuple(mfn.batch_shape + mfn.event_shape)
    if len(gfn.event_shape) != len(mfn.event_shape) or not _fits(tuple(value.shape), expected,
                                                                 enumerating):
        model_plates = [f for f in reversed(model_site["cond_indep_stack"]) if f.dim is not None]
        fix = ("declare the guide site inside the same plates as the model's"
               + (", e.g.\n" + " ".join(f"with sg.plate({f.name!r}, {f.size}):"
                                         for f in model_plates) if model_plates else "")
               + "\nor give it the model's shape " + str(expected))
        if len(gfn.event_shape) != len(mfn.event_shape):
            fix = (f"make the event dims agree: model event {tuple(mfn.event_shape)}, guide "
                   f"event {tuple(gfn.event_shape)}; use .to_event(n) on the side that lacks it")
        raise ShapeMismatchError(
            f"site {name!r}: model and guide disagree on shape",
            [f"model: {type(mfn).__name__:10} batch {tuple(mfn.batch_shape)} event "
             f"{tuple(mfn.event_shape)}  plates {_plates_text(model_site)}",
             f"guide: {type(gfn).__name__:10} batch {tuple(gfn.batch_shape)} event "
             f"{tuple(gfn.event_shape)}  plates {_plates_text(guide_site)}  value {tuple(value.shape)}"],
            fix, site=name, plate=model_plates[-1].name if model_plates else None,
            shapes={"model": expected, "guide": tuple(value.shape)})
    if gfn.support.is_discrete != mfn.support.is_discrete or _unbounded_for_bounded(gfn, mfn):
        raise SupportError(
            f"site {name!r}: the guide's support {gfn.support} cannot match the model's "
            f"{mfn.support}",
            [f"model: {type(mfn).__name__}, support {mfn.support}",
             f"guide: {type(gfn).__name__}, support {gfn.support}"],
            "give the guide a distribution with the model's support (e.g. LogNormal or Gamma "
            "for a positive site, Beta for one in (0, 1), the same discrete family)",
            site=name)
    _check_support(name, mfn, value, "guide's sample")


def _unbounded_for_bounded(gfn, mfn):
    if type(gfn).__name__ == "Delta":  # a point mass (MAP): its value is checked instead
        return False
    g, m = gfn.support, mfn.support
    if isinstance(g, constraints._Dependent) or isinstance(m, constraints._Dependent):
        return False
    unbounded = (constraints.real, constraints.real_vector)
    return g in unbounded and m not in unbounded and not isinstance(m, type(g))


def _check_support(name, fn, value, what):
    support = fn.support
    if isinstance(support, constraints._Dependent):
        return
    ok = support.check(value)
    if bool(ok.all()):
        return
    bad = (~ok).nonzero()
    where = tuple(bad[0].tolist()) if bad.numel() else ()
    raise SupportError(
        f"site {name!r}: {what} lies outside the support of {type(fn).__name__}",
        [f"support {support}; first bad entry at index {where}: "
         f"{value[where].item() if value.dim() and value[where].numel() == 1 else value}",
         f"value shape {tuple(value.shape)}, {(~ok).sum().item()} of {ok.numel()} entries outside"],
        "fix the data, or choose a distribution whose support contains it",
        site=name)


# ---------------------------------------------------------------------------------------------
# building the graph

def build_graph(guide_trace, model_trace, guide_tracer, model_tracer):
    graph = nx.DiGraph()
    graph.graph["plates"] = _collect_plates(guide_trace, model_trace)
    order = 0
    for program, tr, tracer in (("guide", guide_trace, guide_tracer),
                                ("model", model_trace, model_tracer)):
        for name, site in tr.items():
            if site["type"] == "subsample":
                continue
            attrs = graph.nodes[name] if name in graph else None
            if attrs is None:
                graph.add_node(name, **_new_node(site, program, order))
                order += 1
                attrs = graph.nodes[name]
            _add_side(attrs, site, program, tracer.sources.get(name))
    _add_data_edges(graph, guide_tracer, "guide")
    _add_data_edges(graph, model_tracer, "model")
    _add_control_edges(graph, guide_tracer, model_tracer)
    return graph


def _collect_plates(*traces):
    plates = {}
    for tr in traces:
        for site in tr.values():
            for f in site.get("cond_indep_stack", ()):
                plates.setdefault(f.name, {"size": f.size, "subsample_size": f.subsample_size,
                                           "dim": f.dim, "sequential": f.dim is None})
    return plates


def _node_type(site):
    if site["type"] == "param":
        return "param"
    if isinstance(site["fn"], _Factor):
        return "factor"
    return "observe" if site["is_observed"] else "sample"


def _new_node(site, program, order):
    return {"type": _node_type(site), "guide_fn": None, "model_fn": None,
            "reparameterized": False, "enumerate": None, "plates": (), "guide_plates": (),
            "sequential": (), "batch_shape": (), "event_shape": (), "dtype": None,
            "support": None, "infer": (), "guide_infer": (), "reads_value": False,
            "order": order, "source": ()}


def _add_side(attrs, site, program, source):
    if source:
        attrs["source"] = attrs["source"] + ((program, source),)
    if site["type"] == "param":
        value = site["value"]
        constraint = get_param_store().get_constraint(site["name"])
        attrs.update(batch_shape=tuple(value.shape), dtype=_dtype(value),
                     support=constraint_name(constraint))
        return
    fn = site["fn"]
    frames = tuple(reversed(site["cond_indep_stack"]))  # outermost first
    plates = tuple(f.name for f in frames if f.dim is not None)
    infer = tuple(sorted((k, _freeze(v)) for k, v in site["infer"].items()))
    if program == "guide":
        attrs.update(guide_fn=type(fn).__name__, reparameterized=bool(fn.has_rsample),
                     guide_plates=plates, guide_infer=infer)
    else:
        attrs.update(model_fn=type(fn).__name__)
        if attrs["guide_fn"] is None:
            attrs["reparameterized"] = bool(fn.has_rsample) and not site["is_observed"]
    if program == "model" or attrs["model_fn"] is None:
        attrs.update(plates=plates, infer=infer, batch_shape=tuple(fn.batch_shape),
                     event_shape=tuple(fn.event_shape), dtype=_dtype(site["value"]),
                     support=str(fn.support),
                     sequential=tuple((f.name, f.counter) for f in frames if f.dim is None))
    enum = site["infer"].get("enumerate")
    if enum is not None:
        attrs["enumerate"] = enum


def constraint_name(c):
    """``positive``, ``unit_interval``...: the torch name of a constraint, else its repr."""
    for name in dir(constraints):
        if getattr(constraints, name) is c:
            return name
    return repr(c)


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, (str, int, float, bool, type(None))):
        return v
    return f"<{type(v).__name__}>"  # modules, tensors: by kind only; plans hold no values


_DTYPE_NAMES = {torch.float32: "f32", torch.float64: "f64", torch.int64: "i64",
                torch.bool: "bool", torch.float16: "f16", torch.int32: "i32"}


def _dtype(value):
    # the plain tensor: reading .dtype of a provenance tensor is a torch-function call
    dtype = getattr(detach_provenance(value), "dtype", None)
    name = _DTYPE_NAMES.get(dtype)
    return name if name is not None else str(dtype if dtype is not None else "?")


def _add_edge(graph, u, v, program, kind):
    if u == v or u not in graph or v not in graph:
        return
    if graph.has_edge(u, v):
        data = graph.edges[u, v]
        data["via"] = data["via"] | {program}
        if kind == "data":
            data["kind"] = "data"
    else:
        graph.add_edge(u, v, via=frozenset({program}), kind=kind)


def _add_data_edges(graph, tracer, program):
    for v, deps in tracer.deps.items():
        for u in deps:
            _add_edge(graph, u, v, program, "data")


def _add_control_edges(graph, guide_tracer, model_tracer):
    for tracer, also in ((guide_tracer, model_tracer.order), (model_tracer, ())):
        for position, provenance in tracer.reads:
            later = list(tracer.order[position:]) + list(also)
            for u in provenance:
                if u in graph:
                    graph.nodes[u]["reads_value"] = True
                for v in later:
                    _add_edge(graph, u, v, tracer.program, "control")
