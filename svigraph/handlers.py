"""Effect handlers: trace, replay, scale, condition, block, mask, seed.

Each is a lowercase class usable three ways::

    tr = trace(model).get_trace(data)                # wrapper
    @scale(scale=1.0 / N)                            # decorator
    def model(data): ...
    with block(hide=["z"]): model(data)              # context manager

and they compose: ``trace(replay(model, trace=guide_trace)).get_trace(data)``.
"""

from __future__ import annotations

import torch

from compiler.errors import EnumerationError, obs_not_a_tensor
from runtime.support import enumerated_support  # noqa: F401  (re-exported)
from svigraph import effects, primitives
from svigraph.effects import Messenger
from svigraph.primitives import plate, markov, set_rng_seed  # noqa: F401  (re-exported)
from svigraph.trace_struct import Trace


class trace(Messenger):
    """Record every site of a run into a ``Trace`` (``.trace``); ``param_only`` keeps params.

    Example:
        >>> tr = trace(model).get_trace(data)
        >>> tr["z"]["value"], tr.log_prob_sum()
    """

    def __init__(self, fn=None, param_only=False):
        super().__init__(fn)
        self.param_only = param_only
        self.trace = Trace()

    def __enter__(self):
        self.trace = Trace()
        return super().__enter__()

    def postprocess_message(self, msg):
        kind = msg["type"]
        if kind not in ("sample", "param", "subsample") or (self.param_only and kind != "param"):
            return  # control messages (markov steps) are not sites
        self.trace.add_site(msg.copy())

    def get_trace(self, *args, **kwargs):
        self(*args, **kwargs)
        return self.trace


class replay(Messenger):
    """Reuse the values of ``trace`` for the unobserved sample sites of the same name."""

    def __init__(self, fn=None, trace=None, params=None):
        super().__init__(fn)
        if trace is None and params is None:
            raise ValueError("replay needs trace=... (a Trace, e.g. the guide's) or params=...")
        self.replay_trace = trace
        self.params = params

    def process_message(self, msg):
        kind = msg["type"]
        if kind == "param":
            if self.params is not None and msg["name"] in self.params:
                msg["value"] = self.params[msg["name"]]
            return
        if self.replay_trace is None or msg["is_observed"]:
            return
        site = self.replay_trace.get(msg["name"])
        if site is not None and site["type"] == kind:
            msg["value"] = site["value"]


class scale(Messenger):
    """Multiply the log density of every sample site by ``scale`` (> 0)."""

    def __init__(self, fn=None, scale=1.0):
        super().__init__(fn)
        if isinstance(scale, (int, float)) and scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = float(scale) if isinstance(scale, (int, float)) else scale

    def process_message(self, msg):
        if msg["type"] == "sample":
            msg["scale"] = self.scale * msg["scale"]


class condition(Messenger):
    """Observe the sites named in ``data`` (a dict or Trace) at the given values."""

    def __init__(self, fn=None, data=None):
        super().__init__(fn)
        if data is None:
            raise ValueError("condition needs data={site name: value}")
        self.data = data

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["name"] not in self.data:
            return
        value = self.data[msg["name"]]
        if isinstance(value, dict):  # a Trace's site
            value = value["value"]
        if not isinstance(value, torch.Tensor):
            raise obs_not_a_tensor(msg["name"], value, by_condition=True)
        msg["value"] = value
        msg["is_observed"] = True


class block(Messenger):
    """Hide sites from the handlers outside this one.

    With no arguments every site is hidden. ``hide`` / ``expose`` are site names,
    ``hide_types`` / ``expose_types`` message types, ``hide_fn`` / ``expose_fn`` predicates.
    """

    def __init__(self, fn=None, hide_fn=None, expose_fn=None, hide_all=True, expose_all=False,
                 hide=None, expose=None, hide_types=None, expose_types=None):
        super().__init__(fn)
        if hide_fn is not None:
            self._hidden = hide_fn
        elif expose_fn is not None:
            self._hidden = lambda msg: not expose_fn(msg)
        elif hide is not None or hide_types is not None:
            hide, types = set(hide or ()), set(hide_types or ())
            self._hidden = lambda msg: msg["name"] in hide or msg["type"] in types
        elif expose is not None or expose_types is not None:
            expose, types = set(expose or ()), set(expose_types or ())
            self._hidden = lambda msg: not (msg["name"] in expose or msg["type"] in types)
        else:
            self._hidden = (lambda msg: True) if hide_all and not expose_all else (lambda msg: False)

    def process_message(self, msg):
        if self._hidden(msg):
            msg["stop"] = True


class mask(Messenger):
    """Mask the log density of sample sites: entries where ``mask`` is False count as 0."""

    def __init__(self, fn=None, mask=None):
        super().__init__(fn)
        if mask is None:
            raise ValueError("mask needs mask=... (a bool or a bool tensor)")
        if isinstance(mask, torch.Tensor) and mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}; use mask.bool()")
        self.mask = mask

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        old = msg["mask"]
        msg["mask"] = self.mask if old is None else (old & self.mask)


class seed(Messenger):
    """Seed the random number generators on entry, for a reproducible run."""

    def __init__(self, fn=None, rng_seed=None):
        super().__init__(fn)
        if rng_seed is None:
            raise ValueError("seed needs rng_seed=<int>")
        self.rng_seed = rng_seed

    def __enter__(self):
        set_rng_seed(self.rng_seed)
        return super().__enter__()


class enum(Messenger):
    """Enumerate sites marked ``infer={"enumerate": "parallel"}`` in parallel: each such site's
    value becomes its whole support, laid along a fresh dim left of ``first_available_dim``
    (so it broadcasts against every plate dim to its right). The dim is kept in the message
    as ``msg["enum_dim"]``.

    ``after``: the ``enum`` handler of the guide, for the model's: the model's dims then
    continue left of the guide's, and the guide's sites (whose values the model replays) are
    not enumerated again.
    """

    def __init__(self, fn=None, first_available_dim=None, after=None):
        super().__init__(fn)
        if after is None and (first_available_dim is None or first_available_dim >= 0):
            raise ValueError("enum needs a negative first_available_dim, e.g. "
                             "-max_plate_nesting - 1")
        self.first_available_dim = first_available_dim
        self.after = after
        self._plate_limit = self.plate_limit  # fixed: read for every site in a plate
        self.names = set()   # sample sites seen this run
        self._reset()

    def _reset(self):
        if self.after is not None:
            self.first_available_dim = self.after._next
        self._next = self.first_available_dim
        self._free = []      # dims of values no markov step reads any more
        self._steps = {}     # markov context -> per-step lists of dims, newest last
        self.names = set()

    def __enter__(self):
        self._reset()
        return super().__enter__()

    def _allocate(self):
        if self._free:
            return self._free.pop()
        dim = self._next
        self._next -= 1
        return dim

    def markov_step(self, chain, history):
        """Called by ``markov`` at each iteration: values more than ``history`` steps old
        are no longer read, so their enumeration dims become free."""
        steps = self._steps.setdefault(chain, [])
        steps.append([])
        while len(steps) > history + 1:  # values older than `history` steps: dims reusable
            self._free += sorted(steps.pop(0))

    @property
    def plate_limit(self):
        """The first enumeration dim of the program: plate dims must lie right of it (the
        first handler's ``first_available_dim``, fixed when it is made)."""
        return self.after.plate_limit if self.after is not None else self.first_available_dim

    def _check_plates(self, msg):
        limit = self._plate_limit
        for f in msg["cond_indep_stack"]:
            if f.dim is not None and f.dim <= limit:
                nesting = -limit - 1
                explicit = [h.user_dim for h in effects._STACK
                            if isinstance(h, plate) and h.name == f.name and h.user_dim]
                raise EnumerationError(
                    f"plate {f.name!r} of site {msg['name']!r} is at dim {f.dim}, which "
                    f"enumeration uses (its dims start at {limit})",
                    [f"max_plate_nesting={nesting} leaves dims -1..{-nesting} to plates"
                     + (f"; the plate asks for dim={explicit[0]}" if explicit else ""),
                     f"site {msg['name']!r} plates: "
                     + ", ".join(f"{g.name} (dim {g.dim})" for g in msg["cond_indep_stack"]
                                 if g.dim is not None)],
                    f"raise max_plate_nesting to {-f.dim} (e.g. TraceEnum_ELBO(max_plate_nesting="
                    f"{-f.dim}))" + (f", or give plate {f.name!r} a dim in -1..{-nesting}"
                                     if explicit and nesting else ""),
                    site=msg["name"], plate=f.name, shapes={"plate_dim": f.dim,
                                                            "first_enum_dim": limit})

    def process_message(self, msg):
        if msg["type"] == "sample":
            if msg["cond_indep_stack"]:
                self._check_plates(msg)
            self._enumerate_site(msg)

    def _enumerate_site(self, msg):
        """Enumerate sample site ``msg`` if it asks for it (its plates checked already)."""
        if (msg["is_observed"] or msg["value"] is not None
                or msg["infer"].get("enumerate") != "parallel"
                or (self.after is not None and msg["name"] in self.after.names)):
            return
        fn = msg["fn"]
        if not fn.has_enumerate_support:
            raise EnumerationError(
                f"site {msg['name']!r} cannot be enumerated: {type(fn).__name__} has no finite "
                "support", ['requested by infer={"enumerate": "parallel"}',
                            f"batch {tuple(fn.batch_shape)}, event {tuple(fn.event_shape)}, "
                            f"support {fn.support}"],
                f"remove the enumerate flag for {msg['name']!r}, or use a discrete "
                "distribution (Categorical, Bernoulli, ...)", site=msg["name"])
        dim = self._allocate()
        if self._steps:  # the innermost markov context that has started a step owns the dim
            for h in reversed(effects._STACK):
                if h.__class__ is markov or isinstance(h, markov):
                    steps = self._steps.get(h)
                    if steps is not None:
                        steps[-1].append(dim)
                        break
        msg["value"] = enumerated_support(fn, dim)
        msg["enum_dim"] = dim

    def postprocess_message(self, msg):
        if msg["type"] == "sample":
            self.names.add(msg["name"])


class sequential_choice(Messenger):
    """Fix the value of each site marked ``infer={"enumerate": "sequential"}``: the support
    element at index ``assignment[name]``, or the first one for a site not yet assigned
    (listed in ``discovered`` as (name, support size), in program order). Iterating over
    assignments in odometer order runs every combination once (``TraceEnum_ELBO`` does)."""

    def __init__(self, fn=None):
        super().__init__(fn)
        self.assignment = {}
        self.discovered = []
        self.sites = {}

        self.paused = False  # while tracing a recorded run, whose values are replayed

    def start(self, assignment):
        self.assignment, self.discovered, self.sites = dict(assignment), [], {}

    def process_message(self, msg):
        if (self.paused or msg["type"] != "sample" or msg["is_observed"]
                or msg["value"] is not None
                or msg["infer"].get("enumerate") != "sequential"):
            return
        fn, name = msg["fn"], msg["name"]
        if not fn.has_enumerate_support:
            raise EnumerationError(
                f"site {name!r} cannot be enumerated: {type(fn).__name__} has no finite "
                "support", ['requested by infer={"enumerate": "sequential"}'],
                f"remove the enumerate flag for {name!r}, or use a discrete distribution "
                "(Categorical, Bernoulli, ...)", site=name)
        if fn.batch_shape.numel() > 1:
            plates = [f.name for f in msg["cond_indep_stack"] if f.dim is not None]
            raise EnumerationError(
                f"guide site {name!r} is enumerated sequentially but is batched: one run per "
                "value would give every element the same value",
                [f"batch shape {tuple(fn.batch_shape)}, plates "
                 f"{', '.join(map(repr, plates)) or '()'}"
                 + ("" if plates else " (it reads a value enumerated in parallel, or has "
                    "batch dims)")],
                'use infer={"enumerate": "parallel"} for it (or, in a plate, iterate the '
                "plate sequentially: for i in sg.plate(...))", site=name,
                plate=msg["cond_indep_stack"][-1].name if msg["cond_indep_stack"] else None,
                shapes={"batch": tuple(fn.batch_shape)})
        support = fn.enumerate_support(expand=False)
        if name not in self.assignment:
            self.discovered.append((name, support.shape[0]))
        msg["value"] = support[self.assignment.get(name, 0)]

    def postprocess_message(self, msg):
        if (not self.paused and msg["type"] == "sample"
                and msg["infer"].get("enumerate") == "sequential"):
            self.sites[msg["name"]] = msg


class config_enumerate(Messenger):
    """Mark every unobserved sample site with finite support for enumeration (``default``),
    unless the site says otherwise. Usable as ``config_enumerate(fn)`` or a decorator."""

    def __init__(self, fn=None, default="parallel"):
        super().__init__(fn)
        if default not in ("parallel", "sequential", None):
            raise ValueError(f"default must be 'parallel', 'sequential' or None, got {default!r}")
        self.default = default

    def process_message(self, msg):
        if (msg["type"] == "sample" and not msg["is_observed"] and self.default is not None
                and "enumerate" not in msg["infer"] and msg["fn"].has_enumerate_support):
            msg["infer"] = {**msg["infer"], "enumerate": self.default}


# enumeration sets values and reads shapes only: recording under it may expand lazily
primitives.RECORDING_HANDLERS.update((enum, sequential_choice))
primitives._ENUMERATORS[:] = [enum, sequential_choice]
