"""SVI: one optimization step of a variational objective."""

from __future__ import annotations

import torch

from compiler.errors import NonFiniteLossError
from svigraph.handlers import trace
from svigraph.infer.elbo import ELBO


class SVI:
    """Stochastic variational inference.

    Args:
        model, guide: the programs.
        optim: an ``svigraph.optim`` optimizer (called on the params each step).
        loss: an ELBO, or any callable ``(model, guide, *args, **kwargs) -> tensor``.
    """

    def __init__(self, model, guide, optim, loss, **kwargs):
        if not callable(loss):
            raise TypeError(f"loss must be an ELBO or a callable, got {type(loss).__name__}")
        self.model, self.guide, self.optim, self.loss = model, guide, optim, loss

    @property
    def plan(self):
        """The Plan the last step ran (None before the first step or for a custom loss)."""
        return getattr(self.loss, "last_plan", None)

    def step(self, *args, **kwargs):
        """Take one gradient step; return the loss (−ELBO estimate) as a float."""
        if isinstance(self.loss, ELBO):
            loss = self.loss.differentiable_loss(self.model, self.guide, *args, **kwargs)
            params = self.loss.param_leaves()
        else:
            with trace(param_only=True) as capture:
                loss = self.loss(self.model, self.guide, *args, **kwargs)
            params = [site["value"].unconstrained() for site in capture.trace.values()]
            if not bool(torch.isfinite(loss)):
                raise NonFiniteLossError(f"the loss is {float(loss)}; parameters were not updated",
                                         fix="check the custom loss for log(0) or overflow")
        if loss.requires_grad:
            loss.backward()
        params = [p for p in params if p.grad is not None]
        self.optim(params)
        for p in params:
            p.grad = None
        return float(loss.detach())

    def evaluate_loss(self, *args, **kwargs):
        """The loss without a gradient step."""
        with torch.no_grad():
            if isinstance(self.loss, ELBO):
                return self.loss.loss(self.model, self.guide, *args, **kwargs)
            return float(self.loss(self.model, self.guide, *args, **kwargs))
