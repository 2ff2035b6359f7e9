"""Plan a plated sum-product contraction of log-space factors. Pure.

Tensor variable elimination for plated factor graphs (Obermeyer et al. 2019, "Tensor
variable elimination for plated factor graphs"). Each factor is a tensor whose dims are named:
an enumerated variable, a plate, or nothing (a size-1 dim). The plan sums each variable out
(``logsumexp``) at the outermost plate level holding all of its factors, and takes the
product over a plate (a ``sum`` in log space) before leaving it:

    group the factors by ordinal (the frozenset of plates they live in);
    while factors remain: take the deepest ordinal (the leaf); in each connected component
    of its factors (linked by the variables local to the leaf) sum those variables out, then
    take the product over the leaf plates the result does not need, and move it out to the
    ordinal of the variables it still holds (or keep it as a result when it holds none).

A component whose remaining variables need every leaf plate (variables from sibling plates
meeting in one factor) cannot be moved out: the plates do not nest as a tree for those
variables, and ``plan_contraction`` raises ``EnumerationError`` naming them.

Every contraction is planned here, at compile time: the einsum equation, the opt_einsum path
(with the registered path function that ``opt_einsum.contract_path`` uses, called directly
because ``contract_path``'s report costs O(n^2) in the operand count: 9 s for a 10,000-step
chain), the equation of each pairwise contraction along the path, its kernel and the peak
size. An einsum's output lists the step's result dims, then the plates it reduces after.
A component whose variables form a long homogeneous Markov chain is contracted instead by a
parallel scan (``compiler.enumeration_scan``: stacked step matrices multiplied pairwise in
log2 T rounds); ``scan=False`` asks for plain elimination everywhere.
``runtime.contract.execute`` runs the plan; scales of subsampled plates are given to it at
run time and apply where a step reduces the plate.

Example:
    >>> factors = [Factor("f0", ("a",)), Factor("f1", ("a", "b", "i")),
    ...            Factor("f2", ("b", "c", "i", "j"))]
    >>> plan = plan_contraction(factors, sum_vars={"a", "b", "c"}, plates={"i", "j"},
    ...     plate_sizes={"i": 3, "j": 4}, var_sizes={"a": 2, "b": 2, "c": 2})
    >>> print(format_contraction_plan(plan))
    contraction: logsumexp a[2] b[2] c[2]; sum plates i[3] j[4] -> []
      strategy: sequential elimination   peak 48 elements
      inputs
        f0 : [a]
        f1 : [a,b,i]
        f2 : [b,c,i,j]
      steps
        %0 : [b,i] = sum[j](logsumexp[c](f2))                       in (i,j)
            einsum "bcij->bij"   path [(0,)]   peak 48 elements
        %1 : [a] = sum[i](logsumexp[b](f1 + %0))                    in (i)
            einsum "abi,bi->ai"   path [(0, 1)]   peak 12 elements
        %2 : [] = logsumexp[a](f0 + %1)
            einsum "a,a->"   path [(0, 1)]   peak 2 elements
      result %2 : []
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import opt_einsum

from compiler.enumeration_print import format_contraction_plan
from compiler.enumeration_reference import naive_sum_product  # noqa: F401  (kept importable)
from compiler.enumeration_scan import SCAN_MIN_LENGTH, ScanSpec, plan_scan
from compiler.errors import EnumerationError, close_matches

# Pairwise contractions whose joint index space is at most this many elements run as an exact
# logsumexp over a broadcast sum; larger ones as a max-shifted exp-einsum-log (see runtime).
BROADCAST_LIMIT = 2 ** 18


@dataclass(frozen=True)
class Factor:
    """A log-space factor: what each dim of its tensor is indexed by.

    Attributes:
        name: unique among the factors of one contraction (e.g. ``"model:obs"``).
        dims: one label per tensor dim, left to right: an enumerated variable, a plate, or
            ``None`` for a size-1 dim that varies with nothing.
        plates: plates the factor lives in but does not vary along (a size-1 or missing dim);
            plates that label a dim are included automatically.
    """

    name: str
    dims: tuple
    plates: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "dims", tuple(self.dims))
        object.__setattr__(self, "plates", tuple(self.plates))


@dataclass(frozen=True)
class PlanInput:
    """How a factor's tensor becomes an operand: ``t.reshape(view_shape).expand(shape)``.

    ``dims`` label the operand: the factor's labelled dims in order, then the plates it lives
    in without varying along (expanded, so a product over the plate counts it once per slice).
    """

    name: str
    source_shape: tuple
    view_shape: tuple
    shape: tuple
    dims: tuple


@dataclass(frozen=True)
class PairwiseOp:
    """One contraction along an opt_einsum path, in the log-sum-exp semiring.

    ``positions`` index the step's working operand list (opt_einsum's convention: popped in
    descending order, result appended); ``equation`` is over those operands in pop order;
    ``kernel`` is "broadcast" (exact logsumexp of a broadcast sum) or "einsum" (max-shifted
    exp, einsum, log); ``peak_elements`` is what the kernel materializes.
    """

    positions: tuple
    equation: str
    kernel: str
    peak_elements: int


@dataclass(frozen=True)
class ContractionStep:
    """One elementary contraction: sum variables out of a connected component of factors,
    then take the product over plates it leaves (a sum over those dims in log space).

    Attributes:
        inputs: names of the operands (factors or earlier steps' outputs), in equation order.
        output: the name of the result (``%k``).
        dims: labels of the result, in order.
        eliminate: variables summed out here (logsumexp).
        reduce_plates: plates whose product is taken after the einsum; they are the last
            indices of the equation's output, in this order.
        ordinal: the plates the step runs inside (sorted).
        equation: the whole einsum over ``ContractionPlan.symbols``.
        ops: the pairwise contractions along the opt_einsum path (empty for a scan).
        peak_elements: the largest tensor the step materializes.
        scan: a ScanSpec when the step contracts a homogeneous chain by a parallel scan
            instead of walking ``ops`` (see ``compiler.enumeration_scan``), else None.
    """

    inputs: tuple
    output: str
    dims: tuple
    eliminate: tuple
    reduce_plates: tuple
    ordinal: tuple
    equation: str
    ops: tuple
    peak_elements: int
    scan: ScanSpec | None = None

    @property
    def path(self):
        """The opt_einsum path: one tuple of operand positions per pairwise contraction."""
        return tuple(op.positions for op in self.ops)


@dataclass(frozen=True, eq=False)
class ContractionPlan:
    """A planned plated sum-product; ``runtime.contract.execute`` runs it.

    Attributes:
        inputs: one PlanInput per factor, in the order the factors were given.
        steps: the elimination steps, in execution order.
        results: ``(name, dims)`` of each partial result (funsor's ``partial_sum_product``):
            the sum of every result over its own plate dims is the full log sum-product.
        combine: the step that adds the results into one tensor over ``dims`` (broadcasting
            over kept plates), or None when there is a single result already in order.
        result: the name of the combined result; ``dims`` its labels.
        sizes, symbols: ``(label, size)`` and ``(label, einsum symbol)`` pairs.
        sum_vars, plates: the variables summed out and the plates reduced, sorted.
        result_inputs: per entry of ``results``, the names of the factors it was computed
            from (a scale common to them is applied to that result, outside every logsumexp).

    Identity-hashed (``eq=False``) so the runtime can cache per plan cheaply.
    """

    inputs: tuple
    steps: tuple
    results: tuple
    combine: ContractionStep | None
    result: str
    dims: tuple
    sizes: tuple
    symbols: tuple
    sum_vars: tuple
    plates: tuple
    result_inputs: tuple = ()

    @cached_property
    def strategy(self):
        """"sequential elimination", or "parallel scan (n chains) + elimination"."""
        scans = sum(s.scan is not None for s in self.steps)
        if not scans:
            return "sequential elimination"
        return f"parallel scan ({scans} chain{'s' if scans > 1 else ''}) + elimination"

    @cached_property
    def peak_elements(self):
        """The largest tensor any step materializes."""
        steps = self.steps + ((self.combine,) if self.combine else ())
        return max((s.peak_elements for s in steps), default=0)

    def __str__(self):
        return format_contraction_plan(self)


class _Operand(NamedTuple):
    name: str
    dims: tuple
    ordinal: frozenset
    sources: frozenset = frozenset()  # the factors it was computed from


class _Context(NamedTuple):
    sizes: dict
    symbols: dict
    plate_sizes: dict
    sum_vars: frozenset
    reduce: frozenset
    ordinals: dict
    optimize: str
    broadcast_limit: int
    scan_min_length: int | None  # None: never scan
    inputs: dict  # factor name -> PlanInput


# ---- the public planner ---------------------------------------------------------------------

def plan_contraction(factors, sum_vars, plates, *, plate_sizes, var_sizes, output=None,
                     optimize="auto", broadcast_limit=BROADCAST_LIMIT, scan="auto"):
    """Plan the log of the plated sum-product of ``factors``. Pure.

    Args:
        factors: Factor descriptions, one per log-space tensor.
        sum_vars: the enumerated variables to sum out; other variables are kept in the result.
        plates: the plates to reduce (product); other plates are kept where possible (a plate
            is reduced anyway when a variable outside it must be summed out).
        plate_sizes, var_sizes: label -> size.
        output: the order of the result's dims (default: first appearance).
        optimize: an opt_einsum path strategy ("auto", "greedy", "optimal", ...).
        broadcast_limit: the largest joint index space contracted exactly by broadcasting;
            larger ones are too when no operand is smaller than it (0: never broadcast).
        scan: "auto" contracts a homogeneous Markov chain of at least ``SCAN_MIN_LENGTH``
            variables by a parallel scan (``compiler.enumeration_scan``); True does so for
            any chain of 2 or more; False always plans plain sequential elimination.

    Returns:
        A ContractionPlan.

    Raises:
        EnumerationError: unknown labels, a kept variable inside a reduced plate, or plates
            that do not nest as a tree for the variables shared across them.

    Time: O(F log F + V) grouping, plus opt_einsum's path search per component (greedy is
    near-linear in the component size for chains); the plan has O(F) pairwise operations.
    """
    factors = tuple(factors)
    sizes = _label_sizes(plate_sizes, var_sizes)
    _check_factors(factors, sizes, plate_sizes)
    inputs = tuple(_plan_input(f, sizes, plate_sizes) for f in factors)
    sum_vars, reduce = frozenset(sum_vars), frozenset(plates)
    _check_names(sum_vars, var_sizes, "variable", "sum_vars")
    _check_names(reduce, plate_sizes, "plate", "plates")
    operands = [_Operand(p.name, p.dims, frozenset(d for d in p.dims if d in plate_sizes),
                         frozenset((p.name,))) for p in inputs]
    ordinals = _var_ordinals(operands, var_sizes)
    _check_sum_vars_used(sum_vars, ordinals, var_sizes)
    _check_kept_vars(ordinals, sum_vars, reduce)
    min_length = {"auto": SCAN_MIN_LENGTH, True: 2, False: None}[scan]
    ctx = _Context(sizes, _assign_symbols(factors), dict(plate_sizes), sum_vars, reduce,
                   ordinals, optimize, broadcast_limit, min_length,
                   {p.name: p for p in inputs})
    steps, results = _eliminate(operands, ctx)
    combine, result, dims = _combine(results, output, len(steps), ctx)
    names = [p.name for p in inputs]
    return ContractionPlan(
        inputs, tuple(steps), tuple((r.name, r.dims) for r in results), combine, result, dims,
        tuple(sorted(sizes.items())), tuple(ctx.symbols.items()), tuple(sorted(sum_vars)),
        tuple(sorted(reduce)), tuple(tuple(n for n in names if n in r.sources) for r in results))


def factor_from_shape(name, shape, *, var_dims, plate_dims, plates=None):
    """A Factor for a tensor laid out as Pyro lays out enumerated log-probs. Pure.

    Args:
        shape: the tensor's shape (its batch shape).
        var_dims: variable -> its enum dim (negative, e.g. ``{"z": -2}``).
        plate_dims: plate -> its dim (negative, e.g. ``{"data": -1}``); it may hold plates
            of other sites too, sibling plates sharing a dim among them.
        plates: the plates the site lives in (its ``cond_indep_stack``). Only their dims
            label the tensor: sibling plates may share a dim, and a site varies only along
            its own. None: every plate of ``plate_dims`` (they must have distinct dims).

    Size-1 dims become ``None``; the sizes themselves are checked by ``plan_contraction``.
    Time: O(len(shape) + len(var_dims) + len(plate_dims)).
    """
    by_dim = {d: v for v, d in var_dims.items()}
    by_dim.update({d: p for p, d in plate_dims.items() if plates is None or p in plates})
    plates = () if plates is None else plates
    dims = []
    for pos, size in enumerate(shape):
        label = by_dim.get(pos - len(shape))
        if size != 1 and label is None:
            raise EnumerationError(
                f"factor {name!r} has size {size} at dim {pos - len(shape)}, which is no "
                "enumerated variable's or plate's dim",
                [f"shape {tuple(shape)}; enum dims {dict(var_dims)}; "
                 f"plate dims {dict(plate_dims)}"],
                "declare the plate the factor is batched along, or check max_plate_nesting",
                site=name, shapes=tuple(shape))
        dims.append(label if size != 1 else None)
    return Factor(name, tuple(dims), tuple(plates))


# ---- checks -----------------------------------------------------------------------------------

def _label_sizes(plate_sizes, var_sizes):
    """label -> size over variables and plates; a label may not be both."""
    both = sorted(set(plate_sizes) & set(var_sizes))
    if both:
        raise EnumerationError(
            f"label {both[0]!r} names both a plate and an enumerated variable",
            [f"plates {sorted(plate_sizes)}; variables {sorted(var_sizes)}"],
            "rename the plate or the site so the names differ", site=both[0], plate=both[0])
    return {**var_sizes, **plate_sizes}


def _check_factors(factors, sizes, plate_sizes):
    """Unique names, known labels, no repeated label within a factor."""
    if not factors:
        raise EnumerationError("nothing to contract: no factors were given", (),
                               "pass at least one factor")
    seen = set()
    for f in factors:
        if f.name in seen or f.name.startswith("%"):
            raise EnumerationError(f"factor name {f.name!r} is repeated or starts with '%'",
                                   [], "give every factor its own name", site=f.name)
        seen.add(f.name)
        labels = [d for d in f.dims if d is not None]
        for label in labels + list(f.plates):
            known = plate_sizes if label in f.plates else sizes
            if label not in known:
                raise EnumerationError(
                    f"factor {f.name!r} names an unknown label {label!r}"
                    f"{close_matches(label, known)}",
                    [f"dims {f.dims}, plates {f.plates}; known {sorted(known)}"],
                    "add it to var_sizes or plate_sizes", site=f.name)
        if len(set(labels)) != len(labels):
            raise EnumerationError(f"factor {f.name!r} repeats a label: {f.dims}", [],
                                   "label each dim once (diagonals are not supported)",
                                   site=f.name)


def _check_names(names, known, kind, arg):
    for name in sorted(names):
        if name not in known:
            raise EnumerationError(
                f"{arg} names an unknown {kind} {name!r}{close_matches(name, known)}",
                [f"known: {sorted(known)}"], f"add {name!r} to {kind}_sizes or drop it")


def _check_sum_vars_used(sum_vars, ordinals, var_sizes):
    """A summed variable in no factor would multiply the result by its size: refuse it."""
    for var in sorted(sum_vars):
        if var not in ordinals and var_sizes[var] != 1:
            raise EnumerationError(
                f"enumerated variable {var!r} appears in no factor",
                [f"summing it out would multiply the result by its size {var_sizes[var]}"],
                f"include {var!r}'s own log-prob factor, or drop it from sum_vars", site=var)


def _check_kept_vars(ordinals, sum_vars, reduce):
    """A kept variable must not live in a reduced plate (it has one value per slice)."""
    for var, ordinal in sorted(ordinals.items()):
        inside = sorted(ordinal & reduce)
        if var not in sum_vars and inside:
            raise _kept_var_error(var, inside)


def _kept_var_error(var, plates, why="which are reduced"):
    return EnumerationError(
        f"cannot keep variable {var!r}: it lives in plate(s) {', '.join(plates)}, {why}",
        [f"{var!r} takes one value per slice of {', '.join(plates)}; the product over the "
         "plate would mix them"],
        f"sum {var!r} out too, or keep plate(s) {', '.join(plates)} unreduced",
        site=var, plate=plates[0])


# ---- layout -----------------------------------------------------------------------------------

def _plan_input(factor, sizes, plate_sizes):
    """Drop a factor's size-1 unlabelled dims and expand the plates it broadcasts along."""
    labels = tuple(d for d in factor.dims if d is not None)
    missing = tuple(p for p in factor.plates if p not in labels)
    dims = labels + missing
    return PlanInput(
        factor.name, tuple(sizes[d] if d is not None else 1 for d in factor.dims),
        tuple(sizes[d] for d in labels) + (1,) * len(missing),
        tuple(sizes[d] for d in dims), dims)


def _assign_symbols(factors):
    """label -> einsum symbol: the label itself when all are single letters, else a fresh
    symbol per label in order of first appearance."""
    labels = list(dict.fromkeys(d for f in factors for d in f.dims + f.plates if d is not None))
    if all(len(d) == 1 and d.isascii() and d.isalpha() for d in labels):
        return {d: d for d in labels}
    return {d: opt_einsum.get_symbol(i) for i, d in enumerate(labels)}


def _var_ordinals(operands, var_sizes):
    """variable -> the plates shared by every factor it appears in. O(total dims)."""
    ordinals = {}
    for op in operands:
        for d in op.dims:
            if d in var_sizes:
                seen = ordinals.get(d)
                if seen is None:
                    ordinals[d] = op.ordinal
                elif seen != op.ordinal:
                    ordinals[d] = seen & op.ordinal
    return ordinals


def _first_appearance(operands, skip=frozenset()):
    return tuple(dict.fromkeys(d for op in operands for d in op.dims if d not in skip))


# ---- elimination --------------------------------------------------------------------------------

def _eliminate(operands, ctx):
    """Run plated variable elimination symbolically: (steps, results). Pure.

    Time: O(F) component contractions over F factors, each planned by opt_einsum.
    """
    by_ordinal = defaultdict(list)
    for op in operands:
        by_ordinal[op.ordinal].append(op)
    steps, results = [], []
    while by_ordinal:
        # CHOICE: the deepest ordinal first; ties broken by plate names, for determinism.
        leaf = max(by_ordinal, key=lambda o: (len(o), sorted(o)))
        leaf_ops = by_ordinal.pop(leaf)
        local = {d for op in leaf_ops for d in op.dims
                 if d in ctx.sum_vars and ctx.ordinals[d] == leaf}
        for group in _components(leaf_ops, local):
            target, reduce = _destination(group, local, leaf, ctx)
            out, step = _contract(group, local, reduce, target, f"%{len(steps)}", ctx, leaf)
            if step is not None:
                steps.append(step)
            (by_ordinal[target] if target is not None else results).append(out)
    return steps, results


def _components(operands, local):
    """Split operands into connected components linked by the local variables, in order of
    their first operand. Time: O(total dims), by union-find over the operands."""
    parent = list(range(len(operands)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner = {}
    for i, op in enumerate(operands):
        for d in op.dims:
            if d in local:
                j = owner.setdefault(d, i)
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups = defaultdict(list)
    for i, op in enumerate(operands):
        groups[root(i)].append(op)
    return [groups[r] for r in sorted(groups)]


def _destination(group, local, leaf, ctx):
    """(target ordinal or None for a result, plates to reduce) for a component's output."""
    remaining = [d for d in _first_appearance(group, local) if d in ctx.sum_vars]
    if not remaining:
        return None, leaf & ctx.reduce
    target = frozenset().union(*(ctx.ordinals[v] for v in remaining))
    if target == leaf:
        raise _non_tree_error(group, remaining, leaf, ctx)
    return target, leaf - target


def _non_tree_error(group, remaining, leaf, ctx):
    plates, last = sorted(leaf), ctx.ordinals[remaining[-1]]
    where = "; ".join(f"{v!r} in ({', '.join(sorted(ctx.ordinals[v])) or 'no plate'})"
                      for v in remaining)
    factors = ", ".join(f"{op.name} [{','.join(op.dims)}]" for op in group if not
                        op.name.startswith("%")) or "intermediate results"
    return EnumerationError(
        f"plates {', '.join(plates)} do not nest as a tree for variables "
        f"{', '.join(map(repr, remaining))}",
        [f"summed at: {where}",
         f"factors {factors} join them inside ({', '.join(plates)}): summing them out "
         "needs the joint over all slices"],
        f"sample {remaining[-1]!r} inside plate(s) {', '.join(sorted(leaf - last))} as well, "
        "so one variable's plates hold the other's,\nor stop enumerating one of them "
        "(sample it in the guide)",
        site=remaining[0], plate=plates[0])


def _contract(group, local, reduce, target, name, ctx, leaf):
    """Plan one component: (output operand, ContractionStep or None for a pass-through)."""
    eliminate = tuple(d for d in _first_appearance(group) if d in local)
    keep = _first_appearance(group, local)
    if target is not None:
        _check_reduce_keeps_no_var(keep, reduce, ctx)
    reduced = tuple(d for d in keep if d in reduce)
    pre = tuple(d for d in keep if d not in reduce) + reduced
    dims = pre[:len(pre) - len(reduced)]
    out = _Operand(name, dims, frozenset(d for d in dims if d in ctx.plate_sizes),
                   frozenset().union(*(op.sources for op in group)))
    unchanged = len(group) == 1 and pre == group[0].dims
    if unchanged and not reduced:
        return group[0], None
    subs = [_subscripts(op.dims, ctx) for op in group]
    out_subs = _subscripts(pre, ctx)
    scan = None
    if ctx.scan_min_length is not None and len(group) > 1:
        scan = plan_scan(group, set(eliminate), pre, ctx.sizes, ctx.broadcast_limit,
                         ctx.scan_min_length, ctx.inputs)
    if scan is not None:
        ops, peak = (), max(scan.peak_elements, _numel(pre, ctx))
    else:
        ops = () if unchanged else _pairwise_ops(subs, out_subs, _path(subs, out_subs, ctx),
                                                 ctx)
        peak = max([_numel(pre, ctx)] + [op.peak_elements for op in ops])
    step = ContractionStep(
        tuple(op.name for op in group), name, dims, eliminate, reduced, tuple(sorted(leaf)),
        ",".join(subs) + "->" + out_subs, ops, peak, scan)
    return out, step


def _check_reduce_keeps_no_var(keep, reduce, ctx):
    """Leaving a plate to reach an outer variable must not reduce a kept variable's plate."""
    outer = ", ".join(repr(d) for d in keep if d in ctx.sum_vars)
    for var in keep:
        if var not in ctx.sum_vars and var in ctx.ordinals and ctx.ordinals[var] & reduce:
            raise _kept_var_error(var, sorted(ctx.ordinals[var] & reduce),
                                  f"which must be reduced to sum out {outer}")


def _subscripts(dims, ctx):
    return "".join(ctx.symbols[d] for d in dims)


def _numel(dims, ctx):
    return math.prod(ctx.sizes[d] for d in dims)


def _path(subs, out_subs, ctx):
    """The opt_einsum path over symbol strings: contract_path's own path function.
    A single operand gets the one-operand path ``[(0,)]``, as contract_path gives."""
    if len(subs) == 1:
        return ((0,),)
    size_dict = {ctx.symbols[d]: s for d, s in ctx.sizes.items() if d in ctx.symbols}
    path_fn = opt_einsum.paths.get_path_fn(ctx.optimize)
    path = path_fn([frozenset(s) for s in subs], frozenset(out_subs), size_dict, None)
    return tuple(tuple(p) for p in path)


def _pairwise_ops(subs, out_subs, path, ctx):
    """The equation, kernel and peak of each contraction along ``path``. O(len(path) * rank)."""
    sizes = {ctx.symbols[d]: s for d, s in ctx.sizes.items() if d in ctx.symbols}
    working = list(subs)
    counts = defaultdict(int)  # how many working operands hold each symbol
    for s in working:
        for c in s:
            counts[c] += 1
    ops = []
    for k, positions in enumerate(path):
        taken = [working.pop(p) for p in sorted(positions, reverse=True)]
        for s in taken:
            for c in s:
                counts[c] -= 1
        joint = "".join(dict.fromkeys("".join(taken)))
        if k == len(path) - 1:
            out = out_subs
        else:
            out = "".join(c for c in joint if counts[c] > 0 or c in out_subs)
        for c in out:
            counts[c] += 1
        working.append(out)
        ops.append(_pairwise_op(tuple(positions), taken, out, joint, sizes, ctx.broadcast_limit))
    return tuple(ops)


def _pairwise_op(positions, taken, out, joint, sizes, limit):
    joint_elements = math.prod(sizes[c] for c in joint)
    largest = max(math.prod(sizes[c] for c in s) for s in taken)
    # broadcasting materializes the joint space: cheap when small, or when an operand is
    # already that big (no blow-up; einsum would only add exp, log and max passes).
    # limit 0 forces the einsum kernel everywhere.
    if joint_elements <= limit or (limit > 0 and joint_elements <= largest):
        kernel, peak = "broadcast", joint_elements
    else:
        kernel = "einsum"
        peak = sum(math.prod(sizes[c] for c in s) for s in taken + [out])
    return PairwiseOp(positions, ",".join(taken) + "->" + out, kernel, peak)


def _combine(results, output, n_steps, ctx):
    """(combine step or None, result name, result dims): add the partial results into one
    tensor over ``output`` (default: their dims in first-appearance order)."""
    dims = _first_appearance(results)
    if output is not None:
        output = tuple(output)
        if sorted(output) != sorted(dims):
            raise EnumerationError(
                f"output {output} does not match the result's dims {dims}",
                ["the result keeps the variables not summed and the plates not reduced"],
                f"pass output as an ordering of {dims}")
        dims = output
    if len(results) == 1 and results[0].dims == dims:
        return None, results[0].name, dims
    subs = [_subscripts(r.dims, ctx) for r in results]
    out_subs = _subscripts(dims, ctx)
    ops = _pairwise_ops(subs, out_subs, _path(subs, out_subs, ctx), ctx)
    name = f"%{n_steps}"
    step = ContractionStep(tuple(r.name for r in results), name, dims, (), (), (),
                           ",".join(subs) + "->" + out_subs, ops,
                           max([_numel(dims, ctx)] + [op.peak_elements for op in ops]))
    return step, name, dims
