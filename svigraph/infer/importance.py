"""Importance sampling: weighted model traces, with the log weights from a compiled plan.

Each sample runs the guide (the proposal) and the model replayed on it under the same lean
recording handler that SVI steps use, looks the plan up by the run's structure key (tracing
and compiling only a structure not seen before), and executes the plan's log-prob terms:
the plan's ELBO value for one particle is exactly the log importance weight
``log p(x, z) - log q(z)``, scales and masks included.
"""

from __future__ import annotations

import math

import torch

from runtime.executor import run_plan
from svigraph.effects import new_message
from svigraph.handlers import block
from svigraph.infer.abstract_infer import PosteriorError, TracePosterior, return_site
from svigraph.infer.trace_elbo import Trace_ELBO
from runtime.terms import LAZY_EXPANDED, expanded_for_real
from svigraph.recording import Recorder
from svigraph.trace_struct import Trace


class LogWeightsMixin:
    """Summaries of a ``log_weights`` attribute (a list of 0-dim tensors or one tensor)."""

    def _log_weight_tensor(self, what):
        if len(self.log_weights) == 0:
            raise PosteriorError(
                f"{what}: there are no log weights yet",
                fix="call .run(*model_args) first, e.g. Importance(model, guide, 1000).run(data)")
        w = self.log_weights
        return w if isinstance(w, torch.Tensor) else torch.stack([torch.as_tensor(x) for x in w])

    def get_log_normalizer(self):
        """The log of the mean importance weight, ``logsumexp(w) - log N``: an estimate of
        the log evidence ``log p(x)`` (unbiased for ``p(x)`` itself, not for its log)."""
        log_w = self._log_weight_tensor("get_log_normalizer")
        return torch.logsumexp(log_w.reshape(-1), 0) - math.log(log_w.numel())

    def get_normalized_weights(self, log_scale=False):
        """The self-normalized weights ``softmax(w)`` (their logs if ``log_scale``)."""
        log_w = self._log_weight_tensor("get_normalized_weights").reshape(-1)
        log_norm = log_w - torch.logsumexp(log_w, 0)
        return log_norm if log_scale else log_norm.exp()

    def get_ESS(self):
        """The effective sample size ``1 / sum_i wbar_i^2`` of the normalized weights ``wbar``:
        N for equal weights, 1 when one weight dominates."""
        log_norm = self.get_normalized_weights(log_scale=True)
        return torch.exp(-torch.logsumexp(2.0 * log_norm, 0))


def prior_proposal(model):
    """The model run with its observed sites hidden: a guide that proposes from the prior."""
    return block(model, hide_fn=lambda msg: msg["type"] == "sample" and msg["is_observed"])


def _param_site(name, value):
    msg = new_message("param", name, None, value)
    msg["event_dim"] = None
    return msg


def _as_trace(recorder, returned):
    """A user-facing Trace of one recorded run (the records themselves, not copies)."""
    tr = Trace()
    tr.update(recorder.subsamples)
    tr.update(recorder.sites)
    for site in recorder.sites.values():  # a user may read a site's parameters
        if LAZY_EXPANDED in site["fn"].__dict__:
            site["fn"] = expanded_for_real(site["fn"])
    for name, value in recorder.params.items():
        tr[name] = _param_site(name, value)
    tr["_RETURN"] = return_site(returned)
    return tr


class Importance(TracePosterior, LogWeightsMixin):
    """Importance sampling with the guide as proposal (the prior when ``guide`` is None).

    ``run(*args, **kwargs)`` draws ``num_samples`` weighted model traces; then
    ``get_log_normalizer()`` estimates ``log p(x)``, ``get_ESS()`` says how many samples the
    weights are worth, and ``EmpiricalMarginal(importance, "z")`` is the weighted posterior.

    The log weight of each sample is the value of a compiled ``Trace_ELBO`` plan on that
    sample's records (one particle): the same terms, scales and masks as SVI's ELBO.

    Args:
        model: the model.
        guide: the proposal; its latent sites must cover the model's (as for SVI).
        num_samples: samples per ``run`` (default 10).

    Example:
        >>> posterior = Importance(model, guide=None, num_samples=1000).run(data)
        >>> posterior.get_log_normalizer(), EmpiricalMarginal(posterior, "z").mean
    """

    def __init__(self, model, guide=None, num_samples=10):
        if num_samples is None:
            num_samples = 10
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
        super().__init__()
        self.model = model
        self.guide = prior_proposal(model) if guide is None else guide
        self.num_samples = int(num_samples)
        self.elbo = Trace_ELBO()  # holds the plan cache: one compile per structure

    @property
    def plan(self):
        """The plan the last sample was weighted with."""
        return self.elbo.last_plan

    def _traces(self, *args, **kwargs):
        with torch.no_grad():
            for _ in range(self.num_samples):
                yield self._weighted_trace(args, kwargs)

    def _weighted_trace(self, args, kwargs):
        guide_rec = Recorder()
        with guide_rec:
            self.guide(*args, **kwargs)
        model_rec = Recorder(replay=guide_rec)
        with model_rec:
            returned = self.model(*args, **kwargs)
        plan = self.elbo._plan_for(self.model, self.guide, args, kwargs, guide_rec, model_rec)
        parts = run_plan(plan, {"guide": guide_rec.sites, "model": model_rec.sites},
                         with_surrogate=False)
        return _as_trace(model_rec, returned), parts.elbo
