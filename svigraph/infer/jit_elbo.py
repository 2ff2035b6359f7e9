"""JitTrace_ELBO, JitTraceGraph_ELBO, JitTraceEnum_ELBO: the compiled plan, captured whole.

The eager objectives run the Python model and guide every step and execute the plan on what
they recorded. The JIT variants go one step further: once a structure has run eagerly, the
next step is captured (``runtime.capture``) as one aten graph holding everything the step
computes: the guide's draws, every log-prob term, the surrogate, the baselines' update and
the backward pass. Later steps only gather the inputs (the params' unconstrained leaves, the
tensor arguments, the baselines' averages, per-call ``site_scales``) and run the compiled
graph; the Python model does not run at all. The weights of modules registered with
``sg.module`` (neural baselines inside them included) are params like any other: while
capturing, each module computes with the graph's input for its weight, and gets its own
Parameter back afterwards. A module never registered is refused (its weights would be
frozen into the graph as constants).

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

``jit_options``: ``{"backend": "inductor" | "fx" | "forward", "warmup": 1, "max_ops": 3_000}``.
"inductor" (default) compiles the graph to C++ kernels; "fx" replays the recorded aten calls
with no compile time. Inductor compiles 30-90 aten ops a second on the development machine,
so a step captured as more than ``max_ops`` ops is not compiled; instead (and always with
"forward") only its forward pass is captured, repeated pure work in it is merged
(``runtime.capture.simplify``: a Markov chain's loop recomputes the same transition
matrix and normalization every time step) and the result is replayed each step under
autograd, which computes the backward pass in C++. A forward capture is checked when made:
replayed on the same draws, it must give the eager step's loss, gradients and baseline
averages, else (a custom ``autograd.Function`` such as torch's Beta and Dirichlet samplers
use, whose gradient is not its aten operations') the structure runs eagerly and the plan says
why. An eager step of more than 4 x ``max_ops`` aten ops goes to the forward capture without
being captured whole first.
``warmup`` is the number of eager steps per structure before it is captured (at least 1: the
first creates the params and the plan). Pyro's ``check_trace`` is accepted and ignored.
``ignore_jit_warnings=True`` silences warnings raised while capturing and compiling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import weakref

import torch
from torch.distributions import constraints

from compiler.plan import Plan
from compiler.printing import format_plan
from runtime.capture import (BACKENDS, CapturedStep, CaptureRefused, PrecomputedGrads,
                             capture_step, compile_captured, count_aten_ops, count_ops,
                             fresh_outputs, simplify)
from runtime.executor import run_plan
from runtime.records import args_signature
from runtime.scan import log_space_rounds
from svigraph.effects import Messenger
from svigraph.infer.trace_elbo import Trace_ELBO, TraceGraph_ELBO
from svigraph.infer.traceenum_elbo import TraceEnum_ELBO
from svigraph.ops.provenance import parameters_lent
from svigraph.params import get_param_store, param_transform
from svigraph.recording import record, recorded_structure_key

_PYRO_JIT_OPTIONS = ("check_trace", "optimize")  # torch.jit.trace's; meaningless here
MAX_INDUCTOR_OPS = 3_000  # default jit_options max_ops: larger steps replay their forward pass
# An eager step of more than OVERSIZE * max_ops aten ops is sure to be over max_ops: it is
# not captured whole just to be measured (40,000 ops take half a minute), its forward pass is
# captured straight away.
OVERSIZE = 4


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
                 "constraints", "shapes", "baselines", "grad_mask", "scale_names", "forward",
                 "modules")

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
        self.forward = False   # capture the forward pass only (its whole step is too big)
        self.modules = ()      # ((module, name, its Parameter), ...) the capture lent inputs to

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
        msg["value"] = leaf if constraint is constraints.real else param_transform(constraint)(leaf)


def _same_module_parameters(modules):
    """Whether each module the capture lent inputs to still holds the same Parameter (a
    module given a new Parameter object computes with it eagerly: capture again)."""
    return all([owner._parameters.get(name) is own for owner, name, own in modules])


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
            if grads is None:  # a replayed forward pass: the loss carries its graph
                return value
            return PrecomputedGrads.apply(value, grads, *leaves)
        return self._eager(entry, "differentiable_loss", model, guide, args, kwargs, site_scales)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """As the eager objective's; from a capture, the gradients are accumulated into the
        leaves' ``.grad`` directly, with no autograd pass."""
        site_scales = kwargs.pop("site_scales", None)
        entry, out = self._captured_step(model, guide, args, kwargs, site_scales)
        if out is not None:
            value, grads, leaves = out
            if grads is None:  # a replayed forward pass: autograd computes the gradients
                value.backward()
                return float(value.detach())
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
        # the last step before the capture is counted: a step far over max_ops skips the
        # whole-step capture (minutes, for a big step) and replays its forward pass
        sizing = (self.jit_backend == "inductor" and entry.refused is None and entry.step is None
                  and not entry.forward and entry.eager_steps + 1 >= self.jit_warmup)
        try:
            with count_aten_ops() if sizing else contextlib.nullcontext() as counter:
                result = getattr(super(), method)(model, guide, *args, **kwargs)
        finally:
            self._in_eager = False
        if sizing and counter.ops > OVERSIZE * self.jit_max_ops:
            entry.forward = True
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
        if leaves is None or averages is None or not _same_module_parameters(entry.modules):
            # params, baselines or a module's Parameter changed: capture again
            entry.step, entry.eager_steps = None, 0
            return None
        scales = [_as_scale(site_scales[n]) for n in entry.scale_names]
        rng = torch.get_rng_state()
        if entry.step.backend == "forward":  # under autograd: its backward is torch's
            outputs = entry.step(*leaves, *tensors, *averages, *scales)
        else:
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
        averages = self.baselines.averages
        if entry.step is not None and entry.step.backend == "forward":
            for (site, _), value in zip(entry.baselines, outputs[1:-1]):
                averages[site] = value
            return outputs[0], None, leaves
        n_grads = sum(entry.grad_mask)
        for (site, _), value in zip(entry.baselines, outputs[1 + n_grads:-1]):
            averages[site] = value
        grads = iter(outputs[1:1 + n_grads])
        return outputs[0], tuple(next(grads) if used else None for used in entry.grad_mask), \
            leaves

    def _capture(self, entry, model, guide, args, kwargs, site_scales, tensors):
        if self.jit_backend == "forward" or entry.forward:
            return self._capture_forward(entry, model, guide, args, kwargs, site_scales,
                                         tensors)
        inputs = self._capture_inputs(entry, site_scales, tensors)
        if inputs is None:
            return None
        rng = torch.get_rng_state()
        recorded = self._record_graph(entry, self._step_function(
            entry, model, guide, args, kwargs, len(tensors)), inputs, rng)
        if recorded is None:
            return None
        graph, outputs = recorded
        if not outputs[-1]:  # not finite: the eager step names the bad term
            torch.set_rng_state(rng)
            return None
        ops = count_ops(graph)
        outputs = fresh_outputs(types.SimpleNamespace(aliased=None), inputs, outputs)
        if self.jit_backend == "inductor" and ops > self.jit_max_ops:
            # inductor compiles ~50 ops a second here: minutes for a step this size; from the
            # next step on, its forward pass is replayed instead (see _capture_forward)
            entry.forward = True
            return self._finish(entry, outputs, entry.leaves)
        entry.step = compile_captured(graph, inputs, self.jit_backend,
                                      quiet=self.ignore_jit_warnings)
        if isinstance(entry.plan, JitPlan):
            entry.plan.jit[entry.label] = _describe(entry, len(tensors))
        return self._finish(entry, outputs, entry.leaves)

    def _capture_forward(self, entry, model, guide, args, kwargs, site_scales, tensors):
        """Capture the step's forward pass, ``simplify`` it, and check that replaying it
        under autograd gives the eager step's loss and gradients (same draws); then this
        step's result is the replay's."""
        inputs = self._capture_inputs(entry, site_scales, tensors)
        if inputs is None:
            return None
        real = list(entry.leaves) + inputs[len(entry.leaves):]
        fn = self._step_function(entry, model, guide, args, kwargs, len(tensors), forward=True)
        rng = torch.get_rng_state()
        captured = self._record_graph(entry, fn, inputs, rng)
        if captured is None:
            return None
        graph = captured[0]
        recorded = count_ops(graph)
        simplify(graph)
        torch.set_rng_state(rng)
        with log_space_rounds():  # the capture's own arithmetic, so that the check is exact
            eager = fn(*real)
        torch.set_rng_state(rng)
        step = CapturedStep(graph, graph, "forward", count_ops(graph),
                            note=f"{recorded} recorded")
        replayed = step(*real)
        if not (eager[-1] and replayed[-1]):  # not finite: the eager step names the bad term
            torch.set_rng_state(rng)
            return None
        try:
            why = _replay_differs(eager, replayed,
                                  entry.leaves if torch.is_grad_enabled() else ())
        except RuntimeError as err:  # e.g. "derivative for aten::_sample_dirichlet is not
            why = f"its backward pass fails: {str(err).splitlines()[0]}"  # implemented"
        if why:
            torch.set_rng_state(rng)
            self._refuse(entry, f"its forward pass, replayed under autograd, does not give "
                                f"the eager step's results ({why}); the gradient of a custom "
                                "autograd.Function (as torch's Beta and Dirichlet samplers "
                                "use) is not its aten operations'")
            return None
        entry.step = step
        if isinstance(entry.plan, JitPlan):
            entry.plan.jit[entry.label] = _describe(entry, len(tensors))
        return self._finish(entry, replayed, entry.leaves)

    def _record_graph(self, entry, fn, inputs, rng):
        """``capture_step(fn, inputs)``, or None when it is refused: the guard then runs
        eagerly for good, from the random state ``rng`` it started in."""
        try:
            return capture_step(fn, inputs, quiet=self.ignore_jit_warnings)
        except CaptureRefused as err:
            torch.set_rng_state(rng)
            self._refuse(entry, "; ".join((err.headline,) + err.facts))
            return None

    def _capture_inputs(self, entry, site_scales, tensors):
        """The capture's inputs (params' leaves detached, argument tensors, baseline
        averages, site scales), recording in ``entry`` what later steps are checked
        against; None when a param is missing from the store."""
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
        return ([leaf.detach() for leaf in leaves] + list(tensors)
                + [averages[site].detach() for site, shape in entry.baselines
                   if shape is not None]
                + [_as_scale(site_scales[n]) for n in entry.scale_names])

    def _step_function(self, entry, model, guide, args, kwargs, n_tensors, forward=False):
        """The function captured: (leaves, argument tensors, baseline averages, site scales)
        -> (loss, gradients of the leaves that reach it, new baseline averages, finite).

        ``forward``: the forward pass alone, -> (loss, new baseline averages, finite), the
        loss keeping its graph: replayed under autograd, which computes the gradients."""
        train = entry.mode == "step"
        grads = train and not forward  # gradients inside the graph
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
            total = None
            with _ParamInputs(dict(zip(entry.names, leaves))), parameters_lent() as lent:
                for _ in range(runs):
                    guide_rec, model_rec = record(run_model, run_guide, call_args, call_kwargs)
                    if recorded_structure_key(guide_rec, model_rec, signature) != plan.key:
                        raise CaptureRefused("the structure changed between the eager step "
                                             "and the capture")
                    records = {"guide": guide_rec.sites, "model": model_rec.sites}
                    parts = run_plan(plan, records, baselines, with_surrogate=train,
                                     site_scales=site_scales)
                    if train:
                        baselines.commit()
                    loss = parts.loss(with_surrogate=train)
                    total = loss if total is None else total + loss
            entry.modules = tuple(lent)
            loss = total / num_particles
            finite = torch.isfinite(loss.detach())  # checked each step, in the graph
            averages = tuple(baselines.averages[site] for site, _ in entry.baselines) \
                if train else ()
            if forward:
                return (loss,) + averages + (finite,)
            if not grads:
                return (loss.detach(), finite)
            found = torch.autograd.grad(loss, leaves, allow_unused=True) if leaves else ()
            entry.grad_mask = tuple(g is not None for g in found)
            return ((loss.detach(),) + tuple(g for g in found if g is not None) + averages
                    + (finite,))

        return step


def _describe(entry, n_tensors):
    step = entry.step
    what = "forward + backward" if entry.mode == "step" else "forward (loss only)"
    inputs = [f"{len(entry.names)} param(s)", f"{n_tensors} argument tensor(s)"]
    if entry.baselines:
        inputs.append(f"{len(entry.baselines)} baseline average(s)")
    if entry.scale_names:
        inputs.append(f"site_scales {', '.join(entry.scale_names)}")
    if step.backend == "forward":
        return (f"captured the forward pass: {step.ops} aten ops after merging repeated work "
                f"({step.note}); inputs {', '.join(inputs)}; replayed under autograd")
    compiled = (f"inductor, compiled in {step.compile_seconds:.1f} s" if step.backend == "inductor"
                else "fx replay" + (f" ({step.note})" if step.note else ""))
    return f"captured {what}: {step.ops} aten ops; inputs {', '.join(inputs)}; {compiled}"


def _replay_differs(eager, replayed, leaves):
    """Why a replayed forward pass's outputs (and the leaves' gradients) are not the eager
    ones, or "" when they agree (to rounding: merged work may sum in another order)."""
    for i, (a, b) in enumerate(zip(eager[:-1], replayed[:-1])):
        if not _close(a.detach(), b.detach()):
            return "loss" if i == 0 else f"baseline average {i - 1}"
    if leaves and eager[0].requires_grad and replayed[0].requires_grad:
        found = torch.autograd.grad(eager[0], leaves, allow_unused=True)
        again = torch.autograd.grad(replayed[0], leaves, allow_unused=True, retain_graph=True)
        for i, (a, b) in enumerate(zip(found, again)):
            if (a is None) != (b is None) or (a is not None and not _close(a, b)):
                return f"gradient of param {i}"
    elif leaves and eager[0].requires_grad != replayed[0].requires_grad:
        return "gradient"
    return ""


def _close(a, b):
    scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-6 * scale)


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
