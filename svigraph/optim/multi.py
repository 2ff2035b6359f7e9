"""Optimizers that take the loss: compute gradients themselves, possibly per group of params."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from svigraph.optim.optim import Optim
from svigraph.params import get_param_store


class MultiOptimizer:
    """Base class of optimizers called as ``step(loss, params)``.

    ``params`` maps names to param-store values (whose ``.unconstrained()`` is the leaf that
    is updated) or to leaf tensors. Gradients come from ``torch.autograd.grad`` with respect
    to the leaves; ``.grad`` attributes are neither read nor changed.

    Subclasses implement ``compute_step(leaves, grads)`` (new values, nothing applied) and,
    when they can update in place more cheaply, ``apply_step(leaves, grads)``. A subclass
    may instead override ``get_step(loss, params)`` alone; ``step`` then applies its result.
    """

    def step(self, loss, params):
        """Update ``params`` in place to minimize ``loss``."""
        leaves = _leaves(params)
        if type(self).compute_step is MultiOptimizer.compute_step:
            _copy_into(leaves, self.get_step(loss, params))
        else:
            self.apply_step(leaves, _grads(loss, leaves))

    def get_step(self, loss, params):
        """The updated unconstrained values, ``{name: tensor}``, without changing ``params``."""
        leaves = _leaves(params)
        return self.compute_step(leaves, _grads(loss, leaves))

    def compute_step(self, leaves, grads):
        """New values for ``leaves`` (``{name: leaf}``) given ``grads`` (``{name: grad}``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_step(leaves, "
                                  "grads) or get_step(loss, params)")

    def apply_step(self, leaves, grads):
        """Update ``leaves`` in place given ``grads``; by default copies ``compute_step``."""
        _copy_into(leaves, self.compute_step(leaves, grads))


class OptimMultiOptimizer(MultiOptimizer):
    """A :class:`MultiOptimizer` stepping an :class:`~svigraph.optim.Optim`.

    Args:
        optim: the ``Optim`` (e.g. ``svigraph.optim.Adam({"lr": 0.01})``) to step.
    """

    def __init__(self, optim):
        if not isinstance(optim, Optim):
            raise TypeError(f"OptimMultiOptimizer wraps an svigraph.optim.Optim such as "
                            f"svigraph.optim.Adam({{'lr': 1e-3}}), got {type(optim).__name__}")
        self.optim = optim

    def apply_step(self, leaves, grads):
        saved = {}
        for name, leaf in leaves.items():
            saved[name] = leaf.grad
            leaf.grad = grads[name]
        try:
            self.optim(list(leaves.values()))
        finally:
            for name, leaf in leaves.items():
                leaf.grad = saved[name]

    def compute_step(self, leaves, grads):
        # Stateful optimizers advance their state when stepping: step, read, then roll back.
        restore = self.optim._checkpoint(list(leaves.values()))
        try:
            self.apply_step(leaves, grads)
            return {name: leaf.detach().clone() for name, leaf in leaves.items()}
        finally:
            restore()


class TorchMultiOptimizer(OptimMultiOptimizer):
    """A :class:`MultiOptimizer` over a torch optimizer class.

    Args:
        torch_optim_class: a ``torch.optim.Optimizer`` subclass, e.g. ``torch.optim.Adam``.
        optim_args: its keyword arguments (a dict, or a callable ``param_name -> dict``).
    """

    def __init__(self, torch_optim_class, optim_args):
        super().__init__(Optim(torch_optim_class, optim_args))


class MixedMultiOptimizer(MultiOptimizer):
    """Different optimizers for different named params, from one gradient computation.

    Args:
        parts: a list of ``(names, optim)``: ``names`` a list of param names, ``optim`` an
            :class:`~svigraph.optim.Optim` or a :class:`MultiOptimizer` updating only those.

    Example::

        adam = sg.optim.Adam({"lr": 0.1}); sgd = sg.optim.SGD({"lr": 0.01})
        optim = MixedMultiOptimizer([(["a"], adam), (["b"], sgd)])
        optim.step(loss, {"a": store["a"], "b": store["b"]})
    """

    def __init__(self, parts):
        if isinstance(parts, (str, bytes)) or not hasattr(parts, "__iter__"):
            raise TypeError(f"parts must be a list of (names, optim) pairs, got "
                            f"{type(parts).__name__}")
        self.parts, self._owner = [], {}
        for i, part in enumerate(parts):
            if not (isinstance(part, (tuple, list)) and len(part) == 2):
                raise TypeError(f"parts[{i}] must be a (names, optim) pair, got {part!r}")
            names, optim = part
            names = [names] if isinstance(names, str) else list(names)
            if isinstance(optim, Optim):
                optim = OptimMultiOptimizer(optim)
            elif not isinstance(optim, MultiOptimizer):
                raise TypeError(f"parts[{i}]: the optimizer must be an svigraph.optim.Optim or "
                                f"a MultiOptimizer, got {type(optim).__name__}")
            for name in names:
                if name in self._owner:
                    raise ValueError(f"param {name!r} appears in parts[{self._owner[name]}] and "
                                     f"parts[{i}]; give each param name to one part only")
                self._owner[name] = i
            self.parts.append((names, optim))

    def _split(self, leaves):
        uncovered = [name for name in leaves if name not in self._owner]
        if uncovered:
            raise ValueError(f"no part of the MixedMultiOptimizer covers param(s) "
                             f"{', '.join(map(repr, uncovered))}; add them to a part's names")
        return [(optim, {n: leaves[n] for n in names if n in leaves})
                for names, optim in self.parts]

    def _native(self, optim):
        return type(optim).compute_step is not MultiOptimizer.compute_step

    def step(self, loss, params):
        leaves = _leaves(params)
        split = [(optim, sub) for optim, sub in self._split(leaves) if sub]
        foreign = [(optim, sub) for optim, sub in split if not self._native(optim)]
        grads = _grads(loss, leaves, retain_graph=bool(foreign))
        # Parts that take the loss run before any leaf changes in place under the graph.
        foreign_values = [(sub, optim.get_step(loss, sub))
                          for optim, sub in foreign]
        for optim, sub in split:
            if self._native(optim):
                optim.apply_step(sub, {n: grads[n] for n in sub})
        for sub, values in foreign_values:
            _copy_into(sub, values)

    def get_step(self, loss, params):
        leaves = _leaves(params)
        split = [(optim, sub) for optim, sub in self._split(leaves) if sub]
        foreign = [optim for optim, _ in split if not self._native(optim)]
        grads = _grads(loss, leaves, retain_graph=bool(foreign))
        new_values = {}
        for optim, sub in split:
            if self._native(optim):
                new_values.update(optim.compute_step(sub, {n: grads[n] for n in sub}))
            else:
                new_values.update(optim.get_step(loss, sub))
        return new_values

    def compute_step(self, leaves, grads):
        new_values = {}
        for optim, sub in self._split(leaves):
            if sub:
                new_values.update(optim.compute_step(sub, {n: grads[n] for n in sub}))
        return new_values

    def apply_step(self, leaves, grads):
        for optim, sub in self._split(leaves):
            if sub:
                optim.apply_step(sub, {n: grads[n] for n in sub})


def _leaves(params):
    """``{name: unconstrained leaf}`` from a dict of store values or leaves (or a list)."""
    if isinstance(params, Mapping):
        items = params.items()
    elif isinstance(params, (list, tuple)):
        store = get_param_store()
        items = []
        for i, value in enumerate(params):
            leaf = _leaf(f"params[{i}]", value)
            items.append((store.param_name(leaf) or f"<unnamed {i}>", leaf))
    else:
        raise TypeError(f"params must be a dict name -> param value, got "
                        f"{type(params).__name__}")
    return {name: _leaf(name, value) for name, value in items}


def _leaf(name, value):
    get = getattr(value, "unconstrained", None)
    if callable(get):
        leaf = get()
        if leaf is None:
            raise ValueError(f"param {name!r}: its unconstrained tensor no longer exists (the "
                             "store replaced or dropped it); fetch the value again from the store")
        return leaf
    if isinstance(value, torch.Tensor) and value.is_leaf and value.requires_grad:
        return value
    raise TypeError(f"param {name!r} must be a param-store value (with .unconstrained()) or a "
                    f"leaf tensor with requires_grad=True, got {type(value).__name__}")


def _grads(loss, leaves, retain_graph=False):
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss must be a scalar tensor, got {type(loss).__name__}")
    if loss.dim() != 0:
        raise TypeError(f"loss must be a scalar tensor, got shape {tuple(loss.shape)}; "
                        "reduce it first, e.g. loss.sum()")
    if not loss.requires_grad:
        raise ValueError("loss does not depend on any parameter (it does not require grad); "
                         "compute it from the params being optimized")
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], retain_graph=retain_graph,
                                allow_unused=True)
    return dict(zip(names, grads))


def _copy_into(leaves, new_values):
    with torch.no_grad():
        for name, value in new_values.items():
            if name in leaves:
                leaves[name].copy_(value)
