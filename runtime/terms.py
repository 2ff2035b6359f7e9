"""Log-prob terms of sites: the log density (errors naming the site), masks and scales.

Shared by the runtime's executor and by ``svigraph``'s ``Trace``, so a term means the same
thing in a compiled plan and in a hand-written ELBO.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from compiler.errors import SupportError

# a plate-expanded distribution's attribute: the distribution it was expanded from
UNEXPANDED = "_svigraph_unexpanded"


def site_log_prob(site, program=None):
    """The unscaled, unmasked log density of a sample site's value.

    Raises:
        SupportError: naming the site (and program) when the distribution refuses the value.
    """
    fn = site["fn"]
    try:
        base = fn.__dict__.get(UNEXPANDED)
        if base is not None:
            shape = _broadcast_shape(site["value"], fn)
            if shape is not None:
                lp = base.log_prob(site["value"])
                return lp if lp.shape == shape else lp.expand(shape)
        return fn.log_prob(site["value"])
    except ValueError as err:
        fn, value = site["fn"], site["value"]
        where = f"{program} site" if program else "site"
        raise SupportError(
            f"{where} {site['name']!r}: {type(fn).__name__}.log_prob failed: "
            f"{str(err).splitlines()[0]}",
            [f"value shape {tuple(getattr(value, 'shape', ()))}, batch {tuple(fn.batch_shape)}, "
             f"event {tuple(fn.event_shape)}, support {fn.support}"],
            "check that the value lies in the distribution's support and has the site's shape",
            site=site["name"]) from err


def _broadcast_shape(value, fn):
    """The shape ``fn.log_prob(value)`` has (value's batch dims broadcast with fn's), or None
    when they do not broadcast (then the full ``log_prob`` raises its own error)."""
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    return _broadcast(tuple(shape), len(fn.event_shape), tuple(fn.batch_shape))


@lru_cache(maxsize=1024)
def _broadcast(value_shape, event_dims, batch_shape):
    """Plain-tuple broadcasting, cached (``torch.broadcast_shapes`` costs microseconds)."""
    if event_dims:
        value_shape = value_shape[:len(value_shape) - event_dims]
    n = max(len(value_shape), len(batch_shape))
    a = (1,) * (n - len(value_shape)) + value_shape
    b = (1,) * (n - len(batch_shape)) + batch_shape
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return torch.Size(out)


def mask_log_prob(log_prob, mask):
    """Masked entries become exactly 0, even where the log density is -inf or nan."""
    if mask is None or mask is True:
        return log_prob
    return torch.where(mask, log_prob, log_prob.new_zeros(()))


def scale_and_mask(log_prob, scale=1.0, mask=None):
    """Apply a site's mask, then its scale."""
    log_prob = mask_log_prob(log_prob, mask)
    if not (scale.__class__ is float and scale == 1.0):
        log_prob = log_prob * scale
    return log_prob


def masked_log_prob(site, program=None, log_prob=None):
    """A site's log density with its mask applied (the score of a score-function site);
    ``log_prob``, when given, is its unmasked log density computed already."""
    if log_prob is None:
        log_prob = site_log_prob(site, program)
    return mask_log_prob(log_prob, site["mask"])
