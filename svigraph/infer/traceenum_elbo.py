"""TraceEnum_ELBO: sum discrete sites out exactly, in the model and in the guide.

* **Model-side enumeration** (``infer={"enumerate": "parallel"}`` on a model-only site): the
  site holds its whole support along a dim of its own, left of ``max_plate_nesting``; the
  log-prob terms that read it are contracted by a plated sum-product (Obermeyer et al. 2019,
  "Tensor variable elimination for plated factor graphs"), planned once per structure: the
  exact log marginal of the enumerated part, differentiable by autograd. ``markov`` reuses
  dims, so a chain costs memory linear in its length.
* **Guide-side enumeration** (the flag on a guide site): the guide's site holds its support
  the same way (guide dims first, the model's further left), the model sees every value
  along that dim, and the ELBO's expectation over the site is computed exactly: each cost is
  weighted by q of the enumerated values it varies with, per plate slice, differentiable in
  q's parameters (``runtime.enum_expectation``). The model's enumerated sites are summed out
  inside, keeping the guide's values; as in Pyro, guide enumeration must be no more local
  than the model's (a guide site enumerated in a plate, a model site outside it, is refused).
* **Sequential enumeration** (``"sequential"`` on a guide site outside vectorized plates):
  the same exact sum as a loop, one guide and model run per value, each run weighted by q of
  its values. For sites whose support is too large to hold at once.
* **Other guide sites** mix in: pathwise ones by autograd (drawn once per enumerated value
  above them), score-function ones with their score weighted by q and Rao-Blackwellized
  against the costs downstream of them, the contraction included when they feed it.

``num_particles`` averages independent estimates. ``vectorize_particles=True`` runs them in
one pass in a plate at dim ``-max_plate_nesting - 1``; enumeration dims then start left of
it, at ``-max_plate_nesting - 2``. With ``strict_enumeration_warning`` (the default) a plan
that enumerates nothing warns ``EnumerationWarning``: Trace_ELBO would do the same work.
"""

from __future__ import annotations

import warnings
import weakref

import torch

from compiler.baselines import baseline_specs
from compiler.errors import EnumerationWarning
from compiler.pipeline import compile_plan
from runtime.executor import LossParts
from runtime.terms import masked_log_prob
from svigraph.handlers import enum, sequential_choice
from svigraph.infer.elbo import ELBO


class TraceEnum_ELBO(ELBO):
    """The ELBO with enumerated discrete sites summed out exactly (see the module text).

    Args:
        max_plate_nesting: the most plates any site is in (required): enumeration dims are
            placed left of the plate dims.
        num_particles, vectorize_particles, strict_enumeration_warning, retain_graph: as in
            ``ELBO``.
    """

    loss_name = "TraceEnum_ELBO"
    downstream_only = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.max_plate_nesting == float("inf"):
            raise ValueError(
                "TraceEnum_ELBO needs max_plate_nesting (the most plates any site is in): "
                "enumeration dims are placed left of the plate dims, e.g. "
                "TraceEnum_ELBO(max_plate_nesting=1)")
        self._chooser = sequential_choice()

    def options(self):
        return super().options() + (("max_plate_nesting", self.max_plate_nesting),) \
            if not self.vectorize_particles else super().options()

    def _programs(self, model, guide):
        # built once per (model, guide) pair and settings: the handlers reset on entry
        settings = (self.num_particles, self.max_plate_nesting, self.vectorize_particles)
        last = self.__dict__.get("_last_programs")
        if last is not None and last[0]() is model and last[1]() is guide \
                and last[2] == settings:
            return last[3]
        programs = self._build_programs(model, guide)
        try:
            self._last_programs = (weakref.ref(model), weakref.ref(guide), settings, programs)
        except TypeError:  # not weak-referenceable: built every time
            pass
        return programs

    def _build_programs(self, model, guide):
        model, guide = super()._programs(model, guide)
        first = -int(self.max_plate_nesting) - 1 - (1 if self.vectorize_particles else 0)
        guide = enum(guide, first_available_dim=first)
        chooser = self._chooser  # the handler itself: wrapping would copy it

        def chosen_guide(*args, **kwargs):
            with chooser:
                return guide(*args, **kwargs)

        return enum(model, after=guide), chosen_guide

    def _compile_graph(self, graph, key):
        plan = compile_plan(graph, loss_name=self.loss_name, options=self.options(), key=key,
                            downstream_only=True, baselines=baseline_specs, enumerate=True)
        if self.strict_enumeration_warning and not any(
                s.estimator == "enumerate" for s in plan.sites.values()):
            warnings.warn(
                "TraceEnum_ELBO found no site marked for enumeration; mark discrete sites "
                'infer={"enumerate": "parallel"} (or wrap the model in config_enumerate), or '
                "use TraceGraph_ELBO (strict_enumeration_warning=False silences this)",
                EnumerationWarning, stacklevel=5)
        return plan

    def _plan_for(self, *args):
        self._chooser.paused = True  # tracing replays the recorded run's values
        try:
            return super()._plan_for(*args)
        finally:
            self._chooser.paused = False

    def _particle(self, model, guide, args, kwargs, with_surrogate=True, site_scales=None):
        """One estimate: with sequentially enumerated guide sites, the q-weighted sum of one
        run per combination of their values (odometer order, each combination once)."""
        chooser = self._chooser
        pending = [{}]
        elbo, parts = None, None
        while pending:
            assignment = pending.pop()
            chooser.start(assignment)
            parts = super()._particle(model, guide, args, kwargs, with_surrogate, site_scales)
            found = chooser.discovered
            for j, (name, size) in enumerate(found):
                prefix = {**assignment, **{n: 0 for n, _ in found[:j]}}
                pending += [{**prefix, name: v} for v in range(size - 1, 0, -1)]
            if not chooser.sites and not assignment:
                return parts  # nothing sequential: the plain estimate
            log_q = sum(masked_log_prob(site, "guide").sum() for site in chooser.sites.values())
            branch = torch.exp(log_q) * (parts.elbo + (parts.surrogate - parts.surrogate.detach()))
            elbo = branch if elbo is None else elbo + branch
        return LossParts(elbo, elbo.new_zeros(()), parts.terms)
