"""Adam with per-parameter gradient norm clipping and learning-rate decay."""

from __future__ import annotations

import math

import torch


class ClippedAdam(torch.optim.Optimizer):
    """Adam that clips each parameter's gradient norm and decays the learning rate.

    Each step, every parameter's gradient ``g`` is rescaled to
    ``g * min(1, clip_norm / (||g|| + 1e-6))`` (the gradient tensor itself is left as is),
    then an ordinary Adam update is taken; afterwards every group's ``lr`` is multiplied by
    ``lrd``, so step ``k`` (from 1) uses ``lr * lrd ** (k - 1)``.

    Args:
        params: tensors or param-group dicts, as for any ``torch.optim.Optimizer``.
        lr: learning rate.
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty added to the (clipped) gradient.
        clip_norm: largest gradient norm allowed, per parameter.
        lrd: learning-rate decay factor applied after each step.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 clip_norm=10.0, lrd=1.0):
        if not lr >= 0.0:
            raise ValueError(f"ClippedAdam: lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"ClippedAdam: betas must lie in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"ClippedAdam: eps must be >= 0, got {eps}")
        if not clip_norm > 0.0:
            raise ValueError(f"ClippedAdam: clip_norm must be > 0, got {clip_norm}")
        if not lrd > 0.0:
            raise ValueError(f"ClippedAdam: lrd must be > 0 (1.0 for no decay), got {lrd}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        clip_norm=clip_norm, lrd=lrd)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Take one step; ``closure`` (optional) re-evaluates and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise TypeError("ClippedAdam does not support sparse gradients; "
                                    "use torch.optim.SparseAdam for sparse parameters")
                # Always multiply (by at most 1) rather than branch: no host sync on GPU.
                scale = (group["clip_norm"] / (torch.linalg.vector_norm(grad) + 1e-6))
                grad = grad * scale.clamp_(max=1.0)
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                bias1 = 1.0 - beta1 ** step
                bias2_sqrt = math.sqrt(1.0 - beta2 ** step)
                denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(group["eps"])
                p.addcdiv_(exp_avg, denom, value=-lr / bias1)
            group["lr"] = lr * group["lrd"]
        return loss
