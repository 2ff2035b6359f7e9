"""The ELBO base class: record a step, find (or compile) its plan, execute it.

Each step runs the guide and the model once with a lean recording handler, computes the
structure key of what ran, and looks the plan up by it. A new structure (sites appearing
with a sampled value, new shapes) is traced again with provenance, by replaying this very
step's values, and compiled; the step then runs on the new plan. So no step is ever
estimated with a plan compiled for a different structure.

Validation: a plan's first step runs with torch's distribution argument and support checks
on. Later steps on a validated plan run with them off (they cost more than the arithmetic on
small models), except that observed values are still checked against their support (once
per unchanged data tensor, their shape every step), and every ``RECHECK_EVERY``-th step
runs fully checked. Whenever an unchecked step
fails (an exception, a non-finite loss) or lands on a plan not validated yet, it is replayed
from the same random state with the checks on, so errors are exactly those of a validated
step.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import weakref

import torch

from compiler import PlanCache, compile_plan
from compiler.baselines import baseline_specs
from compiler.errors import NonFiniteLossError
from runtime.baselines import BaselineState
from runtime.executor import (carry_contraction, check_finite, plan_contraction_now,
                              run_plan)
from runtime.records import args_signature
from runtime.terms import broadcast_shape
from compiler.baselines import PARTICLE_PLATE
from svigraph.params import get_param_store
from svigraph.primitives import _Factor, plate
from svigraph.recording import record, recorded_structure_key, torch_checks
from svigraph.tensor_memo import UnchangedTensorMemo
from svigraph.tracing import trace_graph

log = logging.getLogger("svigraph.compiler")
_DEBUG = int(os.environ.get("SVIGRAPH_DEBUG", "0") or 0)


def raise_if_params_not_finite(err):
    """A nan/inf param makes torch refuse to build a distribution: say which param."""
    bad = [name for name, value in get_param_store().items()
           if not bool(torch.isfinite(value.detach()).all())]
    if bad:
        raise NonFiniteLossError(
            f"param {bad[0]!r} is not finite, so a distribution built from it was refused",
            [f"non-finite params: {', '.join(bad)}", f"torch said: {str(err).splitlines()[0]}"],
            "an earlier step diverged: lower the learning rate or clip gradients, e.g.\n"
            'sg.optim.Adam({"lr": 1e-3}, clip_args={"clip_norm": 10.0}), and restart from a '
            "checkpoint", site=bad[0]) from err


# Every this many particles one runs with torch's checks on even on a validated plan: a
# safety net for arguments that drift out of their constraints while the loss stays finite.
RECHECK_EVERY = 100


class gc_paused:
    """Python's cyclic garbage collector off while a step records and executes, restored
    on exit. A step allocates container objects for every site (messages, distributions),
    all freed by reference counting when it ends; at tens of thousands of sites the
    collector's repeated scans of the growing live set cost a quarter of the step (HMM,
    T=10,000: 3.5 s -> 2.6 s). Reference cycles made during the step are collected later."""

    __slots__ = ("was_enabled",)

    def __enter__(self):
        self.was_enabled = gc.isenabled()
        gc.disable()
        return self

    def __exit__(self, *exc):
        if self.was_enabled:
            gc.enable()


class _Unvalidated(Exception):
    """An unchecked step landed on a plan whose first step has not run checked yet."""


def check_observed_support(model_sites):
    """torch's sample check (shape and support) on every observed value: data may change
    from step to step under one plan, so it is checked even when nothing else is.

    Raises:
        ValueError: as torch's ``log_prob`` with validation would (the step is then replayed
            with checks on, which reports it as a ``SupportError`` naming the site).
    """
    for site in model_sites.values():
        if site["is_observed"]:
            fn = site["fn"]
            cls = fn.__class__
            if cls is _Factor:
                continue
            real = _REAL_SUPPORT.get(cls)
            if real is None:
                real = _REAL_SUPPORT[cls] = getattr(cls, "support", None) is _REAL
            if real:
                # every float is in the real line but nan, and a nan observation makes the
                # loss nan, which replays the step with checks on (naming the site): only
                # the shape needs checking here, which costs no tensor operation
                value = site["value"]
                if (value.__class__, getattr(value, "shape", None), fn._batch_shape,
                        fn._event_shape) not in _SHAPES_CHECKED:
                    _check_sample_shape(fn, value)
            elif _support_checked_before(fn, site["value"]):
                _check_sample_shape(fn, site["value"])  # its values passed already
            else:
                fn._validate_sample(site["value"])
                _remember_support_check(fn, site["value"])


_REAL = torch.distributions.constraints.real
_REAL_SUPPORT = {}  # distribution class -> whether its support is the (fixed) real line


# (value type, value shape, batch shape, event shape) that passed ``_check_sample_shape``
_SHAPES_CHECKED = set()

# Observed values whose support check passed, with their support's key. Data is usually the
# same tensor every step; a hit skips the elementwise check (four tensor ops and a sync) and
# keeps the shape check. Changed data is checked again (see ``UnchangedTensorMemo``).
_CHECKED_DATA = UnchangedTensorMemo(max_size=256)


def _support_key(fn):
    """A hashable stand-in for ``fn.support``, or None when the support depends on tensors
    (bounds that may change): such values are checked every step."""
    return _constraint_key(fn.support)


def _constraint_key(constraint):
    kind = type(constraint)
    if kind is _INTEGER_INTERVAL:
        bounds = (constraint.lower_bound, constraint.upper_bound)
        return (kind, *bounds) if all(type(b) is int for b in bounds) else None
    if kind is _INDEPENDENT:
        base = _constraint_key(constraint.base_constraint)
        return None if base is None else (kind, base, constraint.reinterpreted_batch_ndims)
    return constraint if constraint in _PARAMETER_FREE else None


def _support_checked_before(fn, value):
    """Whether ``value``, unchanged, passed the check of this support before."""
    key = _CHECKED_DATA.get(value)
    return key is not None and key == _support_key(fn)


def _remember_support_check(fn, value):
    key = _support_key(fn)
    if key is not None and isinstance(value, torch.Tensor):
        _CHECKED_DATA.put(value, key)


_INTEGER_INTERVAL = type(torch.distributions.constraints.integer_interval(0, 1))
_INDEPENDENT = type(torch.distributions.constraints.independent(_REAL, 1))
_PARAMETER_FREE = frozenset(
    c for c in vars(torch.distributions.constraints).values()
    if isinstance(c, torch.distributions.constraints.Constraint))


def _check_sample_shape(fn, value):
    """The shape half of torch's ``_validate_sample``, raising as it does."""
    if not isinstance(value, torch.Tensor):
        raise ValueError("The value argument to log_prob must be a Tensor")
    shape, event = value.shape, fn.event_shape
    if shape[len(shape) - len(event):] != event:
        raise ValueError(f"The right-most size of value must match event_shape: {shape} vs "
                         f"{event}.")
    expected = fn.batch_shape + event
    if broadcast_shape(tuple(shape), tuple(expected)) is None:
        raise ValueError(f"Value is not broadcastable with batch_shape+event_shape: "
                         f"{shape} vs {expected}.")
    if len(_SHAPES_CHECKED) >= 4096:  # bounded: shapes seen
        _SHAPES_CHECKED.clear()
    _SHAPES_CHECKED.add((value.__class__, shape, fn._batch_shape, fn._event_shape))


class _PlanRunner:
    """What a Plan delegates execution to: its objective, model and guide."""

    def __init__(self, elbo, model, guide):
        self.elbo, self.model, self.guide = elbo, model, guide

    def loss(self, *args, **kwargs):
        return self.elbo.loss(self.model, self.guide, *args, **kwargs)

    def differentiable_loss(self, *args, **kwargs):
        return self.elbo.differentiable_loss(self.model, self.guide, *args, **kwargs)

    def loss_and_grads(self, *args, **kwargs):
        return self.elbo.loss_and_grads(self.model, self.guide, *args, **kwargs)


class ELBO:
    """Base of the ELBO objectives.

    Args:
        num_particles: samples averaged per estimate.
        max_plate_nesting: the most nested plates in the model (needed for enumeration).
        vectorize_particles: draw particles in one vectorized pass (not yet supported).
        strict_enumeration_warning, retain_graph: as in Pyro's ELBOs.
    """

    loss_name = "ELBO"
    downstream_only = False

    def __init__(self, num_particles=1, max_plate_nesting=float("inf"), max_iarange_nesting=None,
                 vectorize_particles=False, strict_enumeration_warning=True,
                 ignore_jit_warnings=False, jit_options=None, retain_graph=None,
                 tail_adaptive_beta=-1.0):
        if int(num_particles) != num_particles or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer, got {num_particles}")
        if vectorize_particles and max_plate_nesting == float("inf") and max_iarange_nesting is None:
            raise ValueError(
                "vectorize_particles=True needs max_plate_nesting: the particle dim is placed "
                "left of every plate; e.g. TraceGraph_ELBO(num_particles=8, "
                "vectorize_particles=True, max_plate_nesting=1)")
        self.num_particles = int(num_particles)
        self.max_plate_nesting = max_plate_nesting if max_iarange_nesting is None \
            else max_iarange_nesting
        self.vectorize_particles = vectorize_particles
        self.strict_enumeration_warning = strict_enumeration_warning
        self.retain_graph = retain_graph
        self._caches = weakref.WeakKeyDictionary()  # guide -> {model: PlanCache}
        self.baselines = BaselineState()
        self.last_plan = None
        self.last_params = {}
        self.step_count = 0
        self._validated = weakref.WeakSet()  # plans whose first step ran with torch's checks
        self._unchecked = 0  # particles run unchecked since the last checked one

    # ---- options shown in the printed plan --------------------------------------------
    def options(self):
        opts = (("num_particles", self.num_particles),)
        if self.vectorize_particles:
            opts += (("vectorize_particles", True), ("max_plate_nesting", self.max_plate_nesting))
        return opts

    def _programs(self, model, guide):
        """The model and guide as run: inside a particle plate when vectorizing."""
        if not self.vectorize_particles:
            return model, guide
        size, dim = self.num_particles, -int(self.max_plate_nesting) - 1

        def in_particle_plate(fn):
            def run(*args, **kwargs):
                with plate(PARTICLE_PLATE, size, dim=dim):
                    return fn(*args, **kwargs)
            return run

        return in_particle_plate(model), in_particle_plate(guide)

    @property
    def _runs(self):
        """Runs of model and guide per estimate: one when particles are vectorized."""
        return 1 if self.vectorize_particles else self.num_particles

    # ---- plans -------------------------------------------------------------------------
    def _cache(self, model, guide):
        last = self.__dict__.get("_last_cache")  # the pair of the previous step, usually
        if last is not None and last[0]() is model and last[1]() is guide:
            return last[2]
        try:
            cache = self._caches.setdefault(guide, weakref.WeakKeyDictionary()) \
                .setdefault(model, PlanCache())
            self._last_cache = (weakref.ref(model), weakref.ref(guide), cache)
            return cache
        except TypeError:  # not weak-referenceable: keep a strong reference
            strong = self.__dict__.setdefault("_strong_caches", {})
            return strong.setdefault((id(model), id(guide)), PlanCache())

    def compile(self, model, guide, *args, **kwargs):
        """Trace once and return the Plan for this model, guide and arguments."""
        kwargs.pop("site_scales", None)
        with gc_paused():  # tracing allocates per site too
            run_model, run_guide = self._programs(model, guide)
            guide_rec, model_rec = record(run_model, run_guide, args, kwargs)
            return self._plan_for(model, guide, args, kwargs, guide_rec, model_rec)

    def _plan_for(self, model, guide, args, kwargs, guide_rec, model_rec):
        """The cached plan for this run's structure, compiled if new. ``model`` and ``guide``
        are the user's functions (the cache's keys); tracing runs them as ``_programs``."""
        key = recorded_structure_key(guide_rec, model_rec, args_signature(args, kwargs))
        cache = self._cache(model, guide)
        plan = cache.get(key)
        if plan is None:
            why = cache.explain_miss(key)
            run_model, run_guide = self._programs(model, guide)
            traced = trace_graph(run_model, run_guide, args, kwargs,
                                 replay_guide=guide_rec.replay_trace())
            plan = self._compile_graph(traced.graph, key)
            plan = dataclasses.replace(plan, runner=_PlanRunner(self, model, guide))
            # the contraction is planned now, from this run's shapes, so that the plan
            # shows it (and bad plate structures fail at compile time)
            contraction = plan_contraction_now(
                plan, {"guide": guide_rec.sites, "model": model_rec.sites})
            if contraction is not None:
                planned = dataclasses.replace(plan, contraction=contraction)
                carry_contraction(plan, planned)
                plan = planned
            cache.put(key, plan)
            log.info("compiled plan %s (%s)", plan.key_hash, why)
            if _DEBUG:
                print(f"[svigraph] compiled plan {plan.key_hash}: {why}\n{plan}")
        self.last_plan = plan
        return plan

    def _compile_graph(self, graph, key):
        return compile_plan(graph, loss_name=self.loss_name, options=self.options(), key=key,
                            downstream_only=self.downstream_only, baselines=baseline_specs)

    # ---- execution ---------------------------------------------------------------------
    def _particle(self, model, guide, args, kwargs, with_surrogate=True, site_scales=None):
        """One particle's ``LossParts``: with torch's checks off on a validated plan, else on
        (see the module docstring); a failed unchecked step is replayed checked."""
        plan = self.last_plan
        if plan is None or plan not in self._validated or self._unchecked >= RECHECK_EVERY:
            self._unchecked = 0
            return self._run_particle(model, guide, args, kwargs, with_surrogate, site_scales,
                                      validate=True)
        self._unchecked += 1
        rng = torch.get_rng_state()
        try:
            return self._run_particle(model, guide, args, kwargs, with_surrogate, site_scales,
                                      validate=False)
        except Exception:  # noqa: BLE001 - replayed with checks on, which raises the real error
            self.baselines.discard()
            torch.set_rng_state(rng)
            self._restart_particle()
            return self._run_particle(model, guide, args, kwargs, with_surrogate, site_scales,
                                      validate=True)

    def _restart_particle(self):
        """Reset per-run handler state before a particle is replayed with checks on."""
        chooser = getattr(self, "_chooser", None)  # TraceEnum_ELBO's sequential enumeration
        if chooser is not None:
            chooser.start(chooser.assignment)

    def _run_particle(self, model, guide, args, kwargs, with_surrogate, site_scales, validate):
        run_model, run_guide = self._programs(model, guide)
        with torch_checks(validate):
            try:
                guide_rec, model_rec = record(run_model, run_guide, args, kwargs)
            except ValueError as err:
                raise_if_params_not_finite(err)
                raise
            plan = self._plan_for(model, guide, args, kwargs, guide_rec, model_rec)
            if not validate:
                if plan not in self._validated:
                    raise _Unvalidated(plan.key_hash)
                check_observed_support(model_rec.sites)
            records = {"guide": guide_rec.sites, "model": model_rec.sites}
            parts = run_plan(plan, records, self.baselines, with_surrogate=with_surrogate,
                             site_scales=site_scales)
        try:
            check_finite(plan, parts, self.step_count)
        except NonFiniteLossError:
            self.baselines.discard()  # a rejected step leaves no trace in the state
            raise
        if with_surrogate:
            self.baselines.commit()
        else:
            self.baselines.discard()
        if validate:
            self._validated.add(plan)
        self.last_params.update(guide_rec.params)
        self.last_params.update(model_rec.params)
        return parts

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """A tensor whose value is the −ELBO estimate and whose gradient is an unbiased
        estimate of −∇ELBO (the surrogate rides along at zero value).

        ``site_scales={"z": 0.2}`` (a reserved keyword, not passed to the model) multiplies
        site z's model and guide terms for this call only: KL annealing without recompiling.
        """
        site_scales = kwargs.pop("site_scales", None)
        self.last_params = {}
        total = parts = None
        with gc_paused():
            for _ in range(self._runs):
                parts = self._particle(model, guide, args, kwargs, site_scales=site_scales)
                total = parts.loss() if total is None else total + parts.loss()
            # one particle: its loss's float, read by the finite check, is the step's loss
            # value (a weak reference: the step's autograd graph is not kept alive by this)
            last = (weakref.ref(total), parts.loss_value) \
                if self.num_particles == 1 and total is parts.loss() else None
            # the step's records and terms go now, while the collector is off: the
            # collection its re-enabling triggers then scans only what outlives the step
            # (at T=1,000 HMM sites, 7 ms a step otherwise)
            del parts
        self.step_count += 1
        self._last_value = last
        return total if self.num_particles == 1 else total / self.num_particles

    def loss_value(self, loss):
        """``float(loss)`` for a tensor ``differentiable_loss`` returned: the value read by
        the last step's finite check when ``loss`` is that step's, without another sync."""
        last = self.__dict__.get("_last_value")
        if last is not None and last[0]() is loss and last[1] is not None:
            return last[1]
        return float(loss.detach())

    def loss(self, model, guide, *args, **kwargs):
        """The −ELBO estimate, a float (no gradients are computed)."""
        site_scales = kwargs.pop("site_scales", None)
        with torch.no_grad(), gc_paused():
            total = 0.0
            for _ in range(self._runs):
                total -= float(self._particle(model, guide, args, kwargs, False, site_scales).elbo)
        return total / self.num_particles

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """The −ELBO estimate as a float, with ``backward()`` done on the surrogate loss."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return float(loss.detach())

    def param_leaves(self):
        """The unconstrained leaves of the params the last step used."""
        leaves = []
        for value in self.last_params.values():
            leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
            if leaf is not None and leaf.requires_grad:
                leaves.append(leaf)
        return leaves

    def __call__(self, model, guide, *args, **kwargs):
        return self.differentiable_loss(model, guide, *args, **kwargs)
