"""Plan a parallel-scan contraction of a homogeneous Markov chain inside one elimination step.

A component of factors whose summed variables form a path x_0 - x_1 - ... - x_{T-1} (every
factor reads at most two consecutive chain variables) is a product of T - 1 step matrices
``M_t[x_{t-1}, x_t] = sum of the factors of step t`` (log space) and an initial vector from
the factors of x_0 alone. When every step has the same factors up to renaming (same
layouts and sizes: "homogeneous"), the runtime stacks them into one ``(T-1, *batch, K, K)``
tensor and multiplies adjacent pairs in log space, halving the stack each round: ceil(log2 T)
rounds of batched log-matmuls instead of T sequential pairwise contractions. The other dims
of the factors (plates of the step, variables summed further out) are batch dims.

Everything here is decided at compile time; ``runtime.scan`` executes a ``ScanSpec``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

# Chains shorter than this are left to sequential elimination when the planner chooses.
SCAN_MIN_LENGTH = 32


@dataclass(frozen=True)
class ScanGroup:
    """Operands of one role that share a layout, stacked together.

    Attributes:
        positions: indices into the step's inputs, one per stacked step.
        steps: the step index (t - 1 for step t, or 0 for the initial vector) of each.
        raw: the operands are factors, passed to the scan as given (unbound): stacked, they
            are reshaped from ``source_shape`` to ``view_shape`` and expanded to
            ``bound_shape`` once for the whole group. Otherwise they arrive bound.
        perm: permutes a bound operand's dims into canonical order (batch, prev, cur).
        shape: the canonical shape, 1 where the operand lacks a dim.
    """

    positions: tuple
    steps: tuple
    raw: bool
    source_shape: tuple
    view_shape: tuple
    bound_shape: tuple
    perm: tuple
    shape: tuple


@dataclass(frozen=True)
class ScanSpec:
    """A homogeneous chain contracted by a parallel scan (see the module docstring).

    Attributes:
        chain: the summed variables in chain order, x_0 first.
        var_size: K, the size of every chain variable.
        batch: labels of the batch dims, in the step's output order; ``batch_shape`` sizes.
        init: groups of the factors of x_0 alone (shape ``(*batch, K)``), maybe empty.
        roles: per role, its groups; every step has one factor of each role.
        rounds: the kernel of each halving round, "broadcast" (exact logsumexp of a
            broadcast sum) or "matmul" (max-shifted exp, matmul, log).
        tail_kernel: the kernel multiplying in the odd leftovers of the rounds.
        peak_elements: the largest tensor the scan materializes.
    """

    chain: tuple
    var_size: int
    batch: tuple
    batch_shape: tuple
    init: tuple
    roles: tuple
    rounds: tuple
    tail_kernel: str
    peak_elements: int

    @property
    def length(self):
        return len(self.chain)


def plan_scan(operands, local, out_dims, sizes, broadcast_limit, min_length, inputs):
    """A ScanSpec for a component whose local variables form a homogeneous chain, else None.

    Args:
        operands: the component's operands (``.dims`` labels), in the step's input order.
        local: the variables summed out in this step.
        out_dims: the step's einsum output dims (batch dims of the scan).
        sizes: label -> size.
        min_length: the shortest chain worth a scan.
        inputs: factor name -> its PlanInput (how its tensor is laid out).

    Time: O(total dims of the operands).
    """
    chain_vars = [d for d in dict.fromkeys(d for op in operands for d in op.dims) if d in local]
    if len(chain_vars) < max(2, min_length):
        return None
    if len({sizes[v] for v in chain_vars}) != 1:
        return None
    if any(d not in local and d not in out_dims for op in operands for d in op.dims):
        return None
    order = _path_order(operands, local, chain_vars)
    if order is None:
        return None
    for chain in (order, order[::-1]):
        steps = _assign_steps(operands, local, chain)
        if steps is not None:
            return _spec(operands, chain, steps, out_dims, sizes, broadcast_limit, inputs)
    return None


def _path_order(operands, local, chain_vars):
    """The chain variables in path order, or None when they do not form a simple path."""
    neighbours = defaultdict(set)
    for op in operands:
        mine = [d for d in op.dims if d in local]
        if len(mine) > 2:
            return None
        if len(mine) == 2:
            a, b = mine
            neighbours[a].add(b)
            neighbours[b].add(a)
    if any(len(n) > 2 for n in neighbours.values()):
        return None
    ends = [v for v in chain_vars if len(neighbours[v]) == 1]
    if len(ends) != 2:
        return None
    order, previous = [ends[0]], None
    while len(order) < len(chain_vars):
        nxt = [n for n in neighbours[order[-1]] if n != previous]
        if len(nxt) != 1:
            return None
        previous = order[-1]
        order.append(nxt[0])
    return tuple(order) if len(set(order)) == len(chain_vars) else None


def _signature(op, local, roles):
    """What a factor reads, up to renaming the chain variables: (role or label) per dim."""
    return tuple(sorted(roles.get(d, d) for d in op.dims))


def _assign_steps(operands, local, chain):
    """[(signature, position) sorted] per step 0..T-1, or None when steps differ."""
    index = {v: t for t, v in enumerate(chain)}
    steps = [[] for _ in chain]
    for pos, op in enumerate(operands):
        ts = sorted(index[d] for d in op.dims if d in local)
        if len(ts) == 2 and ts[1] != ts[0] + 1:
            return None
        t = ts[-1]
        roles = {chain[t]: "\0cur"}
        if t > 0:
            roles[chain[t - 1]] = "\0prev"
        steps[t].append((_signature(op, local, roles), pos))
    for s in steps:
        s.sort()
    pattern = [sig for sig, _ in steps[1]]
    if any([sig for sig, _ in s] != pattern for s in steps[2:]):
        return None
    return steps


def _spec(operands, chain, steps, out_dims, sizes, limit, inputs):
    K = sizes[chain[0]]
    batch_shape = tuple(sizes[d] for d in out_dims)
    init = _groups(operands, [(0, pos) for _, pos in steps[0]], chain, out_dims, sizes,
                   inputs, with_prev=False)
    roles = []
    for r in range(len(steps[1])):
        members = [(t - 1, s[r][1]) for t, s in enumerate(steps) if t > 0]
        roles.append(_groups(operands, members, chain, out_dims, sizes, inputs,
                             with_prev=True))
    batch = math.prod(batch_shape)
    rounds, n, peak = [], len(chain) - 1, (len(chain) - 1) * batch * K * K
    while n > 1:
        pairs = n // 2
        joint = pairs * batch * K ** 3
        kernel = "broadcast" if joint <= limit else "matmul"
        rounds.append(kernel)
        peak = max(peak, joint if kernel == "broadcast" else 3 * pairs * batch * K * K)
        n = pairs + 0  # leftovers are set aside and multiplied in at the end
    tail = "broadcast" if batch * K ** 3 <= limit else "matmul"
    return ScanSpec(tuple(chain), K, tuple(out_dims), batch_shape, tuple(init), tuple(roles),
                    tuple(rounds), tail, peak)


def _groups(operands, members, chain, out_dims, sizes, inputs, with_prev):
    """Group the (step, position) members of one role by their layout."""
    canonical = list(out_dims) + (["\0prev"] if with_prev else []) + ["\0cur"]
    by_layout = defaultdict(list)
    for step, pos in members:
        t = step + 1 if with_prev else 0
        rename = {chain[t]: "\0cur"}
        if with_prev:
            rename[chain[t - 1]] = "\0prev"
        dims = [rename.get(d, d) for d in operands[pos].dims]
        perm = tuple(dims.index(c) for c in canonical if c in dims)
        shape = tuple((sizes[chain[0]] if c.startswith("\0") else sizes[c]) if c in dims
                      else 1 for c in canonical)
        bound = tuple(sizes[d] for d in operands[pos].dims)
        spec = inputs.get(operands[pos].name)
        layout = (spec.source_shape, spec.view_shape) if spec else (bound, bound)
        by_layout[(spec is not None,) + layout + (bound, perm, shape)].append((step, pos))
    out = []
    for key, items in sorted(by_layout.items(), key=lambda kv: kv[1][0]):
        out.append(ScanGroup(tuple(p for _, p in items), tuple(s for s, _ in items), *key))
    return out
