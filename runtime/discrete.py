"""Forward filtering, backward sampling over a planned plated sum-product (``infer_discrete``).

The forward pass walks a ``ContractionPlan`` exactly as ``runtime.contract`` does, one
pairwise contraction at a time, in the log-sum-exp semiring (temperature 1) or the max-plus
semiring (temperature 0), and keeps, for every pairwise contraction that sums variables out,
the operands it took. As a function of the variables still live at that point, the sum of
those operands is the log of the unnormalized conditional of the variables it summed out
given every variable summed out after it (the subtree below holds the rest, already summed
or maximized). The backward pass visits those contractions in reverse, fixes the variables
already chosen at their values, and draws the summed ones jointly from the conditional
(Gumbel-max) or takes its argmax (Viterbi), once per slice of the plates of the step they
are local to: given the variables outside a plate, its slices are independent.

A contraction that sums several variables at once samples them jointly (the conditional is
over their product space), so no pairwise decomposition of opt_einsum's path is needed. The
memory kept is the forward pass's operands: linear in the length of a Markov chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import torch

from compiler.errors import EnumerationError
from runtime.contract import build_kernel, canonical_equation


class Choice(NamedTuple):
    """The chosen values of one enumerated variable: support indices over its plates.

    ``index`` is a long tensor with one dim per entry of ``plates`` (plate labels, in that
    order): the variable's value in each slice of the plates it is local to.
    """

    index: torch.Tensor
    plates: tuple


@dataclass
class _Kept:
    """One pairwise contraction that summed variables out: what the backward pass needs."""

    operands: list     # the log tensors it took, in equation order
    subscripts: list   # their einsum subscripts
    summed: str        # the symbols it summed out, in first-appearance order
    plates: tuple      # the symbols of the plates of its step, in step order


def choose(plan, tensors, temperature=1):
    """Draw (temperature 1) or maximize (temperature 0) every summed variable of ``plan``.

    Args:
        plan: a ContractionPlan that sums out ``plan.sum_vars`` and reduces every plate.
        tensors: log-factor tensors by factor name (or in the order of ``plan.inputs``).
        temperature: 1 samples from the exact posterior, 0 gives the MAP assignment.

    Returns:
        (choices, log_total): variable label -> Choice, and the forward pass's result: the
        log normalizer (temperature 1) or the log of the largest joint value (temperature 0).

    Time: the forward contractions plus, per summed contraction, O(plate slices x size of
    the summed variables' joint support). No gradients are taken.
    """
    if temperature not in (0, 1):
        raise ValueError(f"temperature must be 0 (MAP) or 1 (sample), got {temperature}")
    symbol_of = dict(plan.symbols)
    label_of = {s: label for label, s in plan.symbols}
    sizes = {symbol_of[label]: size for label, size in plan.sizes if label in symbol_of}
    with torch.no_grad():
        env = _bind(plan, tensors)
        kept = _forward(plan, env, sizes, symbol_of, maximize=temperature == 0)
        log_total = sum(env[name] for name, _ in plan.results)  # independent parts
        chosen = _backward(kept, sizes, temperature)
    choices = {label_of[s]: Choice(index, tuple(label_of[p] for p in plates))
               for s, (index, plates) in chosen.items()}
    for var in plan.sum_vars:  # a variable in no factor: its support has size 1
        if var not in choices:
            choices[var] = Choice(torch.zeros((), dtype=torch.long, device=log_total.device), ())
    return choices, log_total


# ---- forward ---------------------------------------------------------------------------------

def _bind(plan, tensors):
    if not isinstance(tensors, Mapping):
        tensors = dict(zip((p.name for p in plan.inputs), tensors))
    env = {}
    for spec in plan.inputs:
        tensor = tensors[spec.name]
        if tuple(tensor.shape) != spec.source_shape:
            raise EnumerationError(
                f"factor {spec.name!r} has shape {tuple(tensor.shape)}, planned "
                f"{spec.source_shape}", [f"dims {spec.dims}"],
                "replan the contraction for these shapes", site=spec.name)
        env[spec.name] = tensor.reshape(spec.view_shape).expand(spec.shape)
    return env


def _forward(plan, env, sizes, symbol_of, maximize):
    """Run every step, in place on ``env``; return the summing contractions' operands."""
    kept = []
    for step in plan.steps:
        if getattr(step, "scan", None) is not None:
            raise EnumerationError(
                f"contraction step {step.output} is a parallel scan, which keeps no per-step "
                "operands to sample from", [f"einsum {step.equation!r}"],
                "plan the contraction with scan=False for infer_discrete")
        operands = [env.pop(name) for name in step.inputs]
        plates = tuple(symbol_of[p] for p in step.ordinal)
        for op in step.ops:
            taken = [operands.pop(p) for p in sorted(op.positions, reverse=True)]
            inputs, out = op.equation.split("->")
            subscripts = inputs.split(",")
            summed = "".join(c for c in dict.fromkeys("".join(subscripts)) if c not in out)
            if summed:
                kept.append(_Kept(taken, subscripts, summed, plates))
            operands.append(_contract(op, subscripts, out, taken, sizes, maximize))
        (result,) = operands
        if step.reduce_plates:
            first = len(step.dims)
            result = result.sum(tuple(range(first, first + len(step.reduce_plates))))
        env[step.output] = result
    return kept


def _contract(op, subscripts, out, taken, sizes, maximize):
    if not maximize:
        shapes = tuple(tuple(sizes[c] for c in s) for s in subscripts)
        return build_kernel(canonical_equation(op.equation), shapes, op.kernel)(*taken)
    # max-plus: the joint of the two operands, maximized over the summed symbols
    joint = out + "".join(c for c in dict.fromkeys("".join(subscripts)) if c not in out)
    total = sum(_aligned(t, s, joint, sizes) for t, s in zip(taken, subscripts))
    total = total.expand(tuple(sizes[c] for c in joint))
    summed = tuple(range(len(out), len(joint)))
    return total.amax(summed) if summed else total


def _aligned(tensor, subs, target, sizes):
    """``tensor`` over ``subs`` permuted and viewed into ``target``'s layout (1 elsewhere)."""
    order = [c for c in target if c in subs]
    tensor = tensor.permute(tuple(subs.index(c) for c in order))
    return tensor.reshape(tuple(sizes[c] if c in subs else 1 for c in target))


# ---- backward --------------------------------------------------------------------------------

def _backward(kept, sizes, temperature):
    """symbol -> (index over the plates of its step, those plate symbols)."""
    chosen = {}
    for record in reversed(kept):
        plates, summed = record.plates, record.summed
        shape = tuple(sizes[c] for c in plates + tuple(summed))
        logits = sum(_condition(t, s, plates, summed, chosen, sizes)
                     for t, s in zip(record.operands, record.subscripts))
        logits = logits.expand(shape).reshape(shape[:len(plates)] + (-1,))
        if temperature == 1:
            logits = logits + _gumbel(logits)
        flat = logits.argmax(-1)
        for c in reversed(summed):  # unravel, last symbol fastest
            chosen[c] = (flat % sizes[c], plates)
            flat = torch.div(flat, sizes[c], rounding_mode="floor")
    return chosen


def _condition(tensor, subs, plates, summed, chosen, sizes):
    """``tensor`` with its chosen variables fixed, laid out over ``plates + summed``."""
    own_plates = [c for c in plates if c in subs]
    known = [c for c in subs if c in chosen]
    free = [c for c in summed if c in subs]
    stray = [c for c in subs if c not in plates and c not in chosen and c not in summed]
    if stray:
        raise EnumerationError(
            f"internal: symbols {stray} of a contraction are neither chosen, summed nor "
            "plates of its step", [f"operand {subs!r}; plates {plates}; summed {summed!r}"],
            "report this model to the svigraph developers")
    order = own_plates + known + free
    tensor = tensor.permute(tuple(subs.index(c) for c in order))
    if known:
        grids = []
        for i, c in enumerate(own_plates):
            view = [1] * len(own_plates)
            view[i] = sizes[c]
            grids.append(torch.arange(sizes[c], device=tensor.device).reshape(view))
        for c in known:
            index, index_plates = chosen[c]
            grids.append(_index_over(index, index_plates, own_plates, sizes))
        tensor = tensor[tuple(grids)]  # -> own plates (broadcast) + free
    target = tuple(plates) + tuple(summed)
    return _aligned(tensor, "".join(own_plates + free), target, sizes)


def _index_over(index, index_plates, plates, sizes):
    """A chosen index over ``index_plates`` viewed to broadcast over ``plates``."""
    missing = [p for p in index_plates if p not in plates]
    if missing:
        raise EnumerationError(
            f"internal: a variable chosen per slice of plates {missing} is read by a "
            "contraction outside them", [f"contraction plates {plates}"],
            "report this model to the svigraph developers")
    return _aligned(index, "".join(index_plates), "".join(plates), sizes)


def _gumbel(logits):
    tiny = torch.finfo(logits.dtype).tiny
    uniform = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device)
    return -torch.log(-torch.log(uniform.clamp_min(tiny)))

