"""The parameter store: named, constrained, trainable tensors.

The store keeps, per name, the *unconstrained* leaf tensor that optimizers update and the
constraint. ``param(name)`` returns the constrained value ``param_transform(constraint)(leaf)``
(torch's ``biject_to``, with plain ``exp`` for positive params); that tensor's
``.unconstrained()`` gives the leaf back.
"""

from __future__ import annotations

import weakref

import torch
from torch.distributions import biject_to, constraints

from compiler.errors import ParamError, close_matches
from svigraph.serialization import safe_load


def param_transform(constraint):
    """``biject_to(constraint)``, but plain ``exp`` for ``positive`` and ``nonnegative``.

    torch maps them to ``exp`` followed by ``x * 1 + 0`` (its ``greater_than(0)``
    rule wins the registry); both steps are exact, so dropping them changes no value or
    gradient and saves two ops and two autograd nodes per positive param per step."""
    if (type(constraint) in _POSITIVE_KINDS
            and type(constraint.lower_bound) in (int, float) and constraint.lower_bound == 0):
        return _EXP
    return biject_to(constraint)


_EXP = torch.distributions.transforms.ExpTransform()
_POSITIVE_KINDS = (type(constraints.positive), type(constraints.nonnegative))


def _attach_unconstrained(value, leaf):
    # A plain attribute, not a tensor subclass: subclasses slow every later op. A leaf that
    # is its own value (an unconstrained param) keeps the one it was given.
    ref = value.__dict__.get("unconstrained")
    if ref is None or ref() is not leaf:
        value.unconstrained = weakref.ref(leaf)
    return value


class ParamStore:
    """Name -> (unconstrained leaf, constraint).

    Example:
        >>> store = ParamStore()
        >>> a = store.get("a", torch.tensor(2.0), constraints.positive)
        >>> float(a), float(a.unconstrained())   # doctest: +ELLIPSIS
        (2.0, 0.693...)
    """

    def __init__(self):
        self._leaves = {}        # name -> unconstrained leaf (requires_grad)
        self._constraints = {}   # name -> constraint
        self._transforms = {}    # name -> cached biject_to(constraint)
        self._names = {}         # id(leaf) -> name

    # mapping-like reading
    def __contains__(self, name):
        return name in self._leaves

    def __len__(self):
        return len(self._leaves)

    def keys(self):
        return self._leaves.keys()

    def items(self):
        return ((name, self[name]) for name in self._leaves)

    def values(self):
        return (self[name] for name in self._leaves)

    def __getitem__(self, name):
        if name not in self._leaves:
            raise KeyError(f"no param named {name!r}{close_matches(name, self._leaves)}")
        return self._constrained(name)

    def __setitem__(self, name, value):
        self.set(name, value)

    def __delitem__(self, name):
        leaf = self._leaves.pop(name)
        self._names.pop(id(leaf), None)
        self._constraints.pop(name)
        self._transforms.pop(name)

    def named_parameters(self):
        """(name, unconstrained leaf) pairs: what an optimizer updates."""
        return self._leaves.items()

    def param_name(self, leaf):
        """The name of an unconstrained leaf, or None if the store does not hold it."""
        return self._names.get(id(leaf))

    def get_constraint(self, name):
        return self._constraints[name]

    def clear(self):
        self.__init__()

    # creating and reading
    def get(self, name, init=None, constraint=constraints.real):
        """The constrained value of ``name``, creating it from ``init`` on first use."""
        if name not in self._leaves:
            if init is None:
                raise ParamError(
                    f"param {name!r} does not exist and no initial value was given",
                    [f"params in the store: {', '.join(sorted(self._leaves)) or '(none)'}"],
                    f"give an initial value, e.g. sg.param({name!r}, torch.zeros(3))"
                    f"{close_matches(name, self._leaves)}",
                    site=name,
                )
            self.set(name, init() if callable(init) else init, constraint)
        return self._constrained(name)

    def set(self, name, value, constraint=None):
        """Store a constrained ``value`` under ``name`` (replacing any old one)."""
        constraint = constraint or self._constraints.get(name, constraints.real)
        transform = param_transform(constraint)
        value = torch.as_tensor(value).detach()
        if not value.is_floating_point():
            value = value.to(torch.get_default_dtype())
        with torch.no_grad():
            leaf = transform.inv(value).clone()
        leaf.requires_grad_(True)
        if name in self._leaves:
            self._names.pop(id(self._leaves[name]), None)
        self._leaves[name] = leaf
        self._constraints[name] = constraint
        self._transforms[name] = transform
        self._names[id(leaf)] = name

    def register_leaf(self, name, leaf, overwrite_module=True):
        """Hold an existing trainable tensor (an ``nn.Module`` parameter) under ``name``.

        If the store already has a value for ``name`` (restored from a file, say) and
        ``overwrite_module`` is true, that value is copied into ``leaf`` first.
        """
        old = self._leaves.get(name)
        if old is leaf:
            return
        if old is not None and overwrite_module:
            with torch.no_grad():
                leaf.copy_(old)
        if old is not None:
            self._names.pop(id(old), None)
        self._leaves[name] = leaf
        self._constraints[name] = constraints.real
        self._transforms[name] = param_transform(constraints.real)
        self._names[id(leaf)] = name

    def _constrained(self, name):
        leaf = self._leaves[name]
        transform = self._transforms[name]
        value = leaf if self._constraints[name] is constraints.real else transform(leaf)
        return _attach_unconstrained(value, leaf)

    # state
    def get_state(self):
        """A dict of plain tensors and constraint names, safe to save with ``torch.save``."""
        return {
            "params": {name: leaf.detach().clone() for name, leaf in self._leaves.items()},
            "constraints": {name: _constraint_to_spec(c) for name, c in self._constraints.items()},
        }

    def set_state(self, state):
        """Restore a ``get_state`` dict. The saved unconstrained leaves are used as they are,
        so a save/load round trip is bit-exact (going through the constrained value is not)."""
        self.clear()
        for name, leaf in state["params"].items():
            constraint = _constraint_from_spec(state["constraints"][name])
            leaf = leaf.detach().clone().requires_grad_(True)
            self._leaves[name] = leaf
            self._constraints[name] = constraint
            self._transforms[name] = param_transform(constraint)
            self._names[id(leaf)] = name

    def save(self, path):
        torch.save(self.get_state(), path)

    def load(self, path, map_location=None):
        """Load a saved store. Refuses pickled objects: only tensors and plain data load."""
        state = safe_load(path, map_location, "ParamStore.save")
        if not isinstance(state, dict) or set(state) != {"params", "constraints"}:
            raise ParamError(f"refusing to load {path}: not a param store file",
                             fix="load only files written by ParamStore.save")
        self.set_state(state)


# Constraints are saved as (name, args) specs, never pickled objects, so loading is safe.
_NAMED_CONSTRAINTS = {
    name: getattr(constraints, name)
    for name in ("real", "positive", "nonnegative", "unit_interval", "simplex", "boolean",
                 "lower_cholesky", "positive_definite", "corr_cholesky", "real_vector",
                 "nonnegative_integer", "positive_integer", "ordered_vector",
                 "softplus_lower_cholesky", "positive_semidefinite")
    if isinstance(getattr(constraints, name, None), constraints.Constraint)
}


def _constraint_to_spec(c):
    for name, known in _NAMED_CONSTRAINTS.items():
        if c is known:
            return (name,)
    if type(c).__name__ == "_Interval":
        return ("interval", float(c.lower_bound), float(c.upper_bound))
    if type(c).__name__ == "_GreaterThan":
        return ("greater_than", float(c.lower_bound))
    if type(c).__name__ == "_LessThan":
        return ("less_than", float(c.upper_bound))
    raise ParamError(f"cannot save constraint {c!r}",
                     fix="use one of torch's named constraints for saved params")


def _constraint_from_spec(spec):
    kind, *args = spec
    if kind in _NAMED_CONSTRAINTS:
        return _NAMED_CONSTRAINTS[kind]
    return getattr(constraints, kind)(*args)


_STORE = ParamStore()


def get_param_store():
    """The global parameter store."""
    return _STORE


def clear_param_store():
    _STORE.clear()
