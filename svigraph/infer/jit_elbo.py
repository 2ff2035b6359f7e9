"""JitTrace_ELBO, JitTraceGraph_ELBO, JitTraceEnum_ELBO: the compiled plan, captured whole.

The eager objectives run the Python model and guide every step and execute the plan on what
they recorded. The JIT variants go one step further: once a structure has run eagerly, the
next step is captured (``runtime.capture``) as one aten graph holding everything the step
computes: the guide's draws, every log-prob term, the surrogate, the baselines' update and
the backward pass. Later steps only gather the inputs (the params' unconstrained leaves, the
tensor arguments, the baselines' averages, per-call ``site_scales``) and run the compiled
graph; the Python model does not run at all.

When is skipping the Python program sound? The captured graph is a fixed function of its
inputs, so it is reused only under a guard: the same model and guide, the same argument
signature (tensors by shape and dtype, plain values by value, see ``args_signature``), the
same params (names, shapes, constraints), the same set of baseline averages, the same
``site_scales`` names and the same kind of call (``loss`` or gradients). A step whose
structure could change with the values it draws is never captured: the tracer marks every
value read into Python (a control edge in the plan's graph), and the capture itself stops at
any Python read of a value derived from an input. Such structures run eagerly every step,
which detects a new structure and recompiles its plan, exactly as the eager objective does.
What no guard can see is Python state outside the arguments and the param store (a global,
Python's ``random``): a model whose structure depends on it must use the eager objectives.

Random draws replay from torch's global generator in the eager order, so with the same seed
the JIT objective computes what its eager counterpart computes (the tests check losses and
gradients against it).

``jit_options``: ``{"backend": "inductor" | "fx", "warmup": 1, "max_ops": 10_000}``.
"inductor" (default) compiles the graph to C++ kernels; "fx" replays the recorded aten calls
with no compile time. Inductor compiles about 50 aten ops a second on the development machine,
so a step captured as more than ``max_ops`` ops (an HMM of a thousand steps) is not compiled:
that structure runs eagerly, and the plan says so.
``warmup`` is the number of eager steps per structure before it is captured (at least 1: the
first creates the params and the plan). Pyro's ``check_trace`` is accepted and ignored.
``ignore_jit_warnings=True`` silences warnings raised while capturing and compiling.
"""

from __future__ import annotations

import dataclasses
import types
import weakref

import torch
from torch.distributions import biject_to, constraints

from compiler.plan import Plan
from compiler.printing import format_plan
from runtime.capture import (BACKENDS, CaptureRefused, PrecomputedGrads, capture_step,
                             compile_captured, count_ops, fresh_outputs)
from runtime.executor import run_plan
from runtime.records import structure_key, args_signature
from svigraph.effects import Messenger
from svigraph.infer.trace_elbo import Trace_ELBO, TraceGraph_ELBO
from svigraph.infer.traceenum_elbo import TraceEnum_ELBO
from svigraph.params import get_param_store
from svigraph.recording import record

_PYRO_JIT_OPTIONS = ("check_trace", "optimize")  # torch.jit.trace's; meaningless here
MAX_INDUCTOR_OPS = 10_000  # default jit_options max_ops: larger captured steps run eagerly


# ---- the plan as printed by a JIT objective ------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class JitPlan(Plan):
    """A Plan that also says what the JIT objective captured for it (``jit``)."""

    jit: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __str__(self):
        return self.pretty()

    def pretty(self, source=False, full=False):
        text = format_plan(self, source=source, full=full)
        lines = [f"  jit {line}" for line in self.jit_lines()]
        head, _, tail = text.rpartition("\n}")
        return "\n".join([head] + lines) + "\n}" + tail

    def jit_lines(self):
        """One line per kind of call: what was captured and compiled, or why not."""
        if not self.jit:
            return ["pending: captured after its first eager step"]
        return [f"{mode}: {text}" for mode, text in sorted(self.jit.items())]


# ---- per-guard state ---------------------------------------------------------------------
class _Entry:
    """One guard's state: warming up (eager), captured, or refused (eager for good)."""

    __slots__ = ("mode", "eager_steps", "step", "refused", "plan", "names", "leaves",
                 "constraints", "shapes", "baselines", "grad_mask", "scale_names")

    def __init__(self, mode, scale_names):
        self.mode = mode                # "step" (gradients) or "loss"
        self.scale_names = scale_names  # site_scales given as inputs, by name
        self.eager_steps = 0
        self.step = None       # the CapturedStep, once captured
        self.refused = None    # why this guard runs eagerly for good
        self.plan = None       # the plan of the last eager step / of the capture
        self.names = ()        # the params the step reads, in input order
        self.leaves = ()       # their leaves at the last check (identity fast path)
        self.constraints = ()
        self.shapes = ()
        self.baselines = ()    # ((site, shape of its average or None), ...): decaying averages
        self.grad_mask = ()    # per param: whether its gradient is an output

    @property
    def label(self):
        return self.mode + (f"[site_scales {', '.join(self.scale_names)}]"
                            if self.scale_names else "")


class _ParamInputs(Messenger):
    """Answer ``param`` statements with the capture's input leaves, constrained as the store
    constrains them, so the params enter the graph as inputs rather than as constants."""

    def __init__(self, leaves):
        super().__init__(None)
        self.leaves = leaves  # name -> leaf placeholder

    def process_message(self, msg):
        if msg["type"] != "param" or msg["value"] is not None:
            return
        name = msg["name"]
        leaf = self.leaves.get(name)
        if leaf is None:
            raise CaptureRefused(f"param {name!r} first appeared while capturing",
                                 fix="nothing to do: this structure runs eagerly", site=name)
        constraint = get_param_store().get_constraint(name)
        msg["value"] = leaf if constraint is constraints.real else biject_to(constraint)(leaf)


def _flatten_args(args, kwargs):
    """The tensors in the arguments, in order; None when an argument holds something the
    guard cannot see through (a dict, an object): such calls are not captured."""
    tensors = []

    def visit(x):
        if isinstance(x, torch.Tensor):
            tensors.append(x)
            return True
        if x is None or isinstance(x, (bool, int, float, str)):
            return True
        if isinstance(x, (list, tuple)):
            return all([visit(v) for v in x])
        return False

    ok = all([visit(a) for a in args]) and all([visit(kwargs[k]) for k in sorted(kwargs)])
    return tensors if ok else None


def _rebuild_args(args, kwargs, tensors):
    """``args, kwargs`` with their tensors replaced, in ``_flatten_args`` order."""
    it = iter(tensors)

    def swap(x):
        if isinstance(x, torch.Tensor):
            return next(it)
        if isinstance(x, (list, tuple)):
            return type(x)(swap(v) for v in x)
        return x

    new_args = tuple(swap(a) for a in args)
    new_kwargs = {k: swap(kwargs[k]) for k in sorted(kwargs)}
    return new_args, new_kwargs


def _control_edges(graph):
    return [(u, v) for u, v, d in graph.edges(data=True) if d["kind"] == "control"]


def _as_scale(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.tensor(float(value), dtype=torch.get_default_dtype())


class _JitELBO:
    """The JIT machinery shared by the three objectives (mixed in before the eager class)."""

    def __init__(self, *args, ignore_jit_warnings=False, jit_options=None, **kwargs):
        super().__init__(*args, **kwargs)
        options = dict(jit_options or {})
        for key in _PYRO_JIT_OPTIONS:
            options.pop(key, None)
        self.jit_backend = options.pop("backend", "inductor")
        self.jit_warmup = int(options.pop("warmup", 1))
        self.jit_max_ops = int(options.pop("max_ops", MAX_INDUCTOR_OPS))
        if options:
            raise ValueError(f"unknown jit_options {sorted(options)}; known: backend "
                             f"({' | '.join(BACKENDS)}), warmup (eager steps before capture), "
                             "max_ops (largest graph inductor compiles)")
        if self.jit_backend not in BACKENDS:
            raise ValueError(f"jit_options backend must be one of {BACKENDS}, "
                             f"got {self.jit_backend!r}")
        if self.jit_warmup < 1:
            raise ValueError("jit_options warmup must be at least 1: the first step creates "
                             "the params and compiles the plan")
        self.ignore_jit_warnings = ignore_jit_warnings
        self._jit_tables = weakref.WeakKeyDictionary()   # guide -> {model: {guard: _Entry}}
        self._last_was_jit = False
        self._in_eager = False

    def options(self):
        return super().options() + (("jit", self.jit_backend),)

    def _compile_graph(self, graph, key):
        plan = super()._compile_graph(graph, key)
        fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(Plan) if f.init}
        return JitPlan(**fields, jit={})

    # ---- guards ------------------------------------------------------------------------------
    def _table(self, model, guide):
        try:
            per_guide = self._jit_tables.setdefault(guide, weakref.WeakKeyDictionary())
            return per_guide.setdefault(model, {})
        except TypeError:  # not weak-referenceable: keep a strong reference
            strong = self.__dict__.setdefault("_strong_jit_tables", {})
            return strong.setdefault((id(model), id(guide)), {})

    def _entry(self, model, guide, mode, args, kwargs, site_scales):
        scale_names = tuple(sorted(site_scales)) if site_scales else ()
        guard = (mode, scale_names, args_signature(args, kwargs))
        table = self._table(model, guide)
        entry = table.get(guard)
        if entry is None:
            entry = table[guard] = _Entry(mode, scale_names)
        return entry

    def _current_leaves(self, entry):
        """The params' leaves now, or None when the store no longer matches the capture."""
        store = get_param_store()
        named = store.named_parameters()
        by_name = getattr(named, "mapping", None) or dict(named)
        try:
            leaves = tuple([by_name[n] for n in entry.names])
        except KeyError:
            return None
        if all([a is b for a, b in zip(leaves, entry.leaves)]):
            return leaves
        for name, leaf, shape, constraint in zip(entry.names, leaves, entry.shapes,
                                                 entry.constraints):
            if (tuple(leaf.shape), leaf.dtype) != shape or not leaf.requires_grad \
                    or store.get_constraint(name) is not constraint:
                return None
        entry.leaves = leaves
        return leaves

    def _baseline_inputs(self, entry):
        """The baseline averages the graph reads, or None when which exist (or their shapes)
        changed since the capture."""
        averages = self.baselines.averages
        values = []
        for site, shape in entry.baselines:
            value = averages.get(site)
            if (None if value is None else tuple(value.shape)) != shape:
                return None
            if value is not None:
                values.append(value)
        return values

    # ---- the objective's calls ---------------------------------------------------------------
    def differentiable_loss(self, model, guide, *args, **kwargs):
        if self._in_eager:  # the eager loss_and_grads calling back
            return super().differentiable_loss(model, guide, *args, **kwargs)
        site_scales = kwargs.pop("site_scales", None)
        entry, out = self._captured_step(model, guide, args, kwargs, site_scales)
        if out is not None:
            value, grads, leaves = out
            return PrecomputedGrads.apply(value, grads, *leaves)
        return self._eager(entry, "differentiable_loss", model, guide, args, kwargs, site_scales)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """As the eager objective's; from a capture, the gradients are accumulated into the
        leaves' ``.grad`` directly, with no autograd pass."""
        site_scales = kwargs.pop("site_scales", None)
        entry, out = self._captured_step(model, guide, args, kwargs, site_scales)
        if out is not None:
            value, grads, leaves = out
            for leaf, grad in zip(leaves, grads):
                if grad is not None and leaf.requires_grad:
                    if leaf.grad is None:
                        leaf.grad = grad
                    else:
                        leaf.grad += grad
            return float(value)
        return self._eager(entry, "loss_and_grads", model, guide, args, kwargs, site_scales)

    def _captured_step(self, model, guide, args, kwargs, site_scales):
        """(guard entry, (value, grads, leaves) from the captured step, or None when this
        step runs eagerly)."""
        entry = self._entry(model, guide, "step", args, kwargs, site_scales)
        out = None
        if entry.refused is None:
            out = self._jit_step(entry, model, guide, args, kwargs, site_scales)
            if out is not None:
                self.step_count += 1
        return entry, out

    def loss(self, model, guide, *args, **kwargs):
        site_scales = kwargs.pop("site_scales", None)
        entry = self._entry(model, guide, "loss", args, kwargs, site_scales)
        if entry.refused is None:
            with torch.no_grad():
                out = self._jit_step(entry, model, guide, args, kwargs, site_scales)
            if out is not None:
                return float(out[0])
        return self._eager(entry, "loss", model, guide, args, kwargs, site_scales)

    def param_leaves(self):
        if self._last_was_jit:  # last_params holds the leaves themselves
            return [leaf for leaf in self.last_params.values() if leaf.requires_grad]
        return super().param_leaves()

    def _eager(self, entry, method, model, guide, args, kwargs, site_scales):
        self._last_was_jit = False
        if site_scales is not None:
            kwargs = dict(kwargs, site_scales=site_scales)
        self._in_eager = True
        try:
            result = getattr(super(), method)(model, guide, *args, **kwargs)
        finally:
            self._in_eager = False
        entry.eager_steps += 1
        if entry.refused is not None:  # say so on every plan this guard runs
            plan = self.last_plan
            if isinstance(plan, JitPlan) and entry.label not in plan.jit:
                plan.jit[entry.label] = f"not captured: {entry.refused}"
        elif entry.step is None:
            entry.plan = self.last_plan
            entry.names = tuple(self.last_params)
            control = _control_edges(entry.plan.graph)
            if control:
                u, v = control[0]
                self._refuse(entry, f"site {u!r} is read into Python (control edge {u} ~> "
                                    f"{v}), so the structure may change with its value: the "
                                    "Python program runs every step")
        return result

    def _refuse(self, entry, reason):
        entry.refused = reason
        if isinstance(entry.plan, JitPlan):
            entry.plan.jit[entry.label] = f"not captured: {reason}"

    # ---- the captured step ---------------------------------------------------------------------
    def _jit_step(self, entry, model, guide, args, kwargs, site_scales):
        """This step from the captured graph (captured first when due), as (loss value,
        gradients, leaves); None when it must run eagerly instead."""
        if entry.step is None and entry.eager_steps < self.jit_warmup:
            return None
        tensors = _flatten_args(args, kwargs)
        if tensors is None or any([t.requires_grad for t in tensors]):
            self._refuse(entry, "an argument holds something other than tensors, numbers, "
                                "strings, lists and tuples, or a tensor argument requires "
                                "grad: the guard cannot see through it")
            return None
        if entry.step is None:
            return self._capture(entry, model, guide, args, kwargs, site_scales, tensors)
        leaves = self._current_leaves(entry)
        averages = self._baseline_inputs(entry)
        if leaves is None or averages is None:  # params or baselines changed: capture again
            entry.step, entry.eager_steps = None, 0
            return None
        scales = [_as_scale(site_scales[n]) for n in entry.scale_names]
        rng = torch.get_rng_state()
        with torch.no_grad():
            outputs = entry.step(*leaves, *tensors, *averages, *scales)
        if not outputs[-1]:  # the loss is not finite
            # Run this very step eagerly (same draws): it raises the error naming the term.
            torch.set_rng_state(rng)
            return None
        return self._finish(entry, outputs, leaves)

    def _finish(self, entry, outputs, leaves):
        self.last_plan = entry.plan
        self.last_params = dict(zip(entry.names, leaves))
        self._last_was_jit = True
        if entry.mode == "loss":
            return outputs[0], (), ()
        n_grads = sum(entry.grad_mask)
        averages = self.baselines.averages
        for (site, _), value in zip(entry.baselines, outputs[1 + n_grads:-1]):
            averages[site] = value
        grads = iter(outputs[1:1 + n_grads])
        return outputs[0], tuple(next(grads) if used else None for used in entry.grad_mask), \
            leaves

    def _capture(self, entry, model, guide, args, kwargs, site_scales, tensors):
        plan = entry.plan
        store = get_param_store()
        if any(n not in store for n in entry.names):
            return None
        leaves = tuple(dict(store.named_parameters())[n] for n in entry.names)
        entry.leaves = leaves
        entry.constraints = tuple(store.get_constraint(n) for n in entry.names)
        entry.shapes = tuple((tuple(leaf.shape), leaf.dtype) for leaf in leaves)
        averages = self.baselines.averages
        entry.baselines = () if entry.mode == "loss" else tuple(
            (s.site, None if s.site not in averages else tuple(averages[s.site].shape))
            for s in plan.scores if s.baseline is not None and s.baseline.kind == "decaying_avg")
        inputs = ([leaf.detach() for leaf in leaves] + list(tensors)
                  + [averages[site].detach() for site, shape in entry.baselines
                     if shape is not None]
                  + [_as_scale(site_scales[n]) for n in entry.scale_names])
        rng = torch.get_rng_state()
        try:
            graph, outputs = capture_step(self._step_function(entry, model, guide, args, kwargs,
                                                              len(tensors)),
                                          inputs, quiet=self.ignore_jit_warnings)
        except CaptureRefused as err:
            torch.set_rng_state(rng)
            self._refuse(entry, "; ".join((err.headline,) + err.facts))
            return None
        if not outputs[-1]:  # not finite: the eager step names the bad term
            torch.set_rng_state(rng)
            return None
        ops = count_ops(graph)
        if self.jit_backend == "inductor" and ops > self.jit_max_ops:
            # inductor compiles ~50 ops a second here: a 10,000-op step would take minutes,
            # and replaying it op by op ("fx") is no faster than the eager step
            self._refuse(entry, f"the step is {ops} aten ops, over jit_options max_ops="
                         f"{self.jit_max_ops}: compiling would take minutes; it runs eagerly "
                         "(raise max_ops to compile it anyway)")
            return self._finish(entry, fresh_outputs(types.SimpleNamespace(aliased=None),
                                                     inputs, outputs), entry.leaves)
        outputs = fresh_outputs(types.SimpleNamespace(aliased=None), inputs, outputs)
        entry.step = compile_captured(graph, inputs, self.jit_backend,
                                      quiet=self.ignore_jit_warnings)
        if isinstance(plan, JitPlan):
            plan.jit[entry.label] = _describe(entry, len(tensors))
        return self._finish(entry, outputs, leaves)

    def _step_function(self, entry, model, guide, args, kwargs, n_tensors):
        """The function captured: (leaves, argument tensors, baseline averages, site scales)
        -> (loss, gradients of the leaves that reach it, new baseline averages)."""
        grads = entry.mode == "step"
        n_leaves = len(entry.names)
        have_average = [site for site, shape in entry.baselines if shape is not None]
        plan, signature = entry.plan, args_signature(args, kwargs)
        run_model, run_guide = self._programs(model, guide)
        runs, num_particles = self._runs, self.num_particles
        baseline_class = type(self.baselines)

        def step(*flat):
            leaves = [leaf.requires_grad_() if grads else leaf for leaf in flat[:n_leaves]]
            rest = flat[n_leaves:]
            call_args, call_kwargs = _rebuild_args(args, kwargs, rest[:n_tensors])
            rest = rest[n_tensors:]
            baselines = baseline_class()
            baselines.averages = dict(zip(have_average, rest[:len(have_average)]))
            site_scales = dict(zip(entry.scale_names, rest[len(have_average):])) or None
            total = 0.0
            with _ParamInputs(dict(zip(entry.names, leaves))):
                for _ in range(runs):
                    guide_rec, model_rec = record(run_model, run_guide, call_args, call_kwargs)
                    if structure_key(guide_rec.sites, model_rec.sites, signature) != plan.key:
                        raise CaptureRefused("the structure changed between the eager step "
                                             "and the capture")
                    records = {"guide": guide_rec.sites, "model": model_rec.sites}
                    parts = run_plan(plan, records, baselines, with_surrogate=grads,
                                     site_scales=site_scales)
                    if grads:
                        baselines.commit()
                        total = total - (parts.elbo + (parts.surrogate
                                                       - parts.surrogate.detach()))
                    else:
                        total = total - parts.elbo
            loss = total / num_particles
            finite = torch.isfinite(loss.detach())  # checked each step, in the graph
            if not grads:
                return (loss.detach(), finite)
            found = torch.autograd.grad(loss, leaves, allow_unused=True) if leaves else ()
            entry.grad_mask = tuple(g is not None for g in found)
            return ((loss.detach(),) + tuple(g for g in found if g is not None)
                    + tuple(baselines.averages[site] for site, _ in entry.baselines) + (finite,))

        return step


def _describe(entry, n_tensors):
    step = entry.step
    what = "forward + backward" if entry.mode == "step" else "forward (loss only)"
    inputs = [f"{len(entry.names)} param(s)", f"{n_tensors} argument tensor(s)"]
    if entry.baselines:
        inputs.append(f"{len(entry.baselines)} baseline average(s)")
    if entry.scale_names:
        inputs.append(f"site_scales {', '.join(entry.scale_names)}")
    compiled = (f"inductor, compiled in {step.compile_seconds:.1f} s" if step.backend == "inductor"
                else "fx replay" + (f" ({step.note})" if step.note else ""))
    return f"captured {what}: {step.ops} aten ops; inputs {', '.join(inputs)}; {compiled}"


class JitTrace_ELBO(_JitELBO, Trace_ELBO):
    """``Trace_ELBO`` with each structure's whole step captured and compiled (see the module
    docstring): same estimates, same random draws, faster steps. Structures whose sites
    depend on values read into Python run eagerly."""

    loss_name = "JitTrace_ELBO"


class JitTraceGraph_ELBO(_JitELBO, TraceGraph_ELBO):
    """``TraceGraph_ELBO`` (Rao-Blackwellized score-function terms, baselines) with each
    structure's whole step captured and compiled; baseline averages are graph inputs and
    outputs, so they evolve exactly as in the eager objective."""

    loss_name = "JitTraceGraph_ELBO"


class JitTraceEnum_ELBO(_JitELBO, TraceEnum_ELBO):
    """``TraceEnum_ELBO`` with each structure's whole step, the exact sum-product over the
    enumerated sites included, captured and compiled."""

    loss_name = "JitTraceEnum_ELBO"
