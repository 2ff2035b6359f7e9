"""A lean step for ``torch.optim.Adam`` / ``AdamW`` on CPU: the same update, fewer calls.

``Optimizer.step`` spends most of a small model's optimizer time in Python: profiling and
hook dispatch, then ``_init_group`` walking every parameter to rebuild its lists, then one
call per parameter per operation. ``adam_step`` applies the identical arithmetic with
one ``torch._foreach_*`` call per operation over all parameters. On CPU those run the same
per-tensor kernels with the same scalars as torch's own step, so parameters and state are
bit-for-bit what ``optimizer.step()`` leaves (tests/test_fast_adam.py checks this against
torch's step). Anything this path does not cover -- step hooks, a ``step`` patched by
anything but a learning-rate scheduler, fresh state, amsgrad, tensor hyperparameters,
capturable/differentiable/fused groups, complex, sparse or non-CPU tensors -- is left to
``optimizer.step()``.
"""

from __future__ import annotations

import torch
from torch.optim import optimizer as _optimizer_module  # where the global step hooks live

_ADAMS = (torch.optim.Adam, torch.optim.AdamW)
_CPU = torch.device("cpu")


def adam_step(optimizer, group):
    """Take ``optimizer``'s step for its single param ``group`` if the lean path covers it;
    return whether it did (False: nothing was touched, call ``optimizer.step()``)."""
    patched = optimizer.__dict__.get("step")  # a learning-rate scheduler's step counter
    if (optimizer.__class__ not in _ADAMS
            or (patched is not None and not hasattr(patched, "_wrapped_by_lr_sched"))
            or optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
            or _optimizer_module._global_optimizer_pre_hooks
            or _optimizer_module._global_optimizer_post_hooks
            or group["amsgrad"] or group.get("capturable") or group.get("differentiable")
            or group.get("fused")):
        return False
    lr, (beta1, beta2) = group["lr"], group["betas"]
    if not (type(lr) is float and type(beta1) is float and type(beta2) is float):
        return False
    params = group["params"]
    states = optimizer.state
    grads, exp_avgs, exp_avg_sqs, steps = [], [], [], []
    for p in params:
        grad, state = p.grad, states.get(p)
        if (grad is None or not state or grad.is_sparse or p.device != _CPU
                or p.is_complex()):
            return False
        grads.append(grad)
        exp_avgs.append(state["exp_avg"])
        exp_avg_sqs.append(state["exp_avg_sq"])
        steps.append(state["step"])
    if patched is not None:
        optimizer._opt_called = True  # what the scheduler's wrapper records
    decoupled = group.get("decoupled_weight_decay", optimizer.__class__ is torch.optim.AdamW)
    _update(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, group["eps"],
            group["weight_decay"], group["maximize"], decoupled)
    return True


@torch.no_grad()
def _update(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
            maximize, decoupled):
    """torch's non-capturable Adam update, operation for operation, over lists."""
    torch._foreach_add_(steps, 1)
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if decoupled:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    counts = [s.item() for s in steps]
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [(1 - beta2 ** n) ** 0.5 for n in counts])
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, [-(lr / (1 - beta1 ** n)) for n in counts])
