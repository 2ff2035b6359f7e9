"""Printing a ContractionPlan: header, inputs, one line per step with its einsum, path, peak."""

from __future__ import annotations

from collections import Counter

_LONG = 12  # lists longer than this print their ends only


def format_contraction_plan(plan):
    """The plan as text: header, strategy and peak, inputs, one line per step with its
    einsum and path (or its scan), and its peak. Pure; O(size of the plan), with long lists,
    equations and paths shortened."""
    sizes = dict(plan.sizes)
    head = _shorten([f"{v}[{sizes[v]}]" for v in plan.sum_vars], "variables")
    lines = [f"contraction: logsumexp {' '.join(head) or '(nothing)'}; sum plates "
             f"{' '.join(f'{p}[{sizes[p]}]' for p in plan.plates) or '(none)'} "
             f"-> {_dims(plan.dims)}",
             f"  strategy: {plan.strategy}   peak {plan.peak_elements} elements"]
    symbols = dict(plan.symbols)
    if any(k != v for k, v in symbols.items()):
        legend = _shorten([f"{v}={k}" for k, v in symbols.items()], "symbols")
        lines.append("  symbols " + " ".join(legend))
    lines.append("  inputs")
    lines += ["    " + x for x in _shorten([f"{p.name} : {_dims(p.dims)}" for p in plan.inputs],
                                           "inputs")]
    lines.append("  steps")
    for step in plan.steps + ((plan.combine,) if plan.combine else ()):
        lines += _format_step(step)
    lines.append(f"  result {plan.result} : {_dims(plan.dims)}")
    return "\n".join(lines)


def _format_step(step):
    expr = " + ".join(_shorten(list(step.inputs), "operands", keep=3))
    if step.scan is not None:
        expr = f"scan[{_span(step.eliminate)}]({expr})"
    elif step.eliminate:
        expr = f"logsumexp[{','.join(_shorten(list(step.eliminate), 'variables', keep=3))}]({expr})"
    if step.reduce_plates:
        expr = f"sum[{','.join(step.reduce_plates)}]({expr})"
    head = f"    {step.output} : {_dims(step.dims)} = {expr}"
    if step.ordinal:
        head = f"{head:<63} in ({','.join(step.ordinal)})"
    if step.scan is not None:
        return [head, _format_scan(step.scan, step.peak_elements)]
    equation = step.equation if len(step.equation) <= 60 else (
        f"{step.equation[:50]}...  ({len(step.inputs)} operands)")
    path = list(step.path)
    path_text = str(path) if len(path) <= 4 else (
        f"[{', '.join(map(str, path[:3]))}, ...]  ({len(path)} contractions)")
    einsums = sum(op.kernel == "einsum" for op in step.ops)
    kernels = f"   {einsums} shifted einsum" if einsums else ""
    return [head, f'        einsum "{equation}"   path {path_text}   '
                  f"peak {step.peak_elements} elements{kernels}"]


def _dims(dims):
    return "[" + ",".join(dims) + "]"


def _format_scan(scan, peak):
    kernels = ", ".join(f"{n} {k}" for k, n in sorted(Counter(scan.rounds).items()))
    chain = f"{scan.chain[0]} -> {scan.chain[1]} -> ... -> {scan.chain[-1]}" \
        if scan.length > 3 else " -> ".join(scan.chain)
    return (f"        parallel scan over {chain}: {scan.length - 1} steps of "
            f"{len(scan.roles)} factor(s), K={scan.var_size}, batch {_dims(scan.batch)}; "
            f"{len(scan.rounds)} rounds ({kernels or 'none'})   peak {peak} elements; eager "
            f"steps first try scaled linear-space rounds, kept only where precise")


def _span(names):
    return ",".join(names) if len(names) <= 3 else f"{names[0]}..{names[-1]}"


def _shorten(items, what, keep=_LONG):
    if len(items) <= keep:
        return items
    return items[:keep - 2] + [f"...({len(items) - keep + 1} more {what})"] + items[-1:]
