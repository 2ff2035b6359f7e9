"""The statements a model or guide is written in: sample, param, module, factor, plate, markov."""

from __future__ import annotations

import random
from collections import namedtuple

import torch

from compiler.errors import PlateError, obs_not_a_tensor
from runtime.terms import LAZY_EXPANDED, UNEXPANDED
from svigraph import effects
from svigraph.effects import Messenger, apply_stack, new_message
from svigraph.ops.provenance import (get_provenance, lend_parameter, lending_parameters,
                                     lent_any, lent_original)
from svigraph.params import get_param_store
from svigraph.recording import Recorder
from svigraph.tensor_memo import SharedTensors


def sample(name, fn, *args, obs=None, obs_mask=None, infer=None, **kwargs):
    """Draw a random value named ``name`` from distribution ``fn``, or observe ``obs``.

    Args:
        name: the site's name, unique in one run of the model (or guide).
        fn: a distribution.
        obs: observed data; the site is then an observation, scored but not sampled.
        infer: per-site options: ``{"enumerate": "parallel"|"sequential"}``,
            ``{"baseline": {...}}``, ``{"is_auxiliary": True}``, ``{"sample_from_prior": True}``.
    """
    if obs_mask is not None:
        raise NotImplementedError(
            f"site {name!r}: obs_mask (partly observed sites) is not supported yet; split the "
            "site into an observed and a latent site, or mask the observed part with "
            ".mask(...)")
    stack = effects._STACK
    if not stack:  # the lean path: no handler, just a draw
        if obs is not None:
            return obs
        return fn.rsample() if fn.has_rsample else fn.sample()
    if obs is not None and not isinstance(obs, torch.Tensor):
        raise obs_not_a_tensor(name, obs)
    if stack[0].__class__ is Recorder:
        msg = _recorded(stack, name, fn, obs, infer)
        if msg is not None:
            return msg["value"]
    msg = new_message("sample", name, fn, obs, is_observed=obs is not None, infer=infer)
    return apply_stack(msg)["value"]


def _recorded(stack, name, fn, obs, infer):
    """The message of a sample site recorded by svigraph's own step, when the handler stack
    is the Recorder, then enumeration handlers (``enum``, ``sequential_choice``), then
    plates and markov contexts (a training step's whole stack): what ``apply_stack`` would
    leave, in one pass, with no call per handler and phase for plates and markov. None when
    anything else is active (or a plate sits outside an enumeration handler), or when a
    plate meets a batch shape it has not broadcast yet (``apply_stack`` then works it out,
    and raises the named error where there is one)."""
    handlers, frames, scale = [], (), 1.0  # enumeration handlers, innermost first
    for i in range(len(stack) - 1, 0, -1):  # innermost first, as process_message runs
        h = stack[i]
        cls = h.__class__
        if cls is plate:
            if handlers:  # a plate outside an enumeration handler: that order matters
                return None
            if h._counter is not None:  # sequential: a frame and a scale, nothing to broadcast
                frames += (h._frame,)
                scale = scale * h._scale
                continue
            frame = h._frame
            batch = _BROADCASTS.get((fn.batch_shape, h.dim, h.subsample_size))
            if frame is None or batch is None:
                return None
            frames += (frame,)
            if batch is not _FITS:
                fn = _broadcast_to(fn, batch, obs is not None or
                                   (infer is not None and infer.get("enumerate") == "parallel"))
            if h._scale != 1.0:
                scale = scale * h._scale
        elif cls in _ENUMERATORS:
            handlers.append(h)
        elif cls is not markov:
            return None
    enum_class = _ENUMERATORS[0]
    for h in handlers:  # enum's plate check, inlined, before any handler acts
        if h.__class__ is enum_class:
            limit = h._plate_limit
            for f in frames:
                if f.dim is not None and f.dim <= limit:
                    return None  # a plate where enumeration's dims are: enum's error says so
    msg = {"type": "sample", "name": name, "fn": fn, "args": (), "value": obs,
           "is_observed": obs is not None, "infer": infer if infer is not None else {},
           "scale": scale, "mask": None, "cond_indep_stack": frames, "stop": False}
    for h in handlers:
        if h.__class__ is enum_class:
            h._enumerate_site(msg)
        else:
            h.process_message(msg)
    recorder = stack[0]
    recorder.process_message(msg)
    effects.default_process(msg)
    for h in reversed(handlers):
        h.postprocess_message(msg)
    recorder.record_final(msg)  # (the recorder's own postprocessing: the message is final)
    return msg


def _broadcast_to(fn, batch, lazily):
    """``plate._broadcast`` of a recorded site: lazily for a site whose value is given or
    enumerated (see ``_lazily_expanded``), else expanded."""
    expanded = _lazily_expanded(fn, batch) if lazily else fn.expand(batch)
    expanded.__dict__[UNEXPANDED] = fn.__dict__.get(UNEXPANDED, fn)
    return expanded


def param(name, init=None, constraint=torch.distributions.constraints.real, event_dim=None):
    """A named trainable tensor from the param store, created from ``init`` on first use.

    Returns the constrained value; its ``.unconstrained()`` is the leaf optimizers update.
    """
    store = get_param_store()
    if not effects._STACK:
        return store.get(name, init, constraint)
    recorder = _lean_recorder()
    if recorder is not None:  # the lean recording path: no message, same record
        value = recorder.params[name] = store.get(name, init, constraint)
        return value
    msg = new_message("param", name, store.get, args=(name, init, constraint))
    msg["event_dim"] = event_dim
    return apply_stack(msg)["value"]


def _lean_recorder():
    """The active Recorder when the only other handlers are plates, markov contexts and
    enumeration handlers (which all ignore params), else None: a ``param`` then needs no
    message through the stack."""
    stack = effects._STACK
    recorder = stack[0]
    if recorder.__class__ is not Recorder:
        return None
    for handler in stack[1:]:
        cls = handler.__class__
        if cls is not plate and cls is not markov and cls not in _ENUMERATORS:
            return None
    return recorder


def module(name, nn_module, update_module_params=False):
    """Register an ``nn.Module``'s parameters in the param store as ``name.param_name``.

    If the store already holds a value under that name (after ``load``, say), the module's
    parameter is set from it, so a restored store restores the module.
    """
    store = get_param_store()
    # A training step's usual case: every parameter registered already, nothing lent, and
    # params needing no message (``param``'s lean path): each is recorded as it is.
    recorder = _lean_recorder() if effects._STACK else None
    steady = ((recorder is not None or not effects._STACK) and not lent_any()
              and not lending_parameters())
    for param_name, p in named_parameters(nn_module):
        full = f"{name}.{param_name}"
        if steady and store.param_name(p) == full:  # the store holds this very leaf
            value = store.get(full)
            if recorder is not None:
                recorder.params[full] = value
            continue
        lent = lent_original(p)  # registered already in this trace, which lent it a copy
        store.register_leaf(full, p if lent is None else lent,
                            overwrite_module=not update_module_params)
        value = param(full)
        if lent is None and value is not p and (lending_parameters() or get_provenance(value)):
            # tracing: the module computes with the tagged copy; a JIT capture: with the
            # graph's input for this param
            lend_parameter(nn_module, param_name, value)
    return nn_module


def named_parameters(nn_module):
    """``nn_module.named_parameters()`` as a list, in the same order (modules depth first,
    each one's own parameters before its children's; a shared module or parameter once),
    walked directly: torch's generator costs about three times as much."""
    out, seen_modules, seen_params = [], set(), set()

    def walk(mod, prefix):
        if id(mod) in seen_modules:
            return
        seen_modules.add(id(mod))
        for key, p in mod._parameters.items():
            if p is not None and id(p) not in seen_params:
                seen_params.add(id(p))
                out.append((prefix + key, p))
        for key, child in mod._modules.items():
            if child is not None:
                walk(child, prefix + key + ".")

    walk(nn_module, "")
    return out


class _Factor(torch.distributions.Distribution):
    """A 'distribution' whose log_prob is a given tensor: the site of ``factor``."""

    arg_constraints = {}
    has_rsample = False
    support = torch.distributions.constraints.real

    def __init__(self, log_factor):
        self.log_factor = log_factor
        super().__init__(batch_shape=log_factor.shape, validate_args=False)

    def log_prob(self, value):
        return self.log_factor

    def sample(self, sample_shape=torch.Size()):
        return self.log_factor.new_empty(sample_shape + self.batch_shape + (0,))

    def expand(self, batch_shape, _instance=None):
        return _Factor(self.log_factor.expand(batch_shape))


def factor(name, log_factor):
    """Add ``log_factor`` to the model's log density, as an observed site named ``name``."""
    log_factor = torch.as_tensor(log_factor)
    fn = _Factor(log_factor)
    sample(name, fn, obs=fn.sample())


_FULL_INDICES = SharedTensors(max_size=256)  # size -> arange(size), for full plates


def _full_indices(size):
    """``torch.arange(size)``, the indices of a plate that is not subsampled: built once per
    size and shared while nobody writes into it (see ``SharedTensors``)."""
    return _FULL_INDICES.get(size, torch.arange, size)


# A plate frame on a message's cond_indep_stack: dim is None for a sequential plate, whose
# iterations are told apart by ``counter``.
Frame = namedtuple("Frame", ["name", "size", "subsample_size", "dim", "counter"])


class plate(Messenger):
    """Mark conditionally independent draws.

    As a context manager, sites inside are vectorized along ``dim`` (allocated automatically
    right to left when omitted) and broadcast to the plate's size; with ``subsample_size``,
    a random subset of indices is used and every term inside is scaled by
    ``size / subsample_size``. Iterating, ``for i in plate(...)``, runs a sequential plate.
    ``size`` may be omitted: it is then read from the first site's batch shape at ``dim``.

    Example:
        >>> with plate("data", 100, subsample_size=10) as idx:
        ...     sample("obs", dist.Normal(loc, 1.0), obs=data[idx])
    """

    def __init__(self, name, size=None, subsample_size=None, dim=None, subsample=None):
        super().__init__(None)
        if dim is not None and dim >= 0:
            raise PlateError(f"plate {name!r}: dim must be negative, got {dim}",
                             fix=f"count dims from the right, e.g. sg.plate({name!r}, ..., dim=-1)",
                             plate=name)
        if subsample is not None:
            subsample = torch.as_tensor(subsample)
            subsample_size = len(subsample)
        if size is None and subsample_size is not None and subsample is None:
            raise PlateError(f"plate {name!r}: subsample_size={subsample_size} needs a size",
                             fix=f"give the full size, e.g. sg.plate({name!r}, N, subsample_size=...)",
                             plate=name)
        self.name = name
        self.size = size
        self.subsample_size = subsample_size if subsample_size is not None else size
        self.user_dim = dim
        self.dim = dim
        self._subsample = subsample
        self._indices = None
        self._counter = None
        self._scale = 1.0
        self._frame = None       # this entry's Frame, the same for every site inside

    # vectorized use
    def __enter__(self):
        self.dim = self._allocate_dim()
        self._indices = self._draw_indices()
        self._frame = None if self.size is None else \
            Frame(self.name, self.size, self.subsample_size, self.dim, None)
        super().__enter__()
        return self._indices

    def _allocate_dim(self):
        taken = {h.dim: h.name for h in effects._STACK if isinstance(h, plate) and h.dim is not None
                 and h._counter is None}
        if self.user_dim is not None:
            if self.user_dim in taken:
                raise PlateError(
                    f"plate {self.name!r} asks for dim {self.user_dim}, already used by "
                    f"enclosing plate {taken[self.user_dim]!r}",
                    [f"active plates: {', '.join(f'{n} (dim {d})' for d, n in sorted(taken.items()))}"],
                    f"give the plates different dims, e.g. sg.plate({self.name!r}, ..., dim="
                    f"{min(taken) - 1}), or leave dim out to allocate one automatically",
                    plate=self.name)
            return self.user_dim
        dim = -1
        while dim in taken:
            dim -= 1
        return dim

    def _draw_indices(self):
        if self.size is None:
            return None
        if self._subsample is None and self.subsample_size >= self.size:
            self._scale = 1.0
            indices = _full_indices(self.size)
        else:
            msg = new_message("subsample", self.name, _random_subsample,
                              self._subsample, args=(self.size, self.subsample_size))
            indices = apply_stack(msg)["value"] if effects._STACK else \
                _random_subsample(self.size, self.subsample_size)
            self._scale = self.size / len(indices)
        self.subsample_size = len(indices)
        return indices

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        if self._counter is not None:  # sequential iteration
            msg["cond_indep_stack"] += (self._frame,)
            msg["scale"] = msg["scale"] * self._scale
            return
        if self.size is None:
            self._infer_size(msg)
        frame = self._frame
        if frame is None:
            frame = self._frame = Frame(self.name, self.size, self.subsample_size, self.dim, None)
        msg["cond_indep_stack"] += (frame,)
        msg["fn"] = self._broadcast(msg)
        if self._scale != 1.0:
            msg["scale"] = msg["scale"] * self._scale

    def _infer_size(self, msg):
        shape = msg["fn"].batch_shape
        if msg["value"] is not None:
            event = len(msg["fn"].event_shape)
            vshape = msg["value"].shape
            shape = vshape[:len(vshape) - event] if event else vshape
        size = shape[self.dim] if len(shape) >= -self.dim else 1
        self.size = self.subsample_size = size
        self._indices = _full_indices(size)

    def _broadcast(self, msg):
        fn = msg["fn"]
        key = (fn.batch_shape, self.dim, self.subsample_size)
        batch = _BROADCASTS.get(key)
        if batch is None:
            batch = self._broadcast_shape(msg)
            if len(_BROADCASTS) >= 4096:  # bounded: shapes, dims and sizes
                _BROADCASTS.clear()
            _BROADCASTS[key] = batch
        if batch is _FITS:
            return fn
        # The log density of an expanded distribution is the unexpanded one's, broadcast:
        # runtime.terms computes it on the small one (a plate of N over a global
        # Categorical would otherwise normalize N copies of its logits every step).
        return _broadcast_to(fn, batch, (msg["is_observed"] or msg["infer"].get("enumerate")
                                         == "parallel") and _recording_only())

    def _broadcast_shape(self, msg):
        """The batch shape of site ``msg`` broadcast to this plate, or ``_FITS`` when it
        already has the plate's size at the plate's dim; raises when it cannot."""
        fn = msg["fn"]
        batch = list(fn.batch_shape)
        if len(batch) < -self.dim:
            batch = [1] * (-self.dim - len(batch)) + batch
        have = batch[self.dim]
        if have == self.subsample_size:
            return _FITS
        if have != 1:
            raise PlateError(
                f"site {msg['name']!r}: batch shape {tuple(fn.batch_shape)} has size {have} at "
                f"dim {self.dim}, but plate {self.name!r} there has size {self.subsample_size}",
                [f"plate {self.name!r}: size {self.size}, subsample {self.subsample_size}, dim {self.dim}",
                 f"site {msg['name']!r}: {type(fn).__name__} batch {tuple(fn.batch_shape)} "
                 f"event {tuple(fn.event_shape)}"],
                f"make the site's parameters size {self.subsample_size} (or 1) at dim {self.dim};\n"
                "if that dim belongs to the event, declare it with .to_event(1) instead",
                site=msg["name"], plate=self.name,
                shapes={"batch": tuple(fn.batch_shape), "plate": self.subsample_size})
        batch[self.dim] = self.subsample_size
        return torch.Size(batch)

    # sequential use
    def __iter__(self):
        if self.size is None:
            raise PlateError(f"sequential plate {self.name!r} needs a size",
                             fix=f"sg.plate({self.name!r}, N) before iterating", plate=self.name)
        self.dim = None
        indices = self._draw_indices()
        for counter, i in enumerate(indices.tolist()):
            self._counter = counter
            self._frame = Frame(self.name, self.size, self.subsample_size, None, counter)
            effects._STACK.append(self)  # not self.__enter__: no dim, indices already drawn
            try:
                yield i
            finally:
                if self in effects._STACK:
                    del effects._STACK[effects._STACK.index(self):]
        self._counter = None
        self._frame = None


_FITS = "fits"  # a batch shape the plate leaves as it is
# (batch shape, plate dim, plate subsample size) -> the broadcast batch shape, or _FITS
_BROADCASTS = {}


def _lazily_expanded(fn, batch):
    """``fn`` with batch shape ``batch`` and its parameters left as they are.

    Only for a site whose value is given (observed) or enumerated, while svigraph's own
    per-step recording is the whole handler stack (``_recording_only``): the runtime reads
    such a site's shapes and its log density through ``runtime.terms``, which computes it
    on the unexpanded distribution and broadcasts it. Should the site be sampled after all
    (enumeration flags under an objective that does not enumerate), ``default_process``
    expands it for real first. Saves the parameter expands of every such site every step."""
    new = object.__new__(fn.__class__)
    new.__dict__.update(fn.__dict__)
    new.__dict__["_batch_shape"] = batch
    new.__dict__[LAZY_EXPANDED] = True
    return new


# Handlers that may sit above the Recorder while a step records with lazy plate expansion;
# handlers.py adds enumeration's. Any other handler (a user's trace, condition, scale...)
# may read a distribution's parameters, so plates then expand them.
RECORDING_HANDLERS = set()
_ENUMERATORS = []  # handlers.enum, then handlers.sequential_choice (set by handlers.py)


def _recording_only():
    stack = effects._STACK
    if stack[0].__class__ is not Recorder:
        return False
    for handler in stack:
        if handler.__class__ not in RECORDING_HANDLERS:
            return False
    return True


def _random_subsample(size, subsample_size):
    return torch.randperm(size)[:subsample_size]


class markov(Messenger):
    """Mark a Markov chain with ``history`` steps of memory.

    Iterate over a range, ``for t in markov(range(T))``: each step tells the enumeration
    handler that values more than ``history`` steps old are no longer read, so their
    enumeration dims are reused and a chain of length T costs memory linear in T. As a plain
    context manager (or under objectives that do not enumerate) it changes nothing.
    """

    def __init__(self, fn=None, history=1, keep=False, dim=None, name=None):
        if history < 0 or int(history) != history:
            raise ValueError(f"markov history must be a non-negative integer, got {history}")
        self.history = int(history)
        self.keep = keep
        self._iterable = None
        if fn is not None and not callable(fn):
            self._iterable, fn = fn, None
        super().__init__(fn)

    def __iter__(self):
        if self._iterable is None:
            raise TypeError("markov(...) is iterable only when given a range, e.g. markov(range(T))")
        for item in self._iterable:
            # Only enumeration handlers act on a step; telling them directly spares a
            # message through the whole stack at every iteration of a long chain.
            stack = effects._STACK
            for handler in stack:
                if _MARKOV_STEPPERS.get(handler.__class__) or _has_markov_step(handler.__class__):
                    handler.markov_step(self, self.history)
            stack.append(self)  # as ``with self``, without its two calls per step
            try:
                yield item
            finally:
                if self in stack:
                    del stack[stack.index(self):]


_MARKOV_STEPPERS = {}  # handler class -> whether it has a markov_step


def _has_markov_step(cls):
    has = _MARKOV_STEPPERS.get(cls)
    if has is None:
        has = _MARKOV_STEPPERS[cls] = hasattr(cls, "markov_step")
    return has


def set_rng_seed(seed):
    """Seed torch and Python's ``random`` for reproducible runs."""
    torch.manual_seed(seed)
    random.seed(seed)


RECORDING_HANDLERS.update((Recorder, plate, markov))
