"""Baseline state across steps, keyed by site name so it survives recompiling the site.

Kinds (``BaselineSpec.kind``): ``decaying_avg`` (b = running average of the site's cost,
updated after use), ``value`` (the user's detached tensor), ``nn`` (a module's prediction from
``nn_baseline_input``; the module learns by its own squared error, added with zero value),
``loo`` (leave-one-out across vectorized particles: the mean cost of the other particles).
"""

from __future__ import annotations

import torch


class BaselineState:
    def __init__(self):
        self.averages = {}
        self.pending = {}    # this step's new averages, kept only if the step is accepted
        self.nn_loss = None  # summed squared errors of neural baselines this step

    def commit(self):
        """Keep this step's updates (called once the loss is known to be finite)."""
        self.averages.update(self.pending)
        self.pending.clear()

    def discard(self):
        self.pending.clear()
        self.nn_loss = None

    def get_state(self):
        return {k: v.clone() for k, v in self.averages.items()}

    def set_state(self, state):
        self.averages = {k: v.clone() for k, v in state.items()}

    def value(self, score_plan, cost, records):
        spec = score_plan.baseline
        options = records[score_plan.program][score_plan.site]["infer"]["baseline"]
        if spec.kind == "decaying_avg":
            site = score_plan.site
            old = self.pending.get(site, self.averages.get(site))  # particles chain updates
            if old is None or old.shape != cost.shape:
                old = torch.zeros_like(cost)
            self.pending[site] = spec.beta * old + (1.0 - spec.beta) * cost
            return old
        if spec.kind == "loo":
            # particle i's baseline: the mean cost of the other particles, independent of it
            n = cost.shape[spec.dim]
            return (cost.sum(spec.dim, keepdim=True) - cost) / (n - 1)
        if spec.kind == "value":
            return options["baseline_value"].detach()
        if spec.kind == "nn":
            prediction = options["nn_baseline"](options["nn_baseline_input"].detach())
            error = ((prediction - cost) ** 2).sum()
            self.nn_loss = error if self.nn_loss is None else self.nn_loss + error
            return prediction.detach()
        raise NotImplementedError(f"baseline kind {spec.kind!r}")
