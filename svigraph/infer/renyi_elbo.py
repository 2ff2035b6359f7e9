"""RenyiELBO: the Rényi α bound (Li & Turner 2016); α = 0 is the IWAE bound (Burda et al. 2016).

Each step records K runs of the guide and the model (or one vectorized run), looks each run's
plan up by structure as every ELBO does, and computes the plan's log-prob terms with the
runtime. ``runtime.renyi`` turns the terms into per-particle log weights and the bound; its
module docstring derives the score-function gradient.
"""

from __future__ import annotations

import math

import torch

from compiler import compile_plan
from compiler.baselines import PARTICLE_PLATE
from compiler.errors import NonFiniteLossError
from compiler.renyi import RenyiError, check_renyi_graph, make_renyi_plan, renyi_layout
from runtime.executor import check_finite, run_plan
from runtime.renyi import particle_weight, renyi_bound, stack_particles
from svigraph.infer.elbo import ELBO, raise_if_params_not_finite
from svigraph.recording import Recorder


class RenyiELBO(ELBO):
    """The Rényi α-divergence bound, estimated with K particles z_k drawn from the guide:

        bound = 1/(1-α) log( 1/K Σ_k exp((1-α) w_k) ),   w_k = log p(x, z_k) - log q(z_k).

    α = 0 gives the importance weighted (IWAE) bound, tighter than the ELBO and rising to
    log p(x) as K grows; for 0 ≤ α < 1, E[bound] ≤ log p(x); α < 0 gives no lower bound.
    α = 1 (the ELBO) is refused: use ``Trace_ELBO``, whose gradients have lower variance.

    Plates that every site is in factorize the joint, so a weight is kept per slice of them
    and the slices' bounds are summed (as in Pyro). ``print(elbo.compile(...))`` shows the
    weight, the bound and the estimate in words.

    Minibatches (``subsample_size``), which Pyro's RenyiELBO does not support. The K
    particles of one step share each plate's subsample (drawn by the first particle), also
    when they run one by one, so all K weights are of the same minibatch:

    * a subsampled plate that every site is in (a VAE's data plate): each slice's weight is
      taken at scale 1 and the sum of the minibatch's slice bounds is multiplied by
      size/subsample: an unbiased estimate of the full data's sum of per-datapoint bounds;
    * a subsampled plate some site is outside of (with global latents): the size/subsample
      factor stays inside w_k, so the estimate is the bound of the minibatch-rescaled model,
      averaged over minibatches: not unbiased for the full-data bound (it becomes so as the
      subsample reaches the full size, and for α -> 1).

    Gradients: pathwise through reparameterized guide sites; score-function sites get
    ``Σ_k (bound - b_k) ∇ log q(z_k)`` with the leave-one-out baseline b_k (VIMCO), plus the
    bound's direct gradient through log q: unbiased for the gradient of E[bound].

    Args:
        alpha: the order α of the divergence, not 1. Default 0.
        num_particles: K, default 2.
        max_plate_nesting: needed with ``vectorize_particles``.
        vectorize_particles: draw the K particles in one vectorized run (a plate of size K
            left of every other plate).

    The loss value is -bound; ``loss``, ``differentiable_loss``, ``loss_and_grads`` and
    ``compile`` work as for the other ELBOs.
    """

    loss_name = "RenyiELBO"
    downstream_only = False

    def __init__(self, alpha=0, num_particles=2, max_plate_nesting=float("inf"),
                 max_iarange_nesting=None, vectorize_particles=False,
                 strict_enumeration_warning=True):
        alpha = float(alpha)
        if alpha == 1.0:
            raise RenyiError(
                "RenyiELBO(alpha=1) is the ordinary ELBO, for which the Rényi estimator "
                "only adds variance",
                ["the bound 1/(1-alpha) log mean_k exp((1-alpha) w_k) is undefined at alpha=1"],
                "use sg.infer.Trace_ELBO(num_particles=...) (or TraceGraph_ELBO), or pick "
                "alpha != 1, e.g. alpha=0 for the IWAE bound")
        if not math.isfinite(alpha):
            raise RenyiError(f"RenyiELBO(alpha={alpha}): alpha must be a finite number",
                             fix="use e.g. alpha=0 (the IWAE bound) or alpha=0.5")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         max_iarange_nesting=max_iarange_nesting,
                         vectorize_particles=vectorize_particles,
                         strict_enumeration_warning=strict_enumeration_warning)
        self.alpha = alpha

    def options(self):
        return (("alpha", f"{self.alpha:g}"),) + super().options()

    def _compile_graph(self, graph, key):
        plan = compile_plan(graph, loss_name=self.loss_name, options=self.options(), key=key,
                            downstream_only=False, baselines=None)
        check_renyi_graph(graph, [(s.site, s.program) for s in plan.scores])
        layout = renyi_layout(
            graph, [t.key for t in plan.terms], [(s.site, s.program) for s in plan.scores],
            alpha=self.alpha, num_particles=self.num_particles,
            particle_plate=PARTICLE_PLATE if self.vectorize_particles else None)
        return make_renyi_plan(plan, layout)

    # ---- execution ---------------------------------------------------------------------
    def _run(self, model, guide, args, kwargs, with_scores, site_scales, shared):
        """One recorded run on its plan: (plan, log weight, score).

        ``shared`` holds the plate subsamples of the step's first particle (name -> message);
        the run reuses them and adds its own (see ``_record_particle``)."""
        run_model, run_guide = self._programs(model, guide)
        try:
            guide_rec, model_rec = _record_particle(run_model, run_guide, args, kwargs, shared)
        except ValueError as err:
            raise_if_params_not_finite(err)
            raise
        plan = self._plan_for(model, guide, args, kwargs, guide_rec, model_rec)
        records = {"guide": guide_rec.sites, "model": model_rec.sites}
        parts = run_plan(plan, records, None, with_surrogate=False, site_scales=site_scales)
        check_finite(plan, parts, self.step_count)
        self.last_params.update(guide_rec.params)
        self.last_params.update(model_rec.params)
        weight, score = particle_weight(plan, parts.terms, records, with_scores=with_scores,
                                        site_scales=site_scales)
        return plan, weight, score

    def _estimate(self, model, guide, args, kwargs, with_surrogate):
        site_scales = kwargs.pop("site_scales", None)
        self.last_params = {}
        # the K particles of one step share the plates' subsamples: a slice of a common plate
        # is one datapoint in every particle, and a global latent's weights are all of one
        # minibatch (the estimates the class docstring states need both)
        shared = {}
        runs = [self._run(model, guide, args, kwargs, with_surrogate, site_scales, shared)
                for _ in range(self._runs)]
        layout = runs[0][0].renyi
        if any(plan.renyi.common_scale != layout.common_scale for plan, _, _ in runs):
            raise RenyiError("the particles of one RenyiELBO step ran with different minibatch "
                             "scales on their common plates",
                             fix="keep the plates' sizes and subsample sizes fixed within a step")
        weights = stack_particles(layout, [w for _, w, _ in runs])
        scores = None
        if with_surrogate and layout.scores:
            # a run without score sites contributes a zero score
            scores = stack_particles(layout, [s if s is not None else w.new_zeros(())
                                              for _, w, s in runs])
        bound, surrogate = renyi_bound(layout, weights, scores)
        if not bool(torch.isfinite(bound + surrogate)):
            raise NonFiniteLossError(
                f"the Rényi bound is {float(bound)} although every term is finite",
                [f"alpha={self.alpha:g}, K={self.num_particles}, log weights "
                 f"{weights.detach().flatten()[:8].tolist()}"],
                "the weights overflowed (1-alpha) * w: use an alpha nearer 1 or rescale the "
                "model's log densities")
        return bound, surrogate

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """A tensor whose value is -bound and whose gradient is an unbiased estimate of
        -∇E[bound] (the score-function surrogate rides along at zero value)."""
        bound, surrogate = self._estimate(model, guide, args, kwargs, with_surrogate=True)
        self.step_count += 1
        return -(bound + surrogate)

    def loss(self, model, guide, *args, **kwargs):
        """-bound, a float (no gradients are computed)."""
        with torch.no_grad():
            bound, _ = self._estimate(model, guide, args, kwargs, with_surrogate=False)
        return -float(bound)


def _record_particle(model, guide, args, kwargs, shared):
    """Run the guide, then the model replayed on it (as ``svigraph.recording.record``), with
    every plate subsample named in ``shared`` reused instead of drawn afresh; the subsamples
    drawn in this run are added to ``shared``. Returns the two Recorders."""
    source = Recorder()
    source.subsamples = shared
    guide_rec = Recorder(replay=source)
    with guide_rec:
        guide(*args, **kwargs)
    replay = Recorder()
    replay.sites = guide_rec.sites
    replay.subsamples = {**shared, **guide_rec.subsamples}
    model_rec = Recorder(replay=replay)
    with model_rec:
        model(*args, **kwargs)
    for name, msg in {**guide_rec.subsamples, **model_rec.subsamples}.items():
        shared.setdefault(name, msg)
    return guide_rec, model_rec
