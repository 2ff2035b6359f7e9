"""SVI: one optimization step of a variational objective."""

from __future__ import annotations

import random

import torch

from compiler.errors import NonFiniteLossError
from svigraph.params import get_param_store
from svigraph.serialization import safe_load
from svigraph.handlers import trace
from svigraph.infer.elbo import ELBO


class SVI:
    """Stochastic variational inference.

    Args:
        model, guide: the programs.
        optim: an ``svigraph.optim`` optimizer (called on the params each step).
        loss: an ELBO, or any callable ``(model, guide, *args, **kwargs) -> tensor``.
        loss_and_grads: optional callable ``(model, guide, *args, **kwargs) -> float`` that
            computes the loss and runs ``backward`` itself (as Pyro's argument); ``step``
            then calls it instead of differentiating ``loss``.
        num_samples, num_steps: accepted for Pyro compatibility (they configure Pyro's
            deprecated ``SVI.run``, which svigraph does not have) and ignored.
    """

    def __init__(self, model, guide, optim, loss, loss_and_grads=None, num_samples=0,
                 num_steps=0, **kwargs):
        if not callable(loss):
            raise TypeError(f"loss must be an ELBO or a callable, got {type(loss).__name__}")
        if loss_and_grads is not None and not callable(loss_and_grads):
            raise TypeError("loss_and_grads must be a callable (model, guide, *args, **kwargs)"
                            f" -> float, got {type(loss_and_grads).__name__}")
        self.model, self.guide, self.optim, self.loss = model, guide, optim, loss
        self.loss_and_grads = loss_and_grads

    @property
    def plan(self):
        """The Plan the last step ran (None before the first step or for a custom loss)."""
        return getattr(self.loss, "last_plan", None)

    def step(self, *args, **kwargs):
        """Take one gradient step; return the loss (−ELBO estimate) as a float."""
        if self.loss_and_grads is not None:
            return self._step_with(self.loss_and_grads, args, kwargs)
        elbo = isinstance(self.loss, ELBO)
        if elbo:
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
        return self.loss.loss_value(loss) if elbo else float(loss.detach())

    def _step_with(self, loss_and_grads, args, kwargs):
        """A step whose backward the user's ``loss_and_grads`` runs; the params it touched
        get the optimizer step. An objective's own ``loss_and_grads`` names them (a JIT step
        that replays a captured graph runs no param statement); any other callable's are
        captured as for a custom loss."""
        objective = getattr(loss_and_grads, "__self__", None)
        with trace(param_only=True) as capture:
            loss = loss_and_grads(self.model, self.guide, *args, **kwargs)
        loss = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if isinstance(objective, ELBO):
            params = objective.param_leaves()
        else:
            params = [site["value"].unconstrained() for site in capture.trace.values()
                      if hasattr(site["value"], "unconstrained")]
        params = [p for p in params if p.grad is not None]
        if loss != loss or loss in (float("inf"), float("-inf")):
            for p in params:  # a rejected step leaves nothing for the next one to apply
                p.grad = None
            raise NonFiniteLossError(f"the loss is {loss}; parameters were not updated",
                                     fix="check loss_and_grads for log(0) or overflow")
        self.optim(params)
        for p in params:
            p.grad = None
        return loss

    def evaluate_loss(self, *args, **kwargs):
        """The loss without a gradient step."""
        with torch.no_grad():
            if isinstance(self.loss, ELBO):
                return self.loss.loss(self.model, self.guide, *args, **kwargs)
            return float(self.loss(self.model, self.guide, *args, **kwargs))

    # ---- checkpoints: params, optimizer state, baseline state and RNG, resumed bit-exactly
    def get_state(self):
        """Everything a resumed run needs, as tensors and plain data."""
        state = {"params": get_param_store().get_state(),
                 "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
        if hasattr(self.optim, "get_state"):
            state["optim"] = self.optim.get_state()
        if isinstance(self.loss, ELBO):
            state["baselines"] = self.loss.baselines.get_state()
        return state

    def set_state(self, state):
        get_param_store().set_state(state["params"])
        if "optim" in state:
            self.optim.set_state(state["optim"])
        if "baselines" in state:
            self.loss.baselines.set_state(state["baselines"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(_as_random_state(state["rng"]["python"]))

    def save(self, path):
        """Write a checkpoint (``torch.save`` of ``get_state()``)."""
        torch.save(self.get_state(), path)

    def load(self, path, map_location=None):
        """Resume from ``save``'s file; refuses files holding arbitrary pickled objects."""
        self.set_state(safe_load(path, map_location, "SVI.save"))


def _as_random_state(state):
    # torch.load gives lists back where random.getstate() had tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
