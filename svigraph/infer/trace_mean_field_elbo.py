"""TraceMeanField_ELBO: analytic KL(q || p) for latent sites where the pair has a closed form.

For each latent site z whose guide and model distributions have a closed-form KL (torch's
registry, or a pair derived symbolically in ``compiler.kl_derived``, such as LogNormal guides
for Gamma or HalfNormal priors), the compiler replaces the Monte Carlo terms
``log p(z) - log q(z)`` by ``-KL(q_z || p_z)``: the same expectation, with no sampling noise.
The plan reports such sites with estimator ``"analytic_kl"``; the others keep Monte Carlo
terms, with a note in the plan saying why.

Requirements and choices:

* The model must be mean-field: no latent's model distribution may read another latent
  (``MeanFieldError`` otherwise; use Trace_ELBO or TraceGraph_ELBO).
* The guide need not be: a guide site whose distribution reads another guide sample u gets
  its KL term too; that term depends on u, so a score-function u is weighted by it (and a
  pathwise u gets its gradient through autograd).
* Sites still draw their values for the terms downstream of them, pathwise or by score
  function, Rao-Blackwellized as in TraceGraph_ELBO.
* Plates, subsampling scale, masks, ``handlers.scale`` and ``site_scales`` weight the KL like
  the log-prob terms they replace (exactly, also when model and guide are weighted
  differently). ``Independent`` pairs sum the KL over their event dims.

Reference: Kingma & Welling (2014), "Auto-encoding variational Bayes" (the analytic KL term).
"""

from __future__ import annotations

from compiler.baselines import baseline_specs
from compiler.pipeline import compile_plan
from runtime.analytic_kl import family_pairs
from svigraph.infer.elbo import ELBO


class TraceMeanField_ELBO(ELBO):
    """ELBO with analytic KL divergences for mean-field models (see the module docstring).

    Takes the arguments of :class:`ELBO`. ``loss``, ``differentiable_loss``,
    ``loss_and_grads`` and ``compile`` behave as for every objective.
    """

    loss_name = "TraceMeanField_ELBO"
    downstream_only = True
    _records = None  # (guide, model) Recorders of the step being planned

    def _plan_for(self, model, guide, args, kwargs, guide_rec, model_rec):
        # A compile needs this step's distributions (the KL rule is chosen by family); the
        # records are held only for the lookup, so a cache hit costs one assignment.
        self._records = (guide_rec, model_rec)
        try:
            return super()._plan_for(model, guide, args, kwargs, guide_rec, model_rec)
        finally:
            self._records = None

    def _compile_graph(self, graph, key):
        # without this step's distributions (a caller outside _plan_for) every latent keeps
        # its Monte Carlo terms, which is sound, and the plan's notes say so
        pairs = family_pairs(self._records[0].sites, self._records[1].sites) \
            if self._records else {}
        return compile_plan(graph, loss_name=self.loss_name, options=self.options(), key=key,
                            downstream_only=True, baselines=baseline_specs, analytic_kl=pairs)
