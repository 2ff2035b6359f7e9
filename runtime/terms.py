"""Log-prob terms of sites: the log density (errors naming the site), masks and scales.

Shared by the runtime's executor and by ``svigraph``'s ``Trace``, so a term means the same
thing in a compiled plan and in a hand-written ELBO.
"""

from __future__ import annotations

import torch

from compiler.errors import SupportError


def site_log_prob(site, program=None):
    """The unscaled, unmasked log density of a sample site's value.

    Raises:
        SupportError: naming the site (and program) when the distribution refuses the value.
    """
    try:
        return site["fn"].log_prob(site["value"])
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


def masked_log_prob(site, program=None):
    """A site's log density with its mask applied (the score of a score-function site)."""
    return mask_log_prob(site_log_prob(site, program), site["mask"])
