"""The lean Adam step leaves exactly what torch's ``optimizer.step()`` leaves, and steps aside
whenever it does not cover the optimizer (hooks, fresh state, amsgrad, fused, ...)."""

import itertools
import warnings

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import svigraph as sg
from svigraph.optim.fast_adam import adam_step

SHAPES = [(), (3,), (4, 5), (1,), (2, 3, 2), (300, 41)]  # the last exercises vector kernels
CONFIGS = [{"lr": 0.01}, {"lr": 0.1, "betas": (0.8, 0.95), "eps": 1e-6},
           {"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.01, "maximize": True, "weight_decay": 0.05},
           {"lr": 0.01, "foreach": True}, {"lr": 0.01, "foreach": False}]


def _train(cls, kwargs, dtype, lean, steps=30):
    """Parameters and optimizer after ``steps`` steps on fixed gradients of varied scale."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]
    opt = cls(params, **kwargs)
    taken = 0
    for k in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype) * 10.0 ** (k % 5 - 2)
        if lean and adam_step(opt, opt.param_groups[0]):
            taken += 1
        else:
            opt.step()
    return params, opt, taken


@pytest.mark.parametrize("cls,kwargs,dtype", list(itertools.product(
    (torch.optim.Adam, torch.optim.AdamW), CONFIGS, (torch.float32, torch.float64))))
def test_lean_step_is_bit_for_bit_torchs_step(cls, kwargs, dtype):
    ref, ref_opt, _ = _train(cls, kwargs, dtype, lean=False)
    got, got_opt, taken = _train(cls, kwargs, dtype, lean=True)
    assert taken == 29  # every step but the first, which creates the state
    for r, p in zip(ref, got):
        assert torch.equal(r, p)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ref_opt.state[r][key], got_opt.state[p][key])


def _stepped_once(**kwargs):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.Adam([p], **kwargs)
    p.grad = torch.tensor([0.5, 0.25])
    opt.step()
    p.grad = torch.tensor([0.5, 0.25])
    return p, opt


@pytest.mark.parametrize("setup", ["fresh state", "no grad", "amsgrad", "fused", "tensor lr",
                                   "pre hook", "post hook", "global hook", "patched step",
                                   "subclass"])
def test_lean_step_steps_aside_and_touches_nothing(setup):
    kwargs = {"lr": 0.1}
    if setup == "amsgrad":
        kwargs["amsgrad"] = True
    if setup == "fused":
        kwargs["fused"] = True
    if setup == "tensor lr":
        kwargs["lr"] = torch.tensor(0.1)
    p, opt = _stepped_once(**kwargs)
    handles = []
    if setup == "fresh state":
        opt.state.clear()
    elif setup == "no grad":
        p.grad = None
    elif setup == "pre hook":
        handles.append(opt.register_step_pre_hook(lambda *a: None))
    elif setup == "post hook":
        handles.append(opt.register_step_post_hook(lambda *a: None))
    elif setup == "global hook":
        handles.append(register_optimizer_step_pre_hook(lambda *a: None))
    elif setup == "patched step":
        opt.step = lambda *a, **k: None
    elif setup == "subclass":
        opt.__class__ = type("MyAdam", (torch.optim.Adam,), {})
    before = p.detach().clone()
    state = {k: v.clone() for k, v in opt.state.get(p, {}).items()}
    try:
        assert adam_step(opt, opt.param_groups[0]) is False
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(p.detach(), before)
    assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())


def test_svigraph_adam_takes_the_lean_step_after_the_first(store, monkeypatch):
    """``sg.optim.Adam`` goes through the lean step once the state exists (torch's own step
    is then never called) and still matches torch's optimizer exactly."""
    a = store.get("a", torch.tensor([0.5, -1.0, 2.0]))
    ref = a.unconstrained().detach().clone().requires_grad_()
    ref_opt, optim = torch.optim.Adam([ref], lr=0.1), sg.optim.Adam({"lr": 0.1})
    torch_step = torch.optim.Adam.step
    for k in range(4):
        grad = torch.tensor([1.0, -0.5, 0.25]) * (k + 1)
        leaf = store["a"].unconstrained()
        leaf.grad, ref.grad = grad.clone(), grad.clone()
        torch_step(ref_opt)
        if k == 1:  # state exists now: torch's step must not run again
            def refuse(*args, **kwargs):
                raise AssertionError("torch's Adam.step ran instead of the lean step")
            monkeypatch.setattr(torch.optim.Adam, "step", refuse)
        optim([leaf])
        leaf.grad = None
    assert torch.equal(store["a"].unconstrained().detach(), ref.detach())


def test_optim_with_scheduler_matches_torch_and_records_the_step(store):
    """A scheduler's patched ``step`` still takes the lean path, marking the optimizer as
    stepped (no 'scheduler before optimizer' warning) and following its learning rate."""
    a = store.get("a", torch.tensor([0.5, -1.0, 2.0]))
    ref = a.unconstrained().detach().clone().requires_grad_()
    ref_opt = torch.optim.Adam([ref], lr=0.1)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=2, gamma=0.5)
    sched = sg.optim.StepLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1},
                             "step_size": 2, "gamma": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for k in range(6):
            grad = torch.tensor([1.0, -0.5, 0.25]) * (k + 1)
            leaf = store["a"].unconstrained()
            leaf.grad, ref.grad = grad.clone(), grad.clone()
            sched([leaf])
            leaf.grad = None
            ref_opt.step()
            sched.step()
            ref_sched.step()
    assert torch.equal(store["a"].unconstrained().detach(), ref.detach())
    opt = sched.optimizers[0]
    opt._opt_called = False  # as for state restored into a new optimizer and scheduler
    store["a"].unconstrained().grad = torch.ones(3)
    sched([store["a"].unconstrained()])
    assert opt._opt_called
