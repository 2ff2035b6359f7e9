"""Log densities of many same-shaped sites in one call: stack their parameters and values.

A model with a loop (a chain of N latents, an HMM's T steps) has many sites whose
distributions differ only in their parameter values: same class, same parameter shapes,
same value shape. Their log densities are computed here as one ``log_prob`` of a distribution
whose parameters are the sites' parameters stacked along a new leftmost dim. The result
stays one tensor per group (``GroupLogProbs``): a parallel scan takes a slice of it as its
stacked factors, and a site's own row is cut out only when something reads it. Each
element is computed by the same arithmetic as site by site, so the values are identical;
the step just runs a handful of kernels (and backward nodes) instead of a handful per site.

Rows that are equal by how they were made (``_equal_by_construction``: an HMM's
``trans[z]`` at every step whose states are enumerated at one dim, views of one constant)
are not copied: the stack is a broadcast of the first, whose backward node alone carries
their gradients (summed: equal to the site-by-site gradients up to float rounding). When
every parameter and the values are such broadcasts, the log density is computed once.

Which sites stack is decided once per plan from its first step's records and cached beside
the plan. The structure key fixes value shapes but not parameter shapes or classes, so each
step checks that every site still has its group's class, attributes, batch and event shapes
(a few tuple compares), else those sites run one by one.

Stackable distributions: those whose instance state is tensors with the batch shape (plus
event dims) as their leading dims and plain values, and whose ``log_prob`` is computed
elementwise over the batch (``_STACKABLE``). Anything else runs site by site.
"""

from __future__ import annotations

import weakref

import torch
from torch import distributions as td

from runtime.terms import UNEXPANDED, broadcast_shape

# torch classes whose log_prob works batch element by batch element from tensor attributes
# that carry the full batch shape (set by broadcast_all or the constructor)
_STACKABLE = (td.Normal, td.Categorical, td.Bernoulli, td.Poisson, td.Gamma, td.Exponential,
              td.Laplace, td.Cauchy, td.Gumbel, td.Geometric)
# ... and only with that log_prob: a subclass that overrides it may not be elementwise
_STACKABLE_LOG_PROBS = frozenset(cls.log_prob for cls in _STACKABLE)
MIN_GROUP = 3  # measured: stacking two sites costs more than their two log_probs; three gain

_LAYOUTS = weakref.WeakKeyDictionary()  # plan -> _Layout (empty when nothing stacks)


class _Layout(tuple):
    """A plan's groups (a tuple of ``_Group``), with ``index``: (program, site) -> (group
    position, row)."""

    def __new__(cls, groups):
        layout = super().__new__(cls, groups)
        layout.index = {(g.program, name): (i, row)
                        for i, g in enumerate(groups) for row, name in enumerate(g.names)}
        return layout


class _Group:
    """Sites computed together: their class, how each site's parameters and value are padded
    to a common rank, the per-site result shape, and the shape it is expanded to (when the
    sites' distributions were plate-expanded from smaller ones)."""

    __slots__ = ("program", "names", "cls", "pad", "value_pad", "batch_shape", "event_shape",
                 "own_shape", "out_shape")

    def __init__(self, program, names, cls, pad, value_pad, batch_shape, event_shape, own_shape,
                 out_shape):
        self.program, self.names, self.cls = program, names, cls
        self.pad, self.value_pad = pad, value_pad
        self.batch_shape, self.event_shape = torch.Size(batch_shape), torch.Size(event_shape)
        self.own_shape, self.out_shape = own_shape, out_shape


class GroupLogProbs:
    """One group's log densities in one tensor: row i of ``stack`` (expanded to
    ``out_shape`` when that is set) is the unmasked log density of site ``names[i]``, whose
    record is ``sites[i]``."""

    __slots__ = ("program", "names", "sites", "stack", "out_shape")

    def __init__(self, program, names, sites, stack, out_shape):
        self.program, self.names, self.sites = program, names, sites
        self.stack, self.out_shape = stack, out_shape

    def rows(self, start, stop):
        """Rows ``start:stop`` as one tensor (the sites' log densities, stacked): a slice,
        with no tensor (nor backward node) per site."""
        out = self.stack[start:stop] if start or stop != len(self.names) else self.stack
        shape = self.out_shape
        if shape is None:
            return out
        n = stop - start
        pad = len(shape) - (out.dim() - 1)  # plate dims the rows gain by their expansion
        if pad:
            out = out.reshape((n,) + (1,) * pad + out.shape[1:])
        return out.expand((n,) + tuple(shape))

    def unbound(self):
        """One tensor per site, each tagged as a row of this stack (``restack``)."""
        out = self.out_shape
        log_prob, n = self.stack, len(self.names)
        if out is None:
            rows = log_prob.unbind(0)
        else:  # expanded once, then split: one expand (and one backward node), not one per site
            rows = self.rows(0, n).unbind(0)
        for i, lp in enumerate(rows):  # a scan stacking these again takes the stack itself
            lp.__dict__[STACKED] = (self, i)
        return rows


def stacked_log_probs(plan, records):
    """This step's log densities of the plan's terms that stack (``StackedLogProbs``).

    The other terms (and any group whose sites no longer fit it) are left to the caller's
    site-by-site path. Errors are never raised here: a group that fails is skipped, so the
    site-by-site path raises its named error.
    """
    layout = _LAYOUTS.get(plan)
    if layout is None:
        names = [t.key for t in plan.terms] + [("model", t.site) for t in plan.enum_terms]
        layout = _LAYOUTS[plan] = _Layout(_plan_groups(records, dict.fromkeys(names)))
    if not layout:
        return _NONE
    results = []
    for group in layout:
        sites = records[group.program]
        try:
            result = _group_log_probs(group, [sites[n] for n in group.names])
        except Exception:  # noqa: BLE001 - the caller's per-site path reports the real error
            result = None
        results.append(result)
    return StackedLogProbs(layout, results)


class StackedLogProbs:
    """One step's stacked log densities: ``groups[i]`` is the ``GroupLogProbs`` of the
    plan's i-th group (None where its sites no longer fit it); ``get((program, site))`` is a
    site's own row, split out of its group's stack on first request (a scan that takes the
    stacks whole never asks)."""

    __slots__ = ("groups", "index", "_rows")

    def __init__(self, layout, groups):
        self.groups, self.index, self._rows = groups, layout.index, [None] * len(groups)

    def get(self, key):
        where = self.index.get(key)
        if where is None:
            return None
        i, row = where
        rows = self._rows[i]
        if rows is None or (rows.__class__ is dict and row not in rows):
            group = self.groups[i]
            if group is None:
                return None
            if rows is None:  # one row asked for (a scan took the rest whole): cut it alone
                lp = group.rows(row, row + 1)[0]
                lp.__dict__[STACKED] = (group, row)
                self._rows[i] = {row: lp}
                return lp
            rows = self._rows[i] = group.unbound()  # more: split the stack once
        return rows[row]


_NONE = {}  # no group: every ``get`` is None


def _base(fn):
    return fn.__dict__.get(UNEXPANDED, fn)


def _signature(site):
    """The grouping key of a site, or None when it cannot be stacked."""
    fn = _base(site["fn"])
    value = site["value"]
    if (not isinstance(fn, _STACKABLE) or type(fn).log_prob not in _STACKABLE_LOG_PROBS
            or not isinstance(value, torch.Tensor)):
        return None
    batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)
    state = []
    for key, attr in sorted(fn.__dict__.items()):
        if key in ("_batch_shape", "_event_shape", "_validate_args"):
            continue
        if isinstance(attr, torch.Tensor):
            if tuple(attr.shape[:len(batch)]) != batch:
                return None  # not batch-shaped: stacking would misalign it
            state.append((key, "tensor", tuple(attr.shape), attr.dtype, attr.device))
        elif isinstance(attr, (int, float, bool, str, type(None))):
            state.append((key, "value", attr))
        else:
            return None
    return (type(fn), tuple(state), batch, event, tuple(value.shape), value.dtype,
            tuple(site["fn"].batch_shape))


def _plan_groups(records, names):
    by_key = {}
    for program, name in names:
        site = records[program].get(name)
        if site is None or site.get("type", "sample") != "sample":
            continue
        key = _signature(site)
        if key is not None:
            by_key.setdefault((program, key), []).append(name)
    groups = []
    for (program, key), members in by_key.items():
        if len(members) < MIN_GROUP:
            continue
        cls, _, batch, event, value_shape, _, full_batch = key
        value_batch = value_shape[:len(value_shape) - len(event)]
        rank = max(len(batch), len(value_batch))
        own = broadcast_shape(tuple(value_batch), tuple(batch))
        out = broadcast_shape(tuple(value_batch), tuple(full_batch))
        if own is None or out is None:  # its sites' log_prob raises: the per-site path says so
            continue
        groups.append(_Group(program, tuple(members), cls, rank - len(batch),
                             rank - len(value_batch), batch, event, own,
                             None if out == own else out))
    return tuple(groups)


def _group_log_probs(group, sites):
    """The group's ``GroupLogProbs``, or None when a site no longer fits."""
    fns = [site["fn"] for site in sites]
    fns = [fn.__dict__.get(UNEXPANDED, fn) for fn in fns]  # (``_base``, inlined)
    first = fns[0]
    keys, checks = first.__dict__.keys(), first.__dict__.get("_validate_args")
    cls, batch, event = group.cls, group.batch_shape, group.event_shape
    for fn in fns:  # the structure key does not fix these: a later step may differ
        if (fn.__class__ is not cls or fn.__dict__.keys() != keys
                or fn._batch_shape != batch or fn._event_shape != event
                or fn.__dict__.get("_validate_args") != checks):
            return None
    n, lead = len(fns), (1,) * group.pad
    rows_of = {}  # id(attribute) -> its rows stacked (aliases, Categorical's _param, stay so)
    for key, attr in first.__dict__.items():
        if isinstance(attr, torch.Tensor) and id(attr) not in rows_of:
            rows_of[id(attr)] = _stack_rows([fn.__dict__[key] for fn in fns])
    values = _stack_rows([site["value"] for site in sites])
    # Every stack a broadcast of its first row (``_stack_rows``: equal rows), values too:
    # every site has the same log density, computed once (an HMM's transition rows).
    m = 1 if all(t.stride(0) == 0 for t in (values, *rows_of.values())) else n
    for i, rows in rows_of.items():  # cut and padded once (one shape): no view per site
        rows = rows[:m] if m != n else rows
        rows_of[i] = rows.reshape((m,) + lead + rows.shape[1:]) if lead else rows
    stacked = first.__class__.__new__(first.__class__)
    stacked.__dict__.update(first.__dict__)
    for key, attr in first.__dict__.items():
        if isinstance(attr, torch.Tensor):
            stacked.__dict__[key] = rows_of[id(attr)]
    stacked.__dict__["_batch_shape"] = torch.Size((m,) + lead + group.batch_shape)
    if m != n:
        values = values[:m]
    if group.value_pad:
        values = values.reshape((m,) + (1,) * group.value_pad + values.shape[1:])
    log_prob = stacked.log_prob(values)
    if m != n:
        log_prob = log_prob.expand((n,) + log_prob.shape[1:])
    if log_prob.shape[1:] != group.own_shape:
        return None
    return GroupLogProbs(group.program, group.names, sites, log_prob, group.out_shape)


def _stack_rows(tensors):
    """``torch.stack(tensors)``; a broadcast view of the first when they hold equal values
    by construction (``_equal_by_construction``): the shared support of every site
    enumerated at one dim, a table every site reads whole, a constant scale broadcast per
    site, a table indexed by the same enumerated values at every step of a chain. The
    gradient then flows through one row's backward node, not one per site."""
    first = tensors[0]
    for t in tensors:
        if t is not first:
            break
    else:
        return first.unsqueeze(0).expand((len(tensors),) + first.shape)
    base = first._base
    if base is not None and base.dim() == 0:  # views of one number, however strided
        shape = first.shape
        for t in tensors:
            if t._base is not base or t.shape != shape:
                return torch.stack(tensors)
        return base.expand((len(tensors),) + shape)
    if _equal_by_construction(first, tensors):
        return first.unsqueeze(0).expand((len(tensors),) + first.shape)
    return torch.stack(tensors)


def _equal_by_construction(first, tensors):
    """Whether every tensor is bound to equal ``first`` by how it was made, with no look at
    the values:

    - views, not tracked by autograd, of the same memory (same base, shape, strides and
      offset): they read the same entries;
    - results of one indexing node type (``IndexBackward0``: ``table[index]``) applied to
      the same tensor (the same graph node and output) with the same index tensors, e.g. an
      HMM's ``trans[z]`` at every step where the chain's enumerated values ``z`` are one
      tensor. Autograd's graph identifies the table as it was when indexed; only a write
      it cannot see (through ``.data`` or under ``no_grad``) between two sites' indexing
      would break this, which no model under inference does.
    """
    grad_fn = first.grad_fn
    if grad_fn is None:
        base = first._base
        if base is None:
            return False
        stride, offset, shape = first.stride(), first.storage_offset(), first.shape
        for t in tensors:  # (a view made a leaf with requires_grad_ is its own variable)
            if (t._base is not base or t.shape != shape or t.stride() != stride
                    or t.storage_offset() != offset or t.requires_grad):
                return False
        return True
    if grad_fn.__class__.__name__ != "IndexBackward0":
        return False
    kind, inputs, indices = grad_fn.__class__, grad_fn.next_functions, grad_fn._saved_indices
    if len(indices) == 1:  # (the usual ``table[z]``: one index, compared without a loop)
        (index,) = indices
        for t in tensors:
            fn = t.grad_fn
            if (fn.__class__ is not kind or fn.next_functions != inputs
                    or fn._saved_indices[0] is not index):
                return False
        return True
    for t in tensors:
        fn = t.grad_fn
        if fn.__class__ is not kind or fn.next_functions != inputs:
            return False
        for a, b in zip(fn._saved_indices, indices):
            if a is not b:
                return False
    return True


# a log density's attribute when it is row i of a stacked one: (its GroupLogProbs, i)
STACKED = "_svigraph_stacked"


def restack(tensors):
    """``torch.stack(tensors)``, as a slice of the stack they were cut from when they are
    consecutive rows of one (``GroupLogProbs.unbound``), else None: no stack and no
    per-site backward nodes for a chain's factors."""
    first = tensors[0].__dict__.get(STACKED)
    if first is None:
        return None
    group, start = first
    for offset, t in enumerate(tensors):
        row = t.__dict__.get(STACKED)
        if row is None or row[0] is not group or row[1] != start + offset:
            return None
    return group.rows(start, start + len(tensors))
