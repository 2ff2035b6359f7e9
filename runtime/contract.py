"""Execute a ContractionPlan on log-space factor tensors (the log-sum-exp semiring).

Every decision was made by ``compiler.enumeration.plan_contraction``: the steps, their
opt_einsum paths, and the kernel of each pairwise contraction. This module binds the tensors,
then walks each step's path, keeping every intermediate in log space so that long chains
neither underflow nor overflow:

* "broadcast" kernel (small joint index spaces): exact, ``logsumexp`` of the broadcast sum.
* "einsum" kernel (large ones): subtract each operand's max over the dims being summed, run
  the cached opt_einsum ``ContractExpression`` on ``exp``, take ``log`` and add the maxima
  back. The shifts are detached: the identity holds for any constant, so gradients are exact.

Kernels are built once per (equation, shapes, kernel) with symbols renamed canonically, so a
10,000-step chain of identical pairwise shapes shares one kernel; each plan's bound program
is cached beside it (weakly, by identity).
"""

from __future__ import annotations

import math
import weakref
from functools import lru_cache
from typing import Mapping

import opt_einsum
import torch

from compiler.errors import EnumerationError, ShapeMismatchError
from runtime.scan import finite_shift, log_of_product, run_scan

_PROGRAMS = weakref.WeakKeyDictionary()


def execute(plan, tensors, *, plate_scales=None, factor_scales=None, stacks=None):
    """The log of the plated sum-product, a tensor over ``plan.dims``.

    Args:
        plan: a ContractionPlan.
        tensors: the log-factor tensors: a mapping by factor name, or a sequence in the
            order of ``plan.inputs``. Masked entries should already be 0 (masks act inside
            every logsumexp).
        plate_scales: plate -> scale (``size / subsample_size`` for a subsampled plate). The
            product over a plate is estimated by the product over its slices to that power:
            in log space the sum over the plate's dim is multiplied by the scale, where the
            step reduces the plate, inside the logsumexp of every variable outside the plate.
        factor_scales: factor name -> a scale that no plate explains (``handlers.scale``).
            It multiplies the partial result its factor contributes to, outside every
            logsumexp; the factors of one result must share it.
        stacks: optional ``id(group) -> tensor`` for raw groups of the plan's scans: the
            group's factors already stacked, as the scan would stack them (rows of one
            ``runtime.stacked_terms`` stack). Those factors are then not in ``tensors``.

    What is computed: the plated sum-product with each subsampled plate's product replaced
    by that power. For variables local to a subsampled plate this is an unbiased estimate
    of the full-data log marginal (a scaled sum of independent per-slice terms). For a
    variable outside the plate whose factors are scaled inside its logsumexp, it is the
    usual biased but consistent estimate (exact when the subsample is the whole plate).

    Differentiable. Time: the plan's pairwise operations, each O(its joint index space).
    """
    program = _program(plan)
    specs = _specs_without(program, plan, stacks) if stacks else plan.inputs
    env = _run_steps(program, plan, _bind(plan, tensors, program["raw"], specs), plate_scales,
                     stacks)
    if factor_scales:
        _scale_results(plan, env, factor_scales)
    if plan.combine is None:
        return env[plan.result]
    return _run_step(plan.combine, program["combine"], env)


def execute_partial(plan, tensors, *, plate_scales=None, factor_scales=None):
    """The partial results, one tensor per ``plan.results`` entry, over that entry's dims.

    Summing each over all its dims and adding them gives the full log sum-product (when
    every plate is reduced); a result holding a kept plate is per slice of that plate.
    Scales as for ``execute``.
    """
    program = _program(plan)
    env = _run_steps(program, plan, _bind(plan, tensors, program["raw"]), plate_scales)
    if factor_scales:
        _scale_results(plan, env, factor_scales)
    return tuple(env[name] for name, _ in plan.results)


def _scale_results(plan, env, factor_scales):
    """Multiply each partial result by the scale its factors share; refuse mixed scales."""
    for (name, _), inputs in zip(plan.results, plan.result_inputs):
        scales = {n: _scalar_scale(n, factor_scales[n]) for n in inputs if n in factor_scales}
        if not scales:
            continue
        values = set(scales.values())
        if len(values) > 1 or len(scales) < len(inputs):
            unscaled = [n for n in inputs if n not in scales]
            shown = [f"{n} (scale {v:g})" for n, v in scales.items()][:4] + \
                [f"{n} (scale 1)" for n in unscaled][:2]
            raise EnumerationError(
                "factors summed over the same enumerated variables have different scales",
                [f"factors: {', '.join(shown)}",
                 "a scale that no subsampled plate explains multiplies the log of the whole "
                 "sum over those variables, so their factors must share it"],
                "apply handlers.scale around every site that reads those enumerated values "
                "(or around the whole model);\nsubsampled plates need no such care: their "
                "scale is applied per plate", site=next(iter(scales)).split(":", 1)[-1])
        (value,) = values
        env[name] = env[name] * value


def _scalar_scale(name, scale):
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise EnumerationError(
                f"factor {name!r} has a tensor scale of shape {tuple(scale.shape)} inside an "
                "enumerated contraction", ["only scalar scales can be applied outside the sum"],
                "use a scalar scale, or a mask (handlers.mask) for per-element weights of 0/1",
                site=name.split(":", 1)[-1], shapes={"scale": tuple(scale.shape)})
        return float(scale)
    return float(scale)


# ---- binding ---------------------------------------------------------------------------------

def _bind(plan, tensors, raw=frozenset(), specs=None):
    """name -> operand: each tensor reshaped (size-1 dims dropped) and expanded over the
    plates its factor broadcasts along, except those in ``raw`` (a scan lays them out once
    per stack). Checks the count and every shape. ``specs``: the inputs to bind (default
    all of ``plan.inputs``)."""
    if not isinstance(tensors, Mapping):
        tensors = list(tensors)
        if len(tensors) != len(plan.inputs):
            names = ", ".join(p.name for p in plan.inputs)
            raise ShapeMismatchError(
                f"this contraction takes {len(plan.inputs)} tensors ({names}) but received "
                f"{len(tensors)}", [], "pass one log-factor tensor per planned factor")
        tensors = {p.name: t for p, t in zip(plan.inputs, tensors)}
    env = {}
    for spec in plan.inputs if specs is None else specs:
        tensor = tensors.get(spec.name)
        if tensor is None:
            raise ShapeMismatchError(f"no tensor was given for factor {spec.name!r}",
                                     [f"given: {sorted(tensors)}"],
                                     "pass a tensor for every planned factor", site=spec.name)
        if tensor.shape != spec.source_shape:  # (a torch.Size equals a tuple of its sizes)
            raise ShapeMismatchError(
                f"factor {spec.name!r} has shape {tuple(tensor.shape)}, planned "
                f"{spec.source_shape}", [f"dims {spec.dims}"],
                "replan the contraction for these shapes", site=spec.name,
                shapes=(tuple(tensor.shape), spec.source_shape))
        if spec.name not in raw:
            if spec.view_shape != spec.source_shape:
                tensor = tensor.reshape(spec.view_shape)
            if spec.shape != spec.view_shape:
                tensor = tensor.expand(spec.shape)
        env[spec.name] = tensor
    return env


# ---- the step loop ---------------------------------------------------------------------------

def _run_steps(program, plan, env, plate_scales=None, stacks=None):
    for step, kernels in zip(plan.steps, program["steps"]):
        env[step.output] = _run_step(step, kernels, env, plate_scales, stacks)
    return env


def _run_step(step, kernels, env, plate_scales=None, stacks=None):
    """Walk the step's path (or run its scan), then take the product over the plates it
    leaves, each raised to its scale."""
    if stacks and step.scan is not None:  # factors stacked already were not bound
        operands = [env.pop(name, None) for name in step.inputs]
    else:
        operands = [env.pop(name) for name in step.inputs]
    try:
        if step.scan is not None:
            operands = [run_scan(step.scan, operands, stacks)]
        for positions, kernel in kernels:
            taken = [operands.pop(p) for p in positions]
            operands.append(kernel(*taken))
    except RuntimeError as err:
        raise RuntimeError(f"while executing contraction step {step.output} "
                           f"(einsum {step.equation!r}): {err}") from err
    (result,) = operands
    if step.reduce_plates:
        first = len(step.dims)
        result = result.sum(tuple(range(first, first + len(step.reduce_plates))))
        if plate_scales:
            scale = math.prod(plate_scales.get(p, 1.0) for p in step.reduce_plates)
            if scale != 1.0:
                result = result * scale
    return result


def _program(plan):
    """The plan's kernels, built once per plan: {"steps": [...], "combine": [...]}."""
    program = _PROGRAMS.get(plan)
    if program is None:
        label_sizes = dict(plan.sizes)
        sizes = {symbol: label_sizes[label] for label, symbol in plan.symbols}
        groups = list(raw_scan_groups(plan))  # (equal groups of two scans stay apart)
        program = {"steps": [_step_kernels(s, sizes) for s in plan.steps],
                   "combine": _step_kernels(plan.combine, sizes) if plan.combine else None,
                   "raw": frozenset(n for _, names in groups for n in names),
                   "groups": {id(group): names for group, names in groups},
                   "without": {}}
        _PROGRAMS[plan] = program
    return program


def raw_scan_groups(plan):
    """(group, names of its factors in step order) for every scan group that stacks its
    factors as given (``ScanGroup.raw``)."""
    for step in plan.steps:
        if step.scan is not None:
            for group in step.scan.init + tuple(g for role in step.scan.roles for g in role):
                if group.raw:
                    yield group, tuple(step.inputs[p] for p in group.positions)


def _specs_without(program, plan, stacks):
    """``plan.inputs`` less the factors of the groups in ``stacks`` (cached per key set)."""
    key = tuple(stacks)
    specs = program["without"].get(key)
    if specs is None:
        taken = {n for group in key for n in program["groups"][group]}
        specs = program["without"][key] = tuple(s for s in plan.inputs if s.name not in taken)
    return specs


def _step_kernels(step, sizes):
    """(positions in pop order, kernel) per pairwise op of ``step``."""
    out = []
    for op in step.ops:
        equation = canonical_equation(op.equation)
        inputs = op.equation.split("->")[0].split(",")
        shapes = tuple(tuple(sizes[c] for c in s) for s in inputs)
        out.append((tuple(sorted(op.positions, reverse=True)),
                    build_kernel(equation, shapes, op.kernel)))
    return out


# ---- kernels ---------------------------------------------------------------------------------

def canonical_equation(equation):
    """Rename an einsum's symbols in order of first appearance ("bc,c->b" -> "ab,b->a")."""
    names = {}
    for c in equation:
        if c not in ",->" and c not in names:
            names[c] = opt_einsum.get_symbol(len(names))
    return "".join(names.get(c, c) for c in equation)


@lru_cache(maxsize=4096)
def build_kernel(equation, shapes, kernel):
    """A function of the operands' log tensors computing the log of the einsum.

    Cached per (equation, shapes, kernel). ``kernel`` is "broadcast" or "einsum".
    """
    inputs, out = equation.split("->")
    inputs = inputs.split(",")
    size = {c: n for s, shape in zip(inputs, shapes) for c, n in zip(s, shape)}
    if kernel == "broadcast":
        return _broadcast_kernel(inputs, out, size)
    return _einsum_kernel(equation, inputs, out, size, shapes)


def _align(subs, target, size):
    """(permutation, view shape) placing a tensor over ``subs`` into ``target``'s layout."""
    perm = tuple(subs.index(c) for c in target if c in subs)
    view = tuple(size[c] if c in subs else 1 for c in target)
    return perm, view


def _lean_align(subs, target, size):
    """``_align`` with None for a permutation that keeps the order and a view that keeps
    the shape: those ops (and their autograd nodes) are skipped."""
    perm, view = _align(subs, target, size)
    kept = tuple(size[subs[p]] for p in perm)
    return (None if perm == tuple(range(len(perm))) else perm,
            None if view == kept else view)


def _broadcast_kernel(inputs, out, size):
    """Exact: logsumexp over the summed dims of the broadcast sum of the operands."""
    # The operands' own order (of first appearance) needs no permute of the first operand
    # and often of none; the result, smaller, is permuted to ``out`` when it must be.
    joint = "".join(dict.fromkeys("".join(inputs) + out))
    aligns = [_lean_align(s, joint, size) for s in inputs]
    summed = tuple(i for i, c in enumerate(joint) if c not in out)
    kept = [c for c in joint if c in out]
    final = tuple(kept.index(c) for c in out)
    final = None if final == tuple(range(len(final))) else final

    def run(*tensors):
        total = None
        for tensor, (perm, view) in zip(tensors, aligns):
            term = tensor if perm is None else tensor.permute(perm)
            term = term if view is None else term.reshape(view)
            total = term if total is None else total + term
        if summed:
            total = torch.logsumexp(total, summed)
        return total if final is None else total.permute(final)

    return run


def _einsum_kernel(equation, inputs, out, size, shapes):
    """Max-shifted: log(einsum(exp(x - max))) + max, the max over each operand's summed dims."""
    expression = opt_einsum.contract_expression(equation, *shapes)
    specs = []
    for s in inputs:
        axes = tuple(i for i, c in enumerate(s) if c not in out)
        kept = "".join(c for c in s if c in out)
        specs.append((axes, tuple(size[c] for c in kept), _align(kept, out, size)))

    def run(*tensors):
        exps, shift = [], 0
        for tensor, (axes, kept_shape, (perm, view)) in zip(tensors, specs):
            peak = tensor.detach()
            if axes:
                peak = peak.amax(dim=axes, keepdim=True)
            peak = finite_shift(peak)
            exps.append(torch.exp(tensor - peak))
            shift = shift + peak.reshape(kept_shape).permute(perm).reshape(view)
        return log_of_product(expression(*exps)) + shift

    return run
