"""The values an enumerated site takes: its distribution's support, laid along its dim."""

from __future__ import annotations

import torch

# The support of a Categorical, Bernoulli or OneHotCategorical depends only on its size, dtype
# and device: enumerating the same kind of site at the same dim gives the same tensor every
# step, so it is built once (an HMM enumerates thousands of sites per step).
_TORCH_SUPPORT = {
    torch.distributions.Categorical.enumerate_support:
        lambda fn: ("categorical", fn._num_events, fn._param.device),
    torch.distributions.Bernoulli.enumerate_support:
        lambda fn: ("bernoulli", fn._param.dtype, fn._param.device),
    torch.distributions.OneHotCategorical.enumerate_support:
        lambda fn: ("one_hot", fn.event_shape[0], fn._param.dtype, fn._param.device),
}
_SUPPORT_CACHE = {}


def enumerated_support(fn, dim):
    """``fn``'s support laid along ``dim`` (its values at dim, size 1 at every other dim
    right of it, then the event dims). Shared between calls where the support is fixed by
    the distribution's kind, size, dtype and device: treat it as read-only."""
    key_of = _TORCH_SUPPORT.get(type(fn).enumerate_support)
    key = None if key_of is None else key_of(fn) + (dim,)
    value = _SUPPORT_CACHE.get(key) if key is not None else None
    if value is None:
        support = fn.enumerate_support(expand=False)
        shape = (support.shape[0],) + (1,) * (-dim - 1) + tuple(fn.event_shape)
        value = support.reshape(shape)
        if key is not None:
            if len(_SUPPORT_CACHE) > 4096:  # bounded: sizes, dtypes, devices and dims
                _SUPPORT_CACHE.clear()
            _SUPPORT_CACHE[key] = value
    return value
