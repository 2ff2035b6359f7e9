"""Provenance: which named sources a tensor's value was computed from.

``track_provenance(x, frozenset({"a"}))`` tags a tensor; every torch operation on tagged
tensors returns a result tagged with the union of its inputs' provenance. Reading a tagged
value into Python (``.item()``, ``bool()``, ``int()``, ``float()``, ``.tolist()``, using it
as an index) is control flow: listeners registered with ``on_python_read`` hear of it.

Example:
    >>> a = track_provenance(torch.randn(3), frozenset({"a"}))
    >>> b = track_provenance(torch.randn(3), frozenset({"b"}))
    >>> sorted(get_provenance(a * (b + torch.randn(3))))
    ['a', 'b']
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["ProvenanceTensor", "track_provenance", "get_provenance", "detach_provenance",
           "on_python_read"]

# Functions that move a value out of torch into Python.
_PYTHON_READS = frozenset([
    torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
    torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__complex__,
    torch.Tensor.__array__, torch.Tensor.__contains__, torch.Tensor.equal, torch.equal,
    torch.Tensor.allclose, torch.allclose, torch.is_nonzero, torch.Tensor.is_nonzero,
])

_READ_LISTENERS = []
_RECLASSED = []  # plain tensors turned into ProvenanceTensors by an in-place write


class on_python_read:
    """Context manager: call ``listener(provenance, func)`` at each read into Python."""

    def __init__(self, listener):
        self.listener = listener

    def __enter__(self):
        _READ_LISTENERS.append(self.listener)
        return self

    def __exit__(self, *exc):
        _READ_LISTENERS.remove(self.listener)


class ProvenanceTensor(torch.Tensor):
    """A tensor carrying a frozenset of provenance; build it with ``track_provenance``."""

    @staticmethod
    def __new__(cls, data, provenance=frozenset()):
        if isinstance(data, ProvenanceTensor):
            provenance = provenance | data._provenance
            data = data._t
        out = data.as_subclass(cls)
        out._t = data
        out._provenance = frozenset(provenance)
        return out

    def __repr__(self):
        return f"{self._t!r} (provenance {sorted(map(str, self._provenance))})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Runs on every torch op while tracing: the common case (no in-place write, no
        # kwargs, one tensor out) takes no detours.
        provenance = set()
        written = _written_in_place(func, args, kwargs) if kwargs or _is_in_place(func) else ()
        args = _unwrap(args, provenance)
        if kwargs:
            kwargs = _unwrap(kwargs, provenance)
        else:
            kwargs = {}
        if provenance and func in _PYTHON_READS:
            for listener in list(_READ_LISTENERS):
                listener(frozenset(provenance), func)
        result = func(*args, **kwargs)
        if not provenance:
            return result
        provenance = frozenset(provenance)
        for target in written:
            _taint(target, provenance)
        if type(result) is torch.Tensor:  # a fresh plain result: tag it directly
            out = result.as_subclass(ProvenanceTensor)
            out._t = result
            out._provenance = provenance
            return out
        return _wrap(result, provenance)


_IN_PLACE = {}  # func -> whether it writes into its first argument


def _is_in_place(func):
    found = _IN_PLACE.get(func)
    if found is None:
        name = getattr(func, "__name__", "")
        found = (name == "__setitem__" or (name.endswith("_") and not name.endswith("__"))
                 or name.startswith("__i"))
        _IN_PLACE[func] = found
    return found


def _written_in_place(func, args, kwargs):
    """The tensors ``func`` writes into: ``x.add_(..)``, ``x[i] = ..``, ``out=x``."""
    targets = [args[0]] if args and _is_in_place(func) else []
    out = kwargs.get("out") if kwargs else None
    if out is not None:
        targets += list(out) if isinstance(out, (tuple, list)) else [out]
    return [t for t in targets if isinstance(t, torch.Tensor)]


def _taint(tensor, provenance):
    """Add ``provenance`` to a tensor written in place."""
    if isinstance(tensor, ProvenanceTensor):
        tensor._provenance = tensor._provenance | provenance
    elif type(tensor) is torch.Tensor:
        # A plain tensor (loc = torch.zeros(2); loc[0] = a): give it provenance in place,
        # undone by restore_plain_tensors() when tracing ends.
        alias = tensor.as_subclass(torch.Tensor)
        tensor.__class__ = ProvenanceTensor
        tensor._t = alias
        tensor._provenance = provenance
        _RECLASSED.append(tensor)


def restore_plain_tensors():
    """Turn tensors tagged by in-place writes back into plain tensors."""
    while _RECLASSED:
        tensor = _RECLASSED.pop()
        if type(tensor) is ProvenanceTensor:
            del tensor._t, tensor._provenance
            tensor.__class__ = torch.Tensor


_LENT = []  # (module, parameter name, its own Parameter) while tracing lends it a tagged one
_LENDING = [0]  # > 0 inside parameters_lent(): modules compute with substituted params


def lend_parameter(module, dotted_name, tagged):
    """While tracing: make ``module`` compute with ``tagged`` (its parameter ``dotted_name``
    with provenance) so the sites it feeds depend on that param; undone by
    ``restore_lent_parameters()`` when tracing ends."""
    prefix, _, leaf = dotted_name.rpartition(".")
    owner = module.get_submodule(prefix) if prefix else module
    _LENT.append((owner, leaf, owner._parameters[leaf]))
    owner._parameters[leaf] = tagged  # the dict, not setattr: setattr wants a Parameter


def lent_original(tensor):
    """The module's own Parameter when ``tensor`` is a tagged copy lent to it, else None."""
    for owner, leaf, own in _LENT:
        if owner._parameters.get(leaf) is tensor:
            return own
    return None


def lent_any():
    """Whether any module holds a lent parameter now."""
    return bool(_LENT)


def restore_lent_parameters(depth=0):
    """Give every module lent a parameter after the first ``depth`` its own back (newest
    first)."""
    while len(_LENT) > depth:
        owner, leaf, own = _LENT.pop()
        owner._parameters[leaf] = own


def lending_parameters():
    """True inside ``parameters_lent()``."""
    return _LENDING[0] > 0


@contextlib.contextmanager
def parameters_lent():
    """While open, ``sg.module`` lends a module the value its ``param`` statement returned
    whenever that is not the module's own Parameter (a capture answers params with its
    graph's inputs): the module's weights then enter the graph as inputs, not constants.
    Every module lent one gets its own back on exit. Yields a list that then holds
    ``(module, parameter name, its own Parameter)`` for each parameter lent."""
    depth, lent = len(_LENT), []
    _LENDING[0] += 1
    try:
        yield lent
    finally:
        _LENDING[0] -= 1
        lent.extend(_LENT[depth:])
        restore_lent_parameters(depth)


def _unwrap(obj, provenance):
    kind = type(obj)  # exact types: this runs on every argument of every op while tracing
    if kind is ProvenanceTensor:
        provenance |= obj._provenance
        return obj._t
    if (kind is list or kind is tuple) and obj:
        items = [_unwrap(x, provenance) for x in obj]
        return tuple(items) if kind is tuple else items
    if kind is dict and obj:
        return {k: _unwrap(v, provenance) for k, v in obj.items()}
    return obj


def _wrap(obj, provenance):
    if isinstance(obj, torch.Tensor):
        return ProvenanceTensor(obj, provenance)
    if isinstance(obj, tuple):
        items = [_wrap(x, provenance) for x in obj]
        if hasattr(type(obj), "n_fields"):  # torch.return_types structseq
            return type(obj)(items)
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [_wrap(x, provenance) for x in obj]
    return obj


def track_provenance(x, provenance):
    """Tag ``x`` (a tensor, or a tuple/list/dict of them) with ``provenance``."""
    if isinstance(x, torch.Tensor):
        return ProvenanceTensor(x, provenance)
    if isinstance(x, (tuple, list)):
        return type(x)(track_provenance(v, provenance) for v in x)
    if isinstance(x, dict):
        return {k: track_provenance(v, provenance) for k, v in x.items()}
    return x


def get_provenance(x):
    """The provenance of ``x``: the union over tensors in it (frozenset() if untagged)."""
    if isinstance(x, ProvenanceTensor):
        return x._provenance
    if isinstance(x, (tuple, list)):
        return frozenset().union(*(get_provenance(v) for v in x))
    if isinstance(x, dict):
        return frozenset().union(*(get_provenance(v) for v in x.values()))
    return frozenset()


def detach_provenance(x):
    """``x`` without its provenance tag (same data, same autograd history)."""
    if isinstance(x, ProvenanceTensor):
        return x._t
    if isinstance(x, (tuple, list)):
        return type(x)(detach_provenance(v) for v in x)
    if isinstance(x, dict):
        return {k: detach_provenance(v) for k, v in x.items()}
    return x
