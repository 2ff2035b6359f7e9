"""``Optim``: torch optimizers over param-store leaves, created lazily; and its aliases."""

from __future__ import annotations

import inspect

import torch

from svigraph.serialization import safe_load

from svigraph.optim.clipped_adam import ClippedAdam as _ClippedAdamOptimizer
from svigraph.optim.fast_adam import adam_step
from svigraph.params import get_param_store

_CLIP_KEYS = ("clip_norm", "clip_value")


class _Slot:
    """One torch optimizer (one param group) and the scheduler driving it, if any."""

    __slots__ = ("optimizer", "group", "size", "scheduler")

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.group = optimizer.param_groups[0]
        self.size = len(self.group["params"])
        self.scheduler = None


class Optim:
    """A torch optimizer class applied to parameters as they appear.

    Calling ``optim(params)`` steps the given leaf tensors (their ``.grad`` already set;
    leaves whose ``.grad`` is None are left unchanged). State is created the first time a
    leaf is seen. Leaves sharing the same arguments share one torch optimizer and one param
    group, so a step costs one ``optimizer.step()`` per distinct set of arguments. Gradients
    are not zeroed: the caller does that.

    Optimizer state belongs to the parameter's *name* in the param store (leaves the store
    does not know get generated names): when the store replaces the leaf under a name (e.g.
    after ``store.set_state``), the new leaf inherits the old one's state.

    Args:
        optim_constructor: a ``torch.optim.Optimizer`` subclass, e.g. ``torch.optim.Adam``.
        optim_args: its keyword arguments: a dict, or a callable ``param_name -> dict`` for
            per-parameter settings (called once per parameter).
        clip_args: ``{"clip_norm": x}`` rescales each parameter's gradient to norm at most
            ``x``; ``{"clip_value": x}`` clamps gradients elementwise to ``[-x, x]``; both
            before every step. None: no clipping.

    Example:
        >>> optim = Optim(torch.optim.Adam, {"lr": 0.01}, clip_args={"clip_norm": 10.0})
        >>> optim = Optim(torch.optim.SGD, lambda name: {"lr": 0.1 if name == "a" else 0.01})
    """

    def __init__(self, optim_constructor, optim_args, clip_args=None):
        self._constructor = _optimizer_class(optim_constructor)
        if isinstance(optim_args, dict):
            _check_kwargs(self._constructor, optim_args, "optim_args")
            self._args, self._args_fn = dict(optim_args), None
        elif callable(optim_args):
            self._args, self._args_fn = None, optim_args
        else:
            raise TypeError(f"optim_args must be a dict of keyword arguments for "
                            f"{_name(self._constructor)} or a callable param_name -> dict, "
                            f"got {type(optim_args).__name__}; e.g. optim_args={{'lr': 1e-3}}")
        self._clip = _parse_clip_args(clip_args)
        # LBFGS keeps per-optimizer caches over a single param group: one per parameter.
        self._per_param = (isinstance(self._constructor, type)
                           and issubclass(self._constructor, torch.optim.LBFGS))
        self._slots = {}       # args key -> _Slot
        self._slot_of = {}     # id(leaf) -> _Slot
        self._leaf_of = {}     # name -> leaf
        self._pending = {}     # name -> saved state entry, for leaves not seen yet
        self._unnamed = 0
        self._plan_key, self._plan = None, ()

    # stepping
    def __call__(self, params, *args, **kwargs):
        """Take one step for ``params`` (leaf tensors); extra arguments go to ``step``."""
        if not isinstance(params, (list, tuple)):
            params = list(params)
        key = tuple(map(id, params))
        if key != self._plan_key:
            self._plan = self._make_plan(params)
            self._plan_key = key
        clip = self._clip
        for slot, leaves, full in self._plan:
            if clip is not None:
                _clip_grads(leaves, *clip)
            if full:
                if args or kwargs or not adam_step(slot.optimizer, slot.group):
                    slot.optimizer.step(*args, **kwargs)
            else:
                _masked_step(slot, leaves, args, kwargs)

    def _make_plan(self, params):
        """Group ``params`` by torch optimizer, registering leaves seen for the first time."""
        by_slot = {}
        for p in params:
            slot = self._slot_of.get(id(p)) or self._register(p)
            by_slot.setdefault(id(slot), (slot, {}))[1][id(p)] = p
        return tuple((slot, tuple(leaves.values()), len(leaves) == slot.size)
                     for slot, leaves in by_slot.values())

    def _register(self, leaf):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"params must be tensors, got {type(leaf).__name__}; "
                            "pass the unconstrained leaves, e.g. value.unconstrained()")
        if not (leaf.is_leaf and leaf.requires_grad):
            fix = ("pass value.unconstrained(), the leaf behind a param-store value"
                   if hasattr(leaf, "unconstrained") else
                   "pass leaf tensors created with requires_grad=True")
            raise TypeError(f"params must be leaf tensors that require grad; got a tensor of "
                            f"shape {tuple(leaf.shape)} that is not one; fix: {fix}")
        name = get_param_store().param_name(leaf)
        if name is None:
            name = f"<unnamed {self._unnamed}>"
            self._unnamed += 1
        old = self._leaf_of.get(name)
        fresh = False
        if old is not None:
            slot = self._replace(old, leaf)
        else:
            args = self._args if self._args_fn is None else self._call_args_fn(name)
            key = name if self._per_param else _args_key(args, name, self._args_fn is not None)
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = self._new_slot(leaf, args)
                fresh = True
            else:
                slot.group["params"].append(leaf)
                slot.size += 1
        self._slot_of[id(leaf)] = slot
        self._leaf_of[name] = leaf
        entry = self._pending.pop(name, None)
        if entry is not None:
            # Group hyperparameters and the schedule are shared: restore them only on a new
            # optimizer, or a late parameter would rewind everyone else's learning rate.
            _apply_entry(slot, leaf, entry, restore_group=fresh)
        self._plan_key = None
        return slot

    def _replace(self, old, leaf):
        slot = self._slot_of.pop(id(old))
        params = slot.group["params"]
        params[next(i for i, p in enumerate(params) if p is old)] = leaf
        state = slot.optimizer.state.pop(old, None)
        if state and (old.shape, old.dtype, old.device) == (leaf.shape, leaf.dtype, leaf.device):
            slot.optimizer.state[leaf] = state
        return slot

    def _call_args_fn(self, name):
        args = self._args_fn(name)
        if not isinstance(args, dict):
            raise TypeError(f"optim_args({name!r}) returned {type(args).__name__}; the callable "
                            "must return a dict of keyword arguments, e.g. {'lr': 1e-3}")
        _check_kwargs(self._constructor, args, f"optim_args({name!r})")
        return args

    def _new_slot(self, leaf, args):
        optimizer = self._constructor([leaf], **args)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optim_constructor returned {type(optimizer).__name__}, not a "
                            "torch.optim.Optimizer; pass an optimizer class such as "
                            "torch.optim.Adam")
        return _Slot(optimizer)

    @property
    def optimizers(self):
        """The torch optimizers created so far (one per distinct set of arguments)."""
        return [slot.optimizer for slot in self._slots.values()]

    # state
    def get_state(self):
        """Optimizer state per parameter name: ``{name: {"state", "group"[, "scheduler"]}}``.

        ``state`` is the torch optimizer's state for that parameter, ``group`` its param
        group's hyperparameters (``lr`` ...), ``scheduler`` its learning-rate schedule's
        state. Tensors are copies; everything is plain data, safe for ``torch.save``. State
        given to ``set_state`` for parameters not seen yet is included as given.
        """
        state = {name: _clone(entry) for name, entry in self._pending.items()}
        for name, leaf in self._leaf_of.items():
            slot = self._slot_of[id(leaf)]
            entry = {"state": _clone(slot.optimizer.state.get(leaf, {})),
                     "group": _clone({k: v for k, v in slot.group.items() if k != "params"})}
            if slot.scheduler is not None:
                entry["scheduler"] = _clone(slot.scheduler.state_dict())
            state[name] = entry
        return state

    def set_state(self, state):
        """Restore state from ``get_state``: now for known parameters, later for the rest."""
        if not isinstance(state, dict):
            raise ValueError(f"set_state expects the dict returned by get_state(), got "
                             f"{type(state).__name__}")
        for name, entry in state.items():
            if not (isinstance(entry, dict) and isinstance(entry.get("state"), dict)
                    and isinstance(entry.get("group", {}), dict)):
                raise ValueError(f"set_state: the entry for {name!r} is not optimizer state "
                                 "(expected a dict with 'state' and 'group' dicts); pass what "
                                 "get_state() returned")
        self._pending = dict(state)
        for name, leaf in list(self._leaf_of.items()):
            entry = self._pending.pop(name, None)
            if entry is not None:
                _apply_entry(self._slot_of[id(leaf)], leaf, entry, restore_group=True)

    def save(self, path):
        """Write ``get_state()`` to ``path`` with ``torch.save``."""
        torch.save(self.get_state(), path)

    def load(self, path, map_location=None):
        """Read state written by ``save`` and ``set_state`` it.

        Only tensors and plain data load (``torch.load(weights_only=True)``); a file holding
        any other pickled object is refused with a ``ValueError`` and never executed.
        """
        self.set_state(safe_load(path, map_location, "Optim.save"))

    # snapshots, for MultiOptimizer.get_step
    def _checkpoint(self, leaves):
        """Register ``leaves``; return a function restoring their values and state."""
        self._make_plan(leaves)
        slots = {id(s): s for s in (self._slot_of[id(p)] for p in leaves)}.values()
        saved = [(p, p.detach().clone()) for p in leaves]
        saved_slots = []
        for s in slots:
            group = _clone({k: v for k, v in s.group.items() if k != "params"})
            states = {id(p): _clone(s.optimizer.state.get(p)) for p in s.group["params"]}
            saved_slots.append((s, group, states))

        def restore():
            with torch.no_grad():
                for p, value in saved:
                    p.copy_(value)
            for slot, group, states in saved_slots:
                slot.group.update(group)
                for p in slot.group["params"]:
                    state = states.get(id(p))
                    slot.optimizer.state.pop(p, None)
                    if state is not None:
                        slot.optimizer.state[p] = state
        return restore


def _optimizer_class(ctor):
    if isinstance(ctor, type) and issubclass(ctor, Optim):
        torch_class = getattr(ctor, "_torch_class", None)
        if torch_class is not None:
            return torch_class
    if isinstance(ctor, (torch.optim.Optimizer, Optim)):
        raise TypeError(f"optim_constructor must be an optimizer class, got an instance of "
                        f"{type(ctor).__name__}; pass the class, e.g. torch.optim.Adam")
    if not callable(ctor) or (isinstance(ctor, type)
                              and not issubclass(ctor, torch.optim.Optimizer)):
        raise TypeError(f"optim_constructor must be a torch.optim.Optimizer subclass such as "
                        f"torch.optim.Adam, got {ctor!r}")
    return ctor


def _name(ctor):
    return getattr(ctor, "__name__", repr(ctor))


def _check_kwargs(ctor, kwargs, what):
    """Raise a TypeError naming ``what`` if ``ctor`` does not accept these keywords."""
    try:
        signature = inspect.signature(ctor)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, **kwargs)
    except TypeError as e:
        accepted = [n for n, p in list(signature.parameters.items())[1:]
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise TypeError(f"{what} for {_name(ctor)}: {e}; accepted keys: "
                        f"{', '.join(accepted)}") from None


def _parse_clip_args(clip_args):
    if clip_args is None:
        return None
    if not (isinstance(clip_args, dict) and len(clip_args) == 1
            and next(iter(clip_args)) in _CLIP_KEYS):
        raise ValueError(f"clip_args must be {{'clip_norm': x}} or {{'clip_value': x}} (one "
                         f"key), got {clip_args!r}; accepted keys: 'clip_norm', 'clip_value'")
    kind, bound = next(iter(clip_args.items()))
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound > 0:
        raise ValueError(f"clip_args[{kind!r}] must be a positive number, got {bound!r}")
    return kind, float(bound)


def _clip_grads(leaves, kind, bound):
    for p in leaves:
        g = p.grad
        if g is None:
            continue
        if kind == "clip_value":
            g.clamp_(-bound, bound)
        else:
            # Multiply by min(1, c / (|g| + 1e-6)) instead of branching: no host sync.
            g.mul_((bound / (torch.linalg.vector_norm(g) + 1e-6)).clamp_(max=1.0))


def _masked_step(slot, leaves, args, kwargs):
    """Step only ``leaves`` of a shared optimizer: hide the other parameters' gradients."""
    passed = set(map(id, leaves))
    hidden = [(p, p.grad) for p in slot.group["params"]
              if p.grad is not None and id(p) not in passed]
    for p, _ in hidden:
        p.grad = None
    try:
        slot.optimizer.step(*args, **kwargs)
    finally:
        for p, grad in hidden:
            p.grad = grad


def _args_key(args, name, from_callable):
    """Leaves whose arguments compare equal share an optimizer; unhashable ones get their own."""
    if not from_callable:
        return None
    try:
        key = _freeze(args)
        hash(key)
        return key
    except TypeError:
        return ("<own optimizer>", name)


def _freeze(value):
    if isinstance(value, dict):
        return ("dict",) + tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(_freeze(v) for v in value)
    return value


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list) or type(value) is tuple:
        return type(value)(_clone(v) for v in value)
    return value


def _apply_entry(slot, leaf, entry, restore_group):
    state = {}
    for k, v in entry["state"].items():
        v = _clone(v)
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.device != leaf.device:
            v = v.to(leaf.device)
        state[k] = v
    slot.optimizer.state.pop(leaf, None)
    if state:
        slot.optimizer.state[leaf] = state
    if restore_group:
        slot.group.update({k: _clone(v) for k, v in entry.get("group", {}).items()
                           if k != "params"})
        if slot.scheduler is not None and "scheduler" in entry:
            slot.scheduler.load_state_dict(_clone(entry["scheduler"]))


# aliases
class _Alias(Optim):
    _torch_class = None

    def __init__(self, optim_args, clip_args=None):
        super().__init__(self._torch_class, optim_args, clip_args)


def _alias(torch_class, doc=""):
    name = torch_class.__name__
    module = "torch.optim" if torch_class.__module__.startswith("torch.optim") else (
        torch_class.__module__)
    return type(name, (_Alias,), {
        "_torch_class": torch_class, "__module__": __name__, "__qualname__": name,
        "__doc__": f"``{name}(optim_args, clip_args=None)``: :class:`Optim` over "
                   f"``{module}.{name}``.{doc}"})


Adam = _alias(torch.optim.Adam)
AdamW = _alias(torch.optim.AdamW)
SGD = _alias(torch.optim.SGD)
RMSprop = _alias(torch.optim.RMSprop)
Adagrad = _alias(torch.optim.Adagrad)
Adadelta = _alias(torch.optim.Adadelta)
Adamax = _alias(torch.optim.Adamax)
NAdam = _alias(torch.optim.NAdam)
RAdam = _alias(torch.optim.RAdam)
ASGD = _alias(torch.optim.ASGD)
Rprop = _alias(torch.optim.Rprop)
ClippedAdam = _alias(_ClippedAdamOptimizer, (
    "\n\n    Adam with per-parameter gradient norm clipping (``clip_norm``, default 10.0) and "
    "learning-rate decay (``lrd``: lr is multiplied by it after each step, default 1.0)."))
