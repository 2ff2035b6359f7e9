"""Execute a Rényi plan: per-particle log weights from the plan's terms, then the bound and
its score-function surrogate.

The gradient. With β = 1 - α, normalized weights v_k = softmax_k(β w_k) and the bound
L = 1/β log(1/K Σ_k exp(β w_k)) of one slice:

    ∇ E[L] = E[ ∇L  +  Σ_k (L - b_k) ∇ log q(z_k) ],

where ∇L is the gradient through every term (the pathwise sites' reparameterized values, and
the parameters' direct appearance in log p and log q, score sites' log q included: unlike in
the ELBO, E[v_k ∇ log q(z_k)] is not zero), and the sum runs over the score-function sites'
log densities of particle k's draw. Any b_k that does not depend on z_k keeps this unbiased;
b_k is the bound with w_k replaced by the mean of the other particles' weights (VIMCO,
Mnih & Rezende 2016), or 0 with a single particle. The surrogate adds
Σ_k score_k * stop(L - b_k) minus its own value ("magic box"), so the loss value is -L.
"""

from __future__ import annotations

import functools
import math

import torch

from runtime.terms import masked_log_prob


@functools.lru_cache(maxsize=None)
def _summed_dims(ndim, keep):
    return tuple(d for d in range(-ndim, 0) if d not in keep)


def _reduce(tensor, keep):
    dims = _summed_dims(tensor.dim(), keep)
    return tensor.sum(dims, keepdim=True) if dims else tensor


def particle_weight(plan, scaled_terms, records, with_scores=True, site_scales=None):
    """One run's log weight and score-function log density, each summed over every dim but
    the common plates' (and the particle plate's, when vectorized).

    Args:
        plan: a RenyiPlan; scaled_terms: term key -> scaled, masked log-prob tensor (the
            runtime's ``LossParts.terms``); records: this run's guide and model records.
        site_scales: the step's per-site factors, if any (already in ``scaled_terms``).

    Returns:
        (w, score): tensors; ``score`` is None without score sites or when not asked.
    """
    layout = plan.renyi
    keep = layout.keep_dims
    weight = None
    for term in plan.terms:
        t = _reduce(scaled_terms[term.key], keep)
        t = t if term.program == "model" else -t
        weight = t if weight is None else weight + t
    if weight is None:
        weight = torch.zeros(())
    score = None
    if with_scores:
        for site, program in layout.scores:
            s = _reduce(_unscaled(scaled_terms, records, program, site, site_scales), keep)
            score = s if score is None else score + s
    return weight, score


def _unscaled(scaled_terms, records, program, site, site_scales):
    """The probability of the draw: the masked log density without scale (the recorded
    term itself when nothing scaled it)."""
    record = records[program][site]
    term = scaled_terms.get((program, site))
    if (term is not None and record["scale"].__class__ is float and record["scale"] == 1.0
            and not (site_scales and site in site_scales)):
        return term
    return masked_log_prob(record, program)


def _rank(layout):
    dims = layout.slice_dims + (() if layout.particle_dim is None else (layout.particle_dim,))
    return max((-d for d in dims), default=0)


def _to_rank(t, rank):
    """``t`` with exactly ``rank`` dims: left-padded with size-1 dims, or with its leading
    dims dropped (they lie left of every kept dim, so ``_reduce`` left them size 1)."""
    if t.dim() <= rank:
        return t.reshape((1,) * (rank - t.dim()) + tuple(t.shape))
    return t.reshape(tuple(t.shape[t.dim() - rank:]))


def stack_particles(layout, tensors):
    """(K, *slices): the runs' tensors stacked, or the vectorized run's particle dim moved
    first. Dims not kept are size 1.

    Every tensor is brought to the layout's rank first: a run's log weight and its score are
    reduced from terms of different plates (a score site outside a plate the data are in
    keeps fewer dims than the weight), and the two stacks must have the same shape, or
    ``scores * cost`` in ``renyi_bound`` would broadcast particle k's score against every
    particle's cost."""
    rank = _rank(layout)
    padded = [_to_rank(t, rank) for t in tensors]
    if layout.particle_dim is None:
        return torch.stack(torch.broadcast_tensors(*padded))
    (t,) = padded
    t = t.movedim(layout.particle_dim, 0)
    return t.expand((layout.num_particles,) + tuple(t.shape[1:]))


def renyi_bound(layout, weights, scores=None):
    """The bound estimate (a scalar tensor, differentiable through the weights) and the
    zero-valued surrogate for the score sites.

    Args:
        weights: (K, *slices) log weights, scaled as recorded.
        scores: (K, *slices) score sites' log densities, or None.
    """
    beta = 1.0 - layout.alpha
    k = weights.shape[0]
    if scores is not None and scores.dim() != weights.dim():
        raise ValueError(f"Rényi scores of shape {tuple(scores.shape)} do not match the log "
                         f"weights' {tuple(weights.shape)}: stack both with stack_particles")
    scale = layout.common_scale
    w = weights / scale if scale != 1.0 else weights  # each common slice at scale 1
    per_slice = (torch.logsumexp(beta * w, 0) - math.log(k)) / beta
    bound = per_slice.sum() * scale
    if scores is None:
        return bound, bound.new_zeros(())
    cost = per_slice.detach() - leave_one_out(w.detach(), beta)
    surrogate = (scores * cost).sum() * scale
    return bound, surrogate - surrogate.detach()


def leave_one_out(w, beta):
    """b_k: the bound with w_k replaced by the mean of the others (0 for one particle)."""
    k = w.shape[0]
    if k == 1:
        return w.new_zeros(())
    others_mean = (w.sum(0, keepdim=True) - w) / (k - 1)              # (K, *slices)
    # row k: every particle's weight, with entry k replaced by others_mean[k]
    rows = w.unsqueeze(0).expand((k,) + tuple(w.shape)).clone()      # (K, K, *slices)
    idx = torch.arange(k)
    rows[idx, idx] = others_mean
    return (torch.logsumexp(beta * rows, 1) - math.log(k)) / beta
