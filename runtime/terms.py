"""Log-prob terms of sites: the log density (errors naming the site), masks and scales.

Shared by the runtime's executor and by ``svigraph``'s ``Trace``, so a term means the same
thing in a compiled plan and in a hand-written ELBO.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from compiler.errors import SupportError
from runtime.support import enumerated_support

# a plate-expanded distribution's attribute: the distribution it was expanded from
UNEXPANDED = "_svigraph_unexpanded"
# ... and, when its parameters were left unexpanded (its batch shape is the full one), True:
# only its shapes and its log density through ``site_log_prob`` may be read from it
LAZY_EXPANDED = "_svigraph_lazy_expanded"


def expanded_for_real(fn):
    """A lazily plate-expanded distribution with its parameters expanded (to sample it)."""
    base = fn.__dict__[UNEXPANDED]
    full = base.expand(fn.batch_shape)
    full.__dict__[UNEXPANDED] = base
    return full


def site_log_prob(site, program=None):
    """The unscaled, unmasked log density of a sample site's value.

    Raises:
        SupportError: naming the site (and program) when the distribution refuses the value.
    """
    fn = site["fn"]
    try:
        base = fn.__dict__.get(UNEXPANDED)
        if base is not None:
            lp = enumerated_categorical_log_prob(site, base)
            if lp is None:
                lp = base.log_prob(site["value"])
            # the expanded distribution's log density is this one broadcast over its batch
            # shape (also for a factor, whose log density ignores the value)
            shape = broadcast_shape(tuple(lp.shape), tuple(fn.batch_shape))
            if shape is not None:
                return lp if lp.shape == shape else lp.expand(shape)
        lp = enumerated_categorical_log_prob(site, fn)
        if lp is not None:
            return lp
        return fn.log_prob(site["value"])  # (a shape that does not broadcast raises here)
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


def enumerated_categorical_log_prob(site, fn):
    """A Categorical's log density at its whole support laid along the site's enumeration
    dim, as views of its normalized logits (the support's k-th value scores logits[..., k]);
    None unless the site is such a site. Equal to ``fn.log_prob(value)``, which gathers."""
    dim = site.get("enum_dim")
    if dim is None or type(fn).log_prob is not _CATEGORICAL_LOG_PROB:
        return None
    logits = fn.logits
    batch, k = tuple(logits.shape[:-1]), logits.shape[-1]
    value = site["value"]
    if value.shape != (k,) + (1,) * (-dim - 1) or value is not enumerated_support(fn, dim):
        return None
    if not batch:  # one table (mixture weights): its logits laid along the dim, one view
        return logits.view(value.shape)
    rank = max(-dim, len(batch))
    at = rank + dim  # the enumeration dim's position, counted from the left
    if at < rank - len(batch) or batch[at - (rank - len(batch))] == 1:
        logits = logits.reshape((1,) * (rank - len(batch)) + batch + (k,))
        return logits.transpose(at, -1).squeeze(-1)
    return None


_CATEGORICAL_LOG_PROB = torch.distributions.Categorical.log_prob


@lru_cache(maxsize=1024)
def broadcast_shape(a, b):
    """Plain-tuple broadcasting of two shapes, or None when they do not broadcast; cached
    (``torch.broadcast_shapes`` costs microseconds)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
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


def term_log_probs(site, term, site_scales=None, log_prob=None):
    """A plan term's (masked, scaled) log densities: the masked one (a score site's score)
    and the one the ELBO adds, scaled by the site's scale times ``site_scales[site]``
    (per-step annealing). ``log_prob``: the unmasked density, when computed already."""
    masked = masked_log_prob(site, term.program, log_prob)
    scale = site["scale"]
    if site_scales and term.site in site_scales:
        scale = scale * site_scales[term.site]
    if scale.__class__ is float and scale == 1.0:
        return masked, masked
    return masked, masked * scale
