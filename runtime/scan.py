"""Execute a parallel-scan contraction (a ``compiler.enumeration_scan.ScanSpec``).

The T - 1 step matrices of a homogeneous chain are stacked into ``M`` of shape
``(T-1, *batch, K, K)`` (log space), then multiplied pairwise, adjacent with adjacent: each
round halves the stack, so the sequential depth is ceil(log2 T) batched operations instead of
T. An odd element left over by a round is set aside and multiplied in, in order, at the end
(the scaled chain below carries it into the next round instead).
The initial vector (the factors of x_0 alone) is added last, and both chain ends summed out.

An eager step first tries the scaled chain (``_scaled_rounds``): the steps are
exponentiated once, each shifted by its own maximum, and the rounds are plain matrix
products, each divided by its maximum, the logs of the shifts summed on the side in float64.
A few tensor operations a round instead of a dozen, and more accurate gradients. It holds every
entry in linear space, so it is used only when every entry of every intermediate lies
within ``SCALED_FLOOR`` (about 69 nats) of its matrix's maximum: float32 then keeps its
relative precision throughout. Otherwise (structural zeros, a step whose entries span more
than 69 nats, nan) the step falls back to the planned log-space rounds; so does a JIT capture,
which cannot branch on values.

The planned rounds use two kernels for ``log(exp(A) @ exp(B))``: "broadcast" is exact
(logsumexp of the broadcast sum, materializing ``(..., K, K, K)``); "matmul" shifts A by its
row maxima and B by its column maxima (detached: the identity holds for any constant, so
gradients are exact), multiplies, and adds the shifts back. Both keep every intermediate in
log space, so a 10,000-step chain stays finite in float32.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import torch

from runtime.stacked_terms import restack


def run_scan(spec, operands, stacks=None):
    """The log-sum over the chain of a ScanSpec: a tensor over ``spec.batch``.

    Args:
        spec: the ScanSpec.
        operands: the step's input tensors, in the step's input order, each laid out over
            its labels (as ``runtime.contract`` binds them).
        stacks: optional ``id(group) -> tensor``: a raw group's factors already stacked
            (its operands are then None), as ``torch.stack`` of them would give.
    """
    init = _init_vector(spec.init, operands, stacks) if spec.init else None  # (*batch, K)
    result = None
    if _eager():
        by_step = _steps_by_matrix_entry(spec, operands, stacks)
        result = _scaled_rounds(by_step, _indexes(spec, by_step.device)[0], init)
    if result is None:
        steps = sum(_stack_role(groups, operands, stacks) for groups in spec.roles)
        product = chain_product(steps, spec.rounds, spec.tail_kernel)     # (*batch, K, K)
        if init is not None:
            product = product + init.unsqueeze(-1)
        result = torch.logsumexp(product.flatten(-2), -1)
    if tuple(result.shape) != spec.batch_shape:
        result = result.expand(spec.batch_shape)
    return result


# Every entry of every scaled intermediate must be at least this fraction of its matrix's
# maximum: exp(-69), far above float32's smallest normal number (1.2e-38), so that no
# product of two entries, nor any entry, loses precision to underflow.
SCALED_FLOOR = 1e-30


def scaled_chain_sum(steps, init=None):
    """``log sum_ij exp(init_i) (exp(M_0) @ ... @ exp(M_{n-1}))_ij`` over the batch, for
    ``steps`` M of shape (n, *batch, K, K) and ``init`` (*batch, K) (zeros when None), in
    linear space with per-matrix scales (see the module docstring); or None when some entry
    falls below ``SCALED_FLOOR`` of its matrix's maximum (or is nan), where only the
    log-space rounds are exact. The scales are detached constants, so gradients are exact."""
    n = steps.shape[0]
    by_step = steps.permute((steps.dim() - 2, steps.dim() - 1) + tuple(range(steps.dim() - 2)))
    index = _gather_index(tuple(range(n)), round_order(n), steps.device)
    return _scaled_rounds(by_step, index, init)


def _scaled_rounds(by_step, index, init):
    """``scaled_chain_sum`` of steps laid out (K, K, n, *batch) (row, column, step, batch),
    in the order that ``index`` (along dim 2) puts in round order.

    In round order each round's left factors are one contiguous block and its right factors
    the next, and the entries of every matrix lie along the contiguous step-and-batch dims:
    each round is a few elementwise operations over contiguous memory (a batched ``matmul``
    of thousands of tiny matrices costs several times more, forward and backward)."""
    K, n = by_step.shape[0], by_step.shape[2]
    if n == 0 or by_step.dtype not in (torch.float32, torch.float64):
        return None
    batch = by_step.shape[3:]
    if init is not None and init.shape[:-1] != batch:  # broadcast both to the whole batch
        batch = torch.broadcast_shapes(batch, init.shape[:-1])
        by_step, init = by_step.expand((K, K, n) + batch), init.expand(batch + (K,))
    shift = by_step.detach().amax((0, 1), keepdim=True)               # (1, 1, n, *batch)
    scaled = torch.index_select(torch.exp(by_step - shift), 2, index).reshape(K, K, n, -1)
    if not bool(scaled.detach().amin() > SCALED_FLOOR):
        return None  # the steps themselves span too much: no rounds spent finding out
    floors, tops = [], []
    while scaled.shape[2] > 1:
        m = scaled.shape[2]
        pairs = m // 2
        product = _product(scaled[:, :, :pairs], scaled[:, :, pairs:2 * pairs])
        top = product.detach().amax((0, 1), keepdim=True)             # (1, 1, pairs, batch)
        product = product / top
        floors.append(product.detach().amin())
        tops.append(top)
        # an odd one out is carried into the next round, where round order puts it last
        scaled = torch.cat((product, scaled[:, :, 2 * pairs:]), 2) if m % 2 else product
    if floors and not bool(torch.stack(floors).min() > SCALED_FLOOR):
        return None
    product = scaled[:, :, 0]
    log_scale = shift.sum(2, dtype=torch.float64).reshape(1, 1, -1)   # (1, 1, batch)
    if tops:  # every product's maximum, divided out above: logged and summed at once
        log_scale = log_scale + torch.cat(tops, 2).log().sum(2, dtype=torch.float64)
    if init is None:
        total = product.sum((0, 1))
    else:
        top = finite_shift(init.detach().amax(-1, keepdim=True))  # all -inf: total -inf
        weights = torch.exp(init - top).reshape(-1, K).t()                 # (K, batch)
        total = (weights.unsqueeze(1) * product).sum((0, 1))
        log_scale = log_scale + top.reshape(1, 1, -1)
    return (total.log() + log_scale.reshape(-1).to(total.dtype)).reshape(batch)


def round_order(n):
    """The steps 0..n-1 in round order: a round over m matrices in this order finds the left
    factors of its pairs (even steps) first, then the right ones (odd steps), each block in
    the next round's order, so that its products come out in that order; an odd one out
    comes last, and is carried into the next round as its last matrix (which every round's
    order puts last)."""
    if n <= 1:
        return tuple(range(n))
    pairs, odd = n // 2, n % 2
    inner = round_order(pairs + odd)[:pairs]  # (without the carried one, last)
    return tuple(2 * i for i in inner) + tuple(2 * i + 1 for i in inner) + ((n - 1,) if odd else ())


def _indexes(spec, device):
    """The scan's step-order indexes, built once per scan and device: (the index putting the
    first role's steps in round order, per role the index putting its steps in the first
    role's order or None when they are in it already)."""
    key = (id(spec), device)
    entry = _INDEXES.get(key)
    if entry is None or entry[0] is not spec:  # (the entry holds its spec: ids stay unique)
        orders = [_role_order(groups) for groups in spec.roles]
        first = orders[0]
        entry = (spec, _gather_index(first, round_order(len(first)), device),
                 tuple(None if order == first else _gather_index(order, first, device)
                       for order in orders))
        if len(_INDEXES) >= 256:
            _INDEXES.clear()
        _INDEXES[key] = entry
    return entry[1], entry[2]


_INDEXES = {}  # (id(spec), device) -> (spec, round index, reorder indexes)


def _steps_by_matrix_entry(spec, operands, stacks):
    """The step matrices, each role's factors summed, laid out (K, K, n, *batch), their steps
    in the first role's order (``_indexes``)."""
    total = reorders = None
    for r, groups in enumerate(spec.roles):
        role = _role(groups, operands, stacks, by_entry=True)
        if reorders is None:
            reorders = _indexes(spec, role.device)[1]
        if reorders[r] is not None:
            role = torch.index_select(role, 2, reorders[r])
        total = role if total is None else total + role
    return total


@lru_cache(maxsize=64)
def _gather_index(have, want, device):
    """The index taking steps stacked in order ``have`` to order ``want``."""
    position = {step: i for i, step in enumerate(have)}
    return torch.tensor([position[step] for step in want], device=device)


# A round's broadcast product holds K**3 times its matrices' entries: above this many, the
# K products are summed one by one instead (less memory traffic at T = 10,000).
_BROADCAST_PRODUCT = 2 ** 20


def _product(a, b):
    """The matrix products of (K, K, ...) stacks ``a`` and ``b``, batched over the rest."""
    K = a.shape[1]
    if K ** 3 * a[0, 0].numel() <= _BROADCAST_PRODUCT:
        return (a.unsqueeze(2) * b.unsqueeze(0)).sum(1)
    out = a[:, 0, None] * b[None, 0]
    for j in range(1, K):
        out = out + a[:, j, None] * b[None, j]
    return out


def _eager():
    """Whether this runs eagerly: no JIT capture, dispatch or function mode, or compiler is
    recording it (they cannot branch on a tensor's values), and no ``log_space_rounds``."""
    return not (_LOG_SPACE_ONLY or torch._C._len_torch_dispatch_stack()
                or torch._C._len_torch_function_stack() or torch.compiler.is_compiling())


_LOG_SPACE_ONLY = []  # one entry per active log_space_rounds


@contextmanager
def log_space_rounds():
    """Scans inside run their planned log-space rounds only, as a captured step does: an
    eager run that a capture's replay is compared with must compute what the capture does
    (at T = 10,000 the two differ by float32 rounding beyond a replay check's tolerance)."""
    _LOG_SPACE_ONLY.append(True)
    try:
        yield
    finally:
        _LOG_SPACE_ONLY.pop()


def chain_product(steps, rounds, tail_kernel="broadcast"):
    """``log(exp(M_0) @ exp(M_1) @ ... @ exp(M_{n-1}))`` for ``steps`` of shape (n, ..., K, K),
    by ``len(rounds)`` halving rounds (``rounds`` names each one's kernel)."""
    leftovers = []
    for kernel in rounds:
        n = steps.shape[0]
        pairs = n // 2
        if n % 2:
            leftovers.append(steps[n - 1])
        steps = log_matmul(steps[0:2 * pairs:2], steps[1:2 * pairs:2], kernel)
    if steps.shape[0] != 1:
        raise ValueError(f"{len(rounds)} rounds leave {steps.shape[0]} step matrices, not 1")
    product = steps[0]
    for tail in reversed(leftovers):   # a later leftover sits earlier in the chain
        product = log_matmul(product, tail, tail_kernel)
    return product


def log_matmul(a, b, kernel="broadcast"):
    """``log(exp(a) @ exp(b))`` over the last two dims, batch dims broadcast."""
    if kernel == "broadcast":
        return torch.logsumexp(a.unsqueeze(-1) + b.unsqueeze(-3), dim=-2)
    row = a.detach().amax(-1, keepdim=True)
    col = b.detach().amax(-2, keepdim=True)
    row, col = finite_shift(row), finite_shift(col)
    return log_of_product(torch.matmul(torch.exp(a - row), torch.exp(b - col))) + row + col


def finite_shift(peak):
    """A max-shift with its infinite entries (a slice that is all -inf) replaced by 0, so
    that subtracting it leaves -inf there, not nan."""
    return torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))


def log_of_product(x):
    """``log(x)`` of a max-shifted product (x >= 0), with gradient 0 where x is 0.

    An entry underflows to 0 when every term of its sum lies some 100 nats (float32) below
    the shifts: its log is -inf, its weight downstream exactly 0, so its gradient is 0 to
    float precision; ``torch.log``'s own would be 0 * inf = nan, poisoning every parameter.
    A nan entry stays nan (the loss check then names it)."""
    zero = x == 0
    return torch.where(zero, float("-inf"), torch.where(zero, 1.0, x).log())


def _stack_role(groups, operands, stacks=None):
    """One role's factors of every step, as one tensor (steps, *canonical shape)."""
    role = _role(groups, operands, stacks)
    if len(groups) == 1:
        return role
    order = _role_order(groups)
    return role[_gather_index(order, tuple(range(len(order))), role.device)]


def _role(groups, operands, stacks, by_entry=False):
    """One role's factors, its groups' stacks concatenated (steps in ``_role_order``):
    (steps, *batch, K, K), or with ``by_entry`` (K, K, steps, *batch), each group permuted
    before the concatenation so that its copy is laid out that way."""
    parts = []
    for group in groups:
        part = _stack_group(group, operands, stacks)         # (steps, *batch, K, K)
        if by_entry:
            d = part.dim()
            part = part.permute((d - 2, d - 1) + tuple(range(d - 2)))
        parts.append(part)
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2 if by_entry else 0)


def _role_order(groups):
    return tuple(step for group in groups for step in group.steps)


def _stack_group(group, operands, stacks=None):
    n = len(group.positions)
    stacked = stacks.get(id(group)) if stacks else None
    if stacked is None:
        tensors = [operands[p] for p in group.positions]
        stacked = restack(tensors) if group.raw else None
        if stacked is None:
            stacked = torch.stack(tensors)
    if group.raw:
        if group.view_shape != group.source_shape:
            stacked = stacked.reshape((n,) + group.view_shape)
        if group.bound_shape != group.view_shape:
            stacked = stacked.expand((n,) + group.bound_shape)
    perm = (0,) + tuple(1 + i for i in group.perm)
    return stacked.permute(perm).reshape((n,) + group.shape)


def _init_vector(groups, operands, stacks=None):
    """The sum of the factors of x_0 alone, over (*batch, K)."""
    return sum(_stack_group(group, operands, stacks).sum(0) for group in groups)
