"""TraceEnum_ELBO: sum model sites marked ``infer={"enumerate": "parallel"}`` out exactly.

Each step the model runs once with every enumerated site holding its whole support along a
dim of its own (left of ``max_plate_nesting``); the log-prob terms that read those values are
contracted by a plated sum-product (Obermeyer et al. 2019, "Tensor variable elimination for
plated factor graphs"), planned once per structure. The result is the exact log marginal of
the enumerated part, differentiable by autograd.

Supported so far: parallel enumeration in the model, with plates (not subsampled), and
reparameterized or no guide sites. Refused, with errors that say so: ``markov`` dim reuse,
sequential and guide-side enumeration, score-function guide sites mixed with enumeration.
"""

from __future__ import annotations

from compiler.baselines import baseline_specs
from compiler.pipeline import compile_plan
from svigraph.handlers import enum
from svigraph.infer.elbo import ELBO


class TraceEnum_ELBO(ELBO):
    loss_name = "TraceEnum_ELBO"
    downstream_only = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.max_plate_nesting == float("inf"):
            raise ValueError(
                "TraceEnum_ELBO needs max_plate_nesting (the most plates any site is in): "
                "enumeration dims are placed left of the plate dims, e.g. "
                "TraceEnum_ELBO(max_plate_nesting=1)")

    def options(self):
        return super().options() + (("max_plate_nesting", self.max_plate_nesting),) \
            if not self.vectorize_particles else super().options()

    def _programs(self, model, guide):
        model, guide = super()._programs(model, guide)
        first = -int(self.max_plate_nesting) - 1 - (1 if self.vectorize_particles else 0)
        return enum(model, first_available_dim=first), guide

    def _compile_graph(self, graph, key):
        return compile_plan(graph, loss_name=self.loss_name, options=self.options(), key=key,
                            downstream_only=True, baselines=baseline_specs, enumerate=True)
