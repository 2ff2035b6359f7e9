"""The analytic KL terms of a plan, computed from one step's records.

For a latent site z with guide record q and model record p, the Monte Carlo pair of terms is
``w_p log p(z) - w_q log q(z)`` with ``w = scale * mask`` per side. Its expectation over z
given the distributions is ``-(w_p KL(q || p) + (w_p - w_q) H(q))``; the cost computed here is
that, without the sign. When both sides carry the same mask and scale (the usual case: a site
in the same plates, masks and scale handlers on both sides) it is ``w KL(q || p)``, and q's
entropy is not needed; otherwise (``handlers.scale`` on the model only, say, for a
beta-weighted KL) it stays exact by adding the entropy term.

Wrappers are peeled here, not by torch: ``Independent`` on both sides (the KL is summed over
the reinterpreted dims, also for derived rules, which torch's own Independent rule would not
find) and masked distributions (their masks join the weights).
"""

from __future__ import annotations

import torch

from compiler.analytic_kl import kl_rule
from compiler.errors import MeanFieldError
from compiler.kl_derived import NoClosedForm

_NO_WEIGHT = (None, 1.0)


def _is_masked(fn):
    return hasattr(fn, "_mask") and hasattr(fn, "base_dist")


def family_signature(fn):
    """What a distribution is, structurally: ("dist", cls), ("independent", n, inner) or
    ("masked", inner). The compiler decides each site's KL rule from these."""
    if _is_masked(fn):
        return ("masked", family_signature(fn.base_dist))
    if isinstance(fn, torch.distributions.Independent):
        return ("independent", fn.reinterpreted_batch_ndims, family_signature(fn.base_dist))
    return ("dist", type(fn))


def family_pairs(guide_sites, model_sites):
    """site -> (guide signature, model signature) for the latents both programs sample."""
    return {name: (family_signature(site["fn"]), family_signature(model_sites[name]["fn"]))
            for name, site in guide_sites.items()
            if name in model_sites and not model_sites[name]["is_observed"]}


def add_kl_terms(kl_terms, records, scaled, sums, site_scales=None):
    """Compute each KL term: ``scaled[key]`` gets its weighted cost tensor (batch shape) and
    ``sums`` its ELBO contribution, ``-cost.sum()``."""
    guide, model = records["guide"], records["model"]
    for term in kl_terms:
        extra = site_scales.get(term.site) if site_scales else None
        cost = kl_cost(guide[term.site], model[term.site], extra)
        scaled[term.key] = cost
        sums.append(-cost.sum())


def kl_cost(guide_site, model_site, extra_scale=None):
    """``E_q[w_q log q - w_p log p]`` of one site, per batch element, in closed form."""
    q_scale, p_scale = guide_site["scale"], model_site["scale"]
    if extra_scale is not None:
        q_scale, p_scale = q_scale * extra_scale, p_scale * extra_scale
    return _cost(guide_site["fn"], model_site["fn"], (_mask_of(guide_site), q_scale),
                 (_mask_of(model_site), p_scale), guide_site["name"])


def _mask_of(site):
    mask = site["mask"]
    return None if mask is None or mask is True else mask


def _peel_mask(fn, weight):
    mask, scale = weight
    while _is_masked(fn):
        inner = fn._mask
        mask = inner if mask is None else mask & inner
        fn = fn.base_dist
    return fn, (mask, scale)


def _cost(q, p, q_weight, p_weight, name):
    q, q_weight = _peel_mask(q, q_weight)
    p, p_weight = _peel_mask(p, p_weight)
    independent = torch.distributions.Independent
    if isinstance(q, independent) or isinstance(p, independent):
        n = q.reinterpreted_batch_ndims if isinstance(q, independent) else 0
        if n != (p.reinterpreted_batch_ndims if isinstance(p, independent) else 0):
            raise _stale(name, q, p, "they reinterpret different numbers of dims as events")
        inner = _cost(q.base_dist, p.base_dist, _NO_WEIGHT, _NO_WEIGHT, name)
        kl = inner.sum(tuple(range(-n, 0)))
    else:
        try:
            _, rule = kl_rule(type(q), type(p))
        except NoClosedForm as why:
            raise _stale(name, q, p, str(why)) from None
        kl = rule(q, p)
    return _weigh(kl, q, q_weight, p_weight)


def _weigh(kl, q, q_weight, p_weight):
    (q_mask, q_scale), (p_mask, p_scale) = q_weight, p_weight
    same_scale = q_scale is p_scale or (q_scale.__class__ is float and p_scale.__class__ is float
                                        and q_scale == p_scale)
    masked = kl if p_mask is None else torch.where(p_mask, kl, kl.new_zeros(()))
    if not (p_scale.__class__ is float and p_scale == 1.0):
        masked = masked * p_scale
    if q_mask is p_mask and same_scale:
        return masked
    # E_q[w_q log q - w_p log p] = w_p KL + (w_p - w_q) H(q), whatever the two weights are
    return masked + (_weight(p_mask, p_scale, kl) - _weight(q_mask, q_scale, kl)) * q.entropy()


def _weight(mask, scale, like):
    w = like.new_ones(()) if mask is None else mask.to(like.dtype)
    return w * scale


def _stale(name, q, p, why):
    return MeanFieldError(
        f"site {name!r}: the plan computes KL({type(q).__name__} || {type(p).__name__}) "
        "analytically, but this step's distributions have no such rule",
        [why, "the site's distribution families changed since the plan was compiled"],
        "keep each site's distribution families fixed from step to step, or use "
        "Trace_ELBO", site=name)
