"""Execute a Plan on one step's records: log-prob terms, then the score-function surrogate.

Every decision (which terms, which dims to sum for which site, which baseline) was made by
the compiler; this loop reads records and does tensor arithmetic, nothing else.
"""

from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from compiler.enumeration import factor_from_shape, plan_contraction
from compiler.errors import NonFiniteLossError
from runtime.analytic_kl import add_kl_terms
from runtime.contract import execute, raw_scan_groups
from runtime.enum_expectation import (carry_weighted_contraction, run_weighted_plan,
                                      weighted_contraction)
from runtime.stacked_terms import StackedLogProbs, stacked_log_probs
from runtime.terms import masked_log_prob, term_log_probs


class LossParts:
    """One particle's pieces: ``elbo`` (value), ``surrogate`` (zero-valued gradient carrier),
    and the scaled log-prob tensor of every term (for error reports).

    ``run_plan`` may build the negated ELBO directly (``neg_elbo``): the loss needs it, and a
    chain of ``guide - model`` ops spares the negations of ``-(elbo + ...)``. The ELBO
    itself is then derived only when read."""

    __slots__ = ("_elbo", "_neg_elbo", "surrogate", "terms", "_loss", "loss_value")

    def __init__(self, elbo, surrogate, terms, neg_elbo=None):
        self._elbo, self._neg_elbo = elbo, neg_elbo
        self.surrogate, self.terms, self._loss = surrogate, terms, None
        self.loss_value = None  # the float of ``loss()``, once ``check_finite`` read it

    @property
    def elbo(self):
        if self._elbo is None:
            self._elbo = -self._neg_elbo
        return self._elbo

    def loss(self, with_surrogate=None):
        """The particle's loss: value −ELBO, gradient −∇(ELBO + surrogate) (the surrogate
        rides along at zero value; a non-finite one makes the loss nan). The surrogate is
        left out when it needs no gradient, unless ``with_surrogate`` (a graph capture,
        whose inputs need none, keeps it)."""
        if self._loss is not None and with_surrogate is None:
            return self._loss  # the check of the step's loss built it already
        neg = self._neg_elbo if self._neg_elbo is not None else -self._elbo
        s = self.surrogate
        keep = s.requires_grad if with_surrogate is None else with_surrogate
        loss = neg - (s - s.detach()) if keep else neg
        if with_surrogate is None:
            self._loss = loss
        return loss


def run_plan(plan, records, baselines=None, with_surrogate=True, site_scales=None):
    """Compute one particle's ELBO and surrogate.

    Args:
        plan: the compiled Plan.
        records: {"guide": name -> record, "model": name -> record} for this step.
        baselines: a ``BaselineState`` (or None when the plan has no baselines).
        with_surrogate: False for loss-only evaluation.
        site_scales: optional {site: factor} multiplying both its model and guide terms this
            step (KL annealing without recompiling); the costs see the scaled terms.
    """
    if plan.guide_enum or (plan.enum_terms and plan.scores):  # an expectation over q(enum)
        return run_weighted_plan(plan, records, baselines, with_surrogate, site_scales)
    unscaled, scaled, sums = {}, {}, []
    stacked = stacked_log_probs(plan, records)  # sites in loops: one log_prob per group
    for term in plan.terms:
        site = records[term.program][term.site]
        unscaled[term.key], lp = term_log_probs(site, term, site_scales, stacked.get(term.key))
        scaled[term.key] = lp
        total = lp.sum() if lp.dim() else lp  # a scalar term needs no sum (nor its node)
        sums.append(total.detach() if term.stop_gradient else total)
    if plan.kl_terms:  # TraceMeanField_ELBO: -KL(q || p) terms, indexed after plan.terms
        add_kl_terms(plan.kl_terms, records, scaled, sums, site_scales)
    scored = with_surrogate and plan.scores  # the surrogate reads the signed totals...
    # ... unless every score's cost takes every term whole: the ELBO's own value, then
    everything = scored and all(len(s.whole_terms) == len(sums) for s in plan.scores)
    elbo = neg_elbo = totals = None
    if not sums and plan.enum_terms and not scored:
        pass  # the ELBO is the log marginal alone (a model with no guide sites: an HMM)
    elif (not scored or everything) and 0 < len(sums) <= _CHAIN_AT_MOST:
        neg_elbo = _negated_sum(plan, sums)
    else:
        # signed (+ log p, - log q) by one multiplication rather than a negation per term
        totals = torch.stack(sums) * _term_signs(plan, sums[0], len(sums)) if sums \
            else torch.zeros(0)
        elbo = totals.sum()
    term_tensors = scaled
    if plan.enum_terms:
        marginal, taken = _log_marginal(plan, records, scaled, stacked)
        if taken:  # factors a scan took whole from their stacks: their rows when read
            term_tensors = _TermsWithRows(plan, scaled, stacked)
        if neg_elbo is not None:
            neg_elbo = neg_elbo - marginal
        else:
            elbo = marginal if elbo is None else elbo + marginal
    surrogate = (elbo if neg_elbo is None else neg_elbo).new_zeros(())
    if scored:
        if totals is None:
            whole = [-neg_elbo.detach()] * len(plan.scores)
        else:
            whole = _whole_term_weights(plan, totals) @ totals.detach()
        # one stack and sum rather than a chain of additions: fewer ops and autograd nodes
        # (the surrogate's value is cancelled; its gradient is the same either way)
        terms = [_score_term(score_plan, records, unscaled, scaled, baselines, whole[i])
                 for i, score_plan in enumerate(plan.scores)]
        surrogate = terms[0] if len(terms) == 1 else torch.stack(terms).sum()
        if baselines is not None and baselines.nn_loss is not None:
            # The loss is -(elbo + surrogate): subtracting the baselines' squared error here
            # makes the optimizer minimize it, at zero value.
            surrogate = surrogate - baselines.nn_loss
            baselines.nn_loss = None
    return LossParts(elbo, surrogate, term_tensors, neg_elbo)


class _TermsWithRows(Mapping):
    """``LossParts.terms`` when a scan took some enumerated factors whole from their stacks
    (``_log_marginal``): the per-site log densities of those are cut from the stacks on first
    read (an error report, Rényi's weights, sequential enumeration), in the order
    ``run_plan`` would have put them."""

    def __init__(self, plan, scaled, stacked):
        self._plan, self._scaled, self._stacked, self._terms = plan, scaled, stacked, None

    def _all(self):
        if self._terms is None:
            enum_keys = [t.key for t in self._plan.enum_terms]
            skip = set(enum_keys)
            terms = {k: v for k, v in self._scaled.items() if k not in skip}
            for key in enum_keys:
                value = self._scaled.get(key)
                terms[key] = value if value is not None else self._stacked.get(key)
            self._terms = terms
        return self._terms

    def __getitem__(self, key):
        return self._all()[key]

    def __iter__(self):
        return iter(self._all())

    def __len__(self):
        return len(self._all())


# Up to this many terms, a chain of additions costs fewer ops and autograd nodes than a
# stack, a multiplication by the signs and a sum.
_CHAIN_AT_MOST = 4


def _negated_sum(plan, sums):
    """The negated ELBO: the sum of -total (model) and +total (guide) over the terms, as a
    chain of ops (a leading guide term needs no negation); entries after ``plan.terms``
    (KL terms) come signed as ELBO terms."""
    neg = None
    for i, total in enumerate(sums):
        positive = i < len(plan.terms) and plan.terms[i].program != "model"
        if neg is None:
            neg = total if positive else -total
        else:
            neg = neg + total if positive else neg - total
    return neg


_WEIGHTS = weakref.WeakKeyDictionary()  # plan -> (scores x terms) 0/1 matrix
_SIGNS = weakref.WeakKeyDictionary()  # plan -> +1 (model) / -1 (guide) per entry of the totals


def _term_signs(plan, like, n):
    """The sign of each total: -1 for guide terms; entries after ``plan.terms`` (KL terms)
    come signed already."""
    signs = _SIGNS.get(plan)
    if signs is None or len(signs) != n or signs.dtype != like.dtype or signs.device != like.device:
        signs = torch.tensor([1.0 if t.program == "model" else -1.0 for t in plan.terms]
                             + [1.0] * (n - len(plan.terms)), dtype=like.dtype, device=like.device)
        _SIGNS[plan] = signs
    return signs
_CONTRACTIONS = weakref.WeakKeyDictionary()  # plan -> _EnumLayout


@dataclass(frozen=True)
class _EnumLayout:
    """What ``_log_marginal`` needs beyond the records, fixed by the plan's structure."""

    contraction: object      # the planned ContractionPlan
    keys: tuple              # factor name per enum term
    plate_scales: dict       # subsampled plate -> size / subsample_size
    factor_plate_scale: dict  # factor name -> product of its subsampled plates' scales


def _log_marginal(plan, records, scaled, stacked):
    """Sum the enumerated sites out of the factor terms exactly: log sum_z prod factors.

    The contraction (elimination order, opt_einsum paths, parallel scans of long chains) is
    planned on a plan's first step, when the factor shapes are known (the structure key fixes
    them), and then reused. A subsampled plate's scale multiplies the product over that plate
    where the contraction reduces it; any other scale (``handlers.scale``) multiplies the log
    of the sum its factors take part in (see ``runtime.contract.execute``).

    A scan's factors that are consecutive rows of one stacked group (an HMM's steps) go to
    the scan as that stack's slice: no tensor per site. Returns (the log marginal, whether
    it did so: those sites' terms are then not in ``scaled``).
    """
    model = records["model"]
    layout, planned = _CONTRACTIONS.get(plan), {}
    if layout is None:
        layout = _CONTRACTIONS[plan] = _plan_log_marginal(plan, model, planned)
    links = stacks = None
    if stacked.__class__ is StackedLogProbs:
        links = _LINKS.get(plan)
        if links is None or links.index is not stacked.index:  # (planned for these groups)
            links = _LINKS[plan] = _plan_links(plan, layout, stacked.index)
        if links.items and not planned:
            stacks = _stacks(links, stacked)
    factors = zip(plan.enum_terms, layout.keys) if stacks is None else links.rest
    tensors, factor_scales = {}, None
    for term, key in factors:
        site = model[term.site]
        lp = planned.get(key) if planned else None
        if lp is None:
            lp = stacked.get(term.key)  # (the term's key is ("model", site))
            if lp is None or site["mask"] is not None:
                lp = masked_log_prob(site, "model", lp)
        tensors[key] = scaled[term.key] = lp
        scale = site["scale"]
        if not (scale.__class__ is float and scale == 1.0):
            residual = scale / layout.factor_plate_scale.get(key, 1.0)
            if not (residual.__class__ is float and abs(residual - 1.0) < 1e-12):
                factor_scales = factor_scales or {}
                factor_scales[key] = residual
    marginal = execute(layout.contraction, tensors, plate_scales=layout.plate_scales,
                       factor_scales=factor_scales, stacks=stacks)
    return marginal, stacks is not None


class _Links:
    """The scan groups whose factors are rows of one stacked group (``items``: scan group
    id, stacked group, first and past-last row, the site scale each of those sites must
    have: its plates' scale), and (term, factor name) of the other enum terms (``rest``);
    ``index`` is the stacked groups' row index they were found in."""

    __slots__ = ("items", "rest", "index")

    def __init__(self, items, rest, index):
        self.items, self.rest, self.index = items, rest, index


_LINKS = weakref.WeakKeyDictionary()  # plan -> _Links


def _plan_links(plan, layout, index):
    site_of = dict(zip(layout.keys, (t.site for t in plan.enum_terms)))
    items, taken = [], set()
    for group, names in raw_scan_groups(layout.contraction):
        rows = [index.get(("model", site_of.get(n))) for n in names]
        if not rows or rows[0] is None:
            continue
        first, start = rows[0]
        scales = {layout.factor_plate_scale.get(n, 1.0) for n in names}
        if len(scales) == 1 and all(r == (first, start + k) for k, r in enumerate(rows)):
            items.append((id(group), first, start, start + len(names), scales.pop()))
            taken.update(site_of[n] for n in names)
    rest = tuple((t, key) for t, key in zip(plan.enum_terms, layout.keys) if t.site not in taken)
    return _Links(tuple(items), rest, index)


def _stacks(links, stacked):
    """``id(scan group) -> its factors' stacked slice`` for this step, or None when a
    linked group did not stack this step or one of its sites has a mask or another scale
    (the site-by-site path then applies them)."""
    stacks = {}
    for group_id, first, start, stop, scale in links.items:
        group = stacked.groups[first]
        if group is None:
            return None
        try:  # one (mask, scale) pair for all the rows, in C: a set of them
            (seen,) = set(map(_MASK_AND_SCALE, group.sites[start:stop]))
        except (TypeError, ValueError):  # several pairs, or an unhashable scale
            return None
        mask, s = seen
        if mask is not None or s.__class__ is not float or s != scale:
            return None
        stacks[group_id] = group.rows(start, stop)
    return stacks


_MASK_AND_SCALE = operator.itemgetter("mask", "scale")


def plan_contraction_now(plan, records):
    """Plan ``plan``'s contraction from one run's records (the structure key fixes the
    shapes, so any run of the structure gives the same plan) and return the
    ContractionPlan, or None when no model site is summed out. The runtime then executes
    it as planned; ``carry_contraction`` hands it to a copy of the plan."""
    if not plan.enum_terms:
        return None
    with torch.no_grad():  # only the log-probs' shapes are needed
        if plan.guide_enum or plan.scores:  # the weighted path plans it on its first run
            run_weighted_plan(plan, records, with_surrogate=False)
            return weighted_contraction(plan)
        layout = _CONTRACTIONS[plan] = _plan_log_marginal(plan, records["model"], {})
    return layout.contraction


def carry_contraction(plan, copy):
    """Let ``copy`` (the same plan, another object) execute ``plan``'s planned contraction."""
    if plan in _CONTRACTIONS:
        _CONTRACTIONS[copy] = _CONTRACTIONS[plan]
    carry_weighted_contraction(plan, copy)


def _plan_log_marginal(plan, model, log_probs):
    """Plan the contraction from this step's records; leaves each factor's log-prob tensor
    in ``log_probs`` by factor name (their shapes are planned for)."""
    keys = []
    var_dims, var_sizes, plate_dims, plate_sizes = {}, {}, {}, {}
    plate_scales, factor_plate_scale, layout = {}, {}, []
    for term in plan.enum_terms:
        site = model[term.site]
        key = f"model:{term.site}"
        keys.append(key)
        if "enum_dim" in site:
            var_dims[term.site] = site["enum_dim"]
            var_sizes[term.site] = site["value"].shape[0]
        frames = [f for f in site["cond_indep_stack"] if f.dim is not None]
        scale = 1.0
        for f in frames:
            plate_dims[f.name], plate_sizes[f.name] = f.dim, f.subsample_size
            if f.size is not None and f.size != f.subsample_size:
                plate_scales[f.name] = f.size / f.subsample_size
                scale *= plate_scales[f.name]
        if scale != 1.0:
            factor_plate_scale[key] = scale
        lp = log_probs[key] = masked_log_prob(site, "model")
        shape = tuple(lp.shape)
        layout.append((key, shape, tuple(f.name for f in frames), term.reads))
    # each factor names only the variables it reads: under markov, one dim holds
    # different variables at different steps
    factors = [factor_from_shape(key, shape, var_dims={v: var_dims[v] for v in reads},
                                 plate_dims=plate_dims, plates=plates)
               for key, shape, plates, reads in layout]
    contraction = plan_contraction(factors, tuple(var_dims), tuple(plate_sizes),
                                   plate_sizes=plate_sizes, var_sizes=var_sizes)
    return _EnumLayout(contraction, tuple(keys), plate_scales, factor_plate_scale)


def _whole_term_weights(plan, totals):
    weights = _WEIGHTS.get(plan)
    if weights is None or weights.dtype != totals.dtype or weights.device != totals.device:
        weights = torch.zeros(len(plan.scores), len(totals), dtype=totals.dtype,
                              device=totals.device)
        for i, score_plan in enumerate(plan.scores):
            weights[i, list(score_plan.whole_terms)] = 1.0
        _WEIGHTS[plan] = weights
    return weights


def _score_term(score_plan, records, unscaled, scaled, baselines, whole_cost):
    key = (score_plan.program, score_plan.site)
    score = unscaled.get(key)
    if score is None:  # a prior-sampled model site: its own term is not in the ELBO
        score = masked_log_prob(records[score_plan.program][score_plan.site], score_plan.program)
    if score_plan.score_dims:
        score = score.sum(score_plan.score_dims, keepdim=True)
    cost = whole_cost  # the terms summed whole: already signed and detached
    for term, dims in score_plan.costs:
        t = scaled[term].detach()
        if dims:
            t = t.sum(dims, keepdim=True)
        cost = cost + t if term[0] == "model" else cost - t
    if cost.dim() > score.dim():  # leading dims of plated terms, summed to size 1
        cost = cost.reshape(cost.shape[cost.dim() - score.dim():])
    if score_plan.baseline is not None:
        cost = cost - baselines.value(score_plan, cost, records)
    weighted = score * cost
    return weighted.sum() if weighted.dim() else weighted


def check_finite(plan, parts, step=None):
    """Raise ``NonFiniteLossError`` naming the first non-finite term, if any."""
    value = parts.loss().item()  # the loss the step uses: one sync
    if math.isfinite(value):
        parts.loss_value = value
        return
    if bool(torch.isfinite(parts.elbo)):
        if bool(torch.isfinite(parts.surrogate)):
            return
        raise NonFiniteLossError(
            "the surrogate (score-function terms) is not finite although the ELBO is"
            + (f" at step {step}" if step is not None else ""),
            ["a score log q(z) or a baseline is nan/inf; parameters were not updated"],
            "check neural baselines' outputs and guide parameters at the edge of their "
            "support (probabilities of exactly 0 or 1)")
    for key, tensor in parts.terms.items():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            site = plan.sites[key[1]]
            plate_names = plan.graph.nodes[key[1]]["plates"]
            plates = ", ".join(plate_names) or "none"
            raise NonFiniteLossError(
                f"loss term ('{key[0]}', '{key[1]}') is {_kind(tensor[bad])}"
                + (f" at step {step}" if step is not None else ""),
                [f"{int(bad.sum())} of {tensor.numel()} entries not finite; term shape "
                 f"{tuple(tensor.shape)}, plates: {plates}",
                 f"site {key[1]!r}: estimator {site.estimator}; parameters were not updated"],
                "look for a parameter that overflowed (lower the learning rate, or clip\n"
                'gradients: sg.optim.Adam({"lr": 1e-3}, clip_args={"clip_norm": 10.0})),\n'
                "or data outside the support of the distribution that scores it",
                site=key[1], plate=plate_names[-1] if plate_names else None,
                shapes={"term": tuple(tensor.shape)})
    raise NonFiniteLossError(f"the ELBO is {_kind(parts.elbo)} although every term is finite "
                             "(terms of opposite infinite sign?)", fix="inspect the plan's terms")


def _kind(t):
    return "nan" if bool(torch.isnan(t).any()) else "inf"
