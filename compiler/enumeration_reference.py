"""Brute-force plated sum-product, the reference the contraction planner is tested against.

Pure Python over every joint assignment; exponential time, for tests and small checks only.
"""

from __future__ import annotations

import itertools
import math

def naive_sum_product(factors, tensors, sum_vars, plates, *, plate_sizes, var_sizes):
    """Brute force, for tests: ``{output index: log value}`` over the kept labels.

    Every summed variable gets one copy per slice of its plates (those shared by all its
    factors); the sum runs over every joint assignment of every copy, and each factor is
    multiplied in once per slice of the reduced plates it lives in. Kept labels (variables
    not summed, plates not reduced) index the output, each slice an independent problem.
    Pure Python on anything indexable by a tuple; time exponential in the number of copies.
    """
    plates = frozenset(plates)
    kept = [d for d in dict.fromkeys(d for f in factors for d in f.dims + f.plates)
            if d is not None and d not in plates and d not in sum_vars]
    sizes = {**var_sizes, **plate_sizes}
    return {idx: _naive_total(factors, tensors, dict(zip(kept, idx)), sum_vars, plates,
                              plate_sizes, var_sizes)
            for idx in itertools.product(*(range(sizes[d]) for d in kept))}


def _naive_total(factors, tensors, fixed, sum_vars, plates, plate_sizes, var_sizes):
    lives = [tuple(p for p in dict.fromkeys(f.dims + f.plates) if p in plates) for f in factors]
    ordinal = {}
    for f, ps in zip(factors, lives):
        for d in f.dims:
            if d in sum_vars:
                ordinal[d] = tuple(p for p in ordinal.get(d, ps) if p in ps)
    copies = [(v, idx) for v, ps in sorted(ordinal.items())
              for idx in itertools.product(*(range(plate_sizes[p]) for p in ps))]
    logs = []
    for values in itertools.product(*(range(var_sizes[v]) for v, _ in copies)):
        chosen = dict(zip(copies, values))
        total = 0.0
        for f, tensor, ps in zip(factors, tensors, lives):
            for slice_ in itertools.product(*(range(plate_sizes[p]) for p in ps)):
                at = {**fixed, **dict(zip(ps, slice_))}
                index = tuple(0 if d is None else at[d] if d in at else
                              chosen[d, tuple(at[p] for p in ordinal[d])] for d in f.dims)
                total += float(tensor[index])
        logs.append(total)
    top = max(logs)
    return top + math.log(sum(math.exp(x - top) for x in logs)) if top > -math.inf else top
