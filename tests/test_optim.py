"""Tests of svigraph.optim: the Optim wrapper, aliases, ClippedAdam, schedules, multi-optimizers."""

import math

import pytest
import torch
from torch.distributions import constraints

import svigraph as sg
from svigraph.optim import (
    LRScheduler,
    MixedMultiOptimizer,
    MultiOptimizer,
    Optim,
    OptimMultiOptimizer,
    TorchMultiOptimizer,
)
from svigraph.optim.clipped_adam import ClippedAdam as TorchClippedAdam

TARGET = torch.tensor([1.0, -2.0, 3.0])


def _leaf(values):
    return torch.tensor(values, requires_grad=True)


def _quadratic_step(optim, store, names=("x",)):
    loss = sum(((store[n] - TARGET) ** 2).sum() for n in names)
    loss.backward()
    leaves = [store[n].unconstrained() for n in names]
    optim(leaves)
    for leaf in leaves:
        leaf.grad = None
    return float(loss.detach())


ALIASES = [
    (sg.optim.Adam, {"lr": 0.1}),
    (sg.optim.AdamW, {"lr": 0.1, "weight_decay": 0.0}),
    (sg.optim.SGD, {"lr": 0.1}),
    (sg.optim.RMSprop, {"lr": 0.01}),
    (sg.optim.Adagrad, {"lr": 0.5}),
    (sg.optim.Adadelta, {"lr": 10.0}),
    (sg.optim.Adamax, {"lr": 0.1}),
    (sg.optim.NAdam, {"lr": 0.1}),
    (sg.optim.RAdam, {"lr": 0.1}),
    (sg.optim.ASGD, {"lr": 0.1}),
    (sg.optim.Rprop, {"lr": 0.01}),
    (sg.optim.ClippedAdam, {"lr": 0.1}),
]
ALIAS_IDS = [alias.__name__ for alias, _ in ALIASES]


# convergence and basic stepping
@pytest.mark.parametrize("alias, args", ALIASES, ids=ALIAS_IDS)
def test_alias_converges_on_quadratic(store, alias, args):
    store.get("x", torch.zeros(3))
    optim = alias(args)
    for _ in range(500):
        _quadratic_step(optim, store)
    torch.testing.assert_close(store["x"].detach(), TARGET, atol=1e-2, rtol=0)


@pytest.mark.parametrize("alias, args", ALIASES, ids=ALIAS_IDS)
def test_param_with_no_grad_is_untouched(store, alias, args):
    a, b = _leaf([1.0, 2.0]), _leaf([3.0])
    optim = alias(args)
    a.grad, b.grad = torch.tensor([0.5, -1.0]), torch.tensor([2.0])
    optim([a, b])  # both get state (momentum, averages ...)
    a_before = a.detach().clone()
    state_before = optim.get_state()
    a.grad, b.grad = None, torch.tensor([1.0])
    optim([a, b])
    assert torch.equal(a.detach(), a_before)
    name_a = "<unnamed 0>"  # leaves the store does not hold get generated names
    after = optim.get_state()[name_a]["state"]
    for key, value in state_before[name_a]["state"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(after[key], value), key


def test_store_value_given_instead_of_leaf_is_a_type_error(store):
    value = store.get("p", torch.ones(2), constraints.positive)
    optim = sg.optim.SGD({"lr": 0.1})
    with pytest.raises(TypeError, match="unconstrained"):
        optim([value])


def test_one_torch_optimizer_for_shared_args(store):
    leaves = [_leaf([float(i)]) for i in range(5)]
    optim = sg.optim.Adam({"lr": 0.1})
    for leaf in leaves:
        leaf.grad = torch.ones(1)
    optim(leaves)
    assert len(optim.optimizers) == 1
    assert len(optim.optimizers[0].param_groups) == 1
    assert len(optim.optimizers[0].param_groups[0]["params"]) == 5


# per-parameter arguments
def test_callable_args_give_per_name_learning_rates(store):
    store.get("a", torch.tensor([1.0, 2.0]))
    store.get("b", torch.tensor([3.0]))
    calls = []

    def args(name):
        calls.append(name)
        return {"lr": {"a": 0.5, "b": 0.25}[name]}

    optim = sg.optim.SGD(args)
    a, b = store["a"].unconstrained(), store["b"].unconstrained()
    a.grad, b.grad = torch.tensor([1.0, -2.0]), torch.tensor([4.0])
    optim([a, b])
    # Powers of two: the expected displacements are exact.
    assert torch.equal(a.detach(), torch.tensor([0.5, 3.0]))
    assert torch.equal(b.detach(), torch.tensor([2.0]))
    optim([a, b])
    assert calls == ["a", "b"]  # once per parameter
    assert len(optim.optimizers) == 2


def test_callable_args_with_equal_dicts_share_one_optimizer(store):
    optim = sg.optim.SGD(lambda name: {"lr": 0.1})
    leaves = [_leaf([1.0]), _leaf([2.0])]
    for leaf in leaves:
        leaf.grad = torch.ones(1)
    optim(leaves)
    assert len(optim.optimizers) == 1


class _TaggedSGD(torch.optim.Optimizer):
    """Plain SGD taking an unhashable argument: any Optimizer subclass must work."""

    def __init__(self, params, lr, tags):
        super().__init__(params, {"lr": lr, "tags": tags})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


def test_callable_args_with_unhashable_values_get_own_optimizers(store):
    optim = Optim(_TaggedSGD, lambda name: {"lr": 0.5 if name == "a" else 0.25, "tags": {name}})
    store.get("a", torch.tensor([1.0]))
    store.get("b", torch.tensor([1.0]))
    a, b = store["a"].unconstrained(), store["b"].unconstrained()
    a.grad, b.grad = torch.ones(1), torch.ones(1)
    optim([a, b])
    assert torch.equal(a.detach(), torch.tensor([0.5]))
    assert torch.equal(b.detach(), torch.tensor([0.75]))
    assert len(optim.optimizers) == 2


def test_lbfgs_with_closure(store):
    store.get("a", torch.zeros(3))
    optim = Optim(torch.optim.LBFGS, {"lr": 1.0})
    leaf = store["a"].unconstrained()

    def closure():
        leaf.grad = None
        loss = ((store["a"] - TARGET) ** 2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        optim([leaf], closure)
    torch.testing.assert_close(store["a"].detach(), TARGET)


def test_callable_args_must_return_a_dict(store):
    optim = sg.optim.SGD(lambda name: 0.1)
    leaf = _leaf([1.0])
    leaf.grad = torch.ones(1)
    with pytest.raises(TypeError, match="must return a dict"):
        optim([leaf])


# lazily created state, subsets
def test_state_created_lazily_for_param_appearing_on_step_5(store):
    a0, b0 = torch.tensor([0.5, -1.0]), torch.tensor([2.0])
    a, b = _leaf(a0.tolist()), _leaf(b0.tolist())
    ref_a, ref_b = _leaf(a0.tolist()), _leaf(b0.tolist())
    ref_opt_a = torch.optim.Adam([ref_a], lr=0.1)
    ref_opt_b = torch.optim.Adam([ref_b], lr=0.1)
    optim = sg.optim.Adam({"lr": 0.1})
    for step in range(10):
        grad_a = torch.tensor([math.sin(step), math.cos(step)])
        grad_b = torch.tensor([float(step) - 7.0])
        a.grad, ref_a.grad = grad_a.clone(), grad_a.clone()
        ref_opt_a.step()
        if step < 5:
            optim([a])
        else:
            b.grad, ref_b.grad = grad_b.clone(), grad_b.clone()
            optim([a, b])
            ref_opt_b.step()
    assert torch.equal(a.detach(), ref_a.detach())
    assert torch.equal(b.detach(), ref_b.detach())
    state = optim.get_state()
    assert float(state["<unnamed 0>"]["state"]["step"]) == 10
    assert float(state["<unnamed 1>"]["state"]["step"]) == 5
    assert len(optim.optimizers) == 1


def test_step_on_a_subset_leaves_other_params_and_their_grads_alone(store):
    a, b = _leaf([1.0]), _leaf([2.0])
    optim = sg.optim.SGD({"lr": 0.5, "momentum": 0.9})
    a.grad, b.grad = torch.ones(1), torch.ones(1)
    optim([a, b])
    a_before, grad_a = a.detach().clone(), a.grad
    optim([b])
    assert torch.equal(a.detach(), a_before)
    assert a.grad is grad_a
    assert torch.equal(b.detach(), torch.tensor([2.0 - 0.5 - 0.5 * 1.9]))


# clipping
def test_clip_norm_clips_each_parameter_separately(store):
    a, b = _leaf([0.0, 0.0]), _leaf([1.0, 1.0])
    optim = sg.optim.SGD({"lr": 1.0}, clip_args={"clip_norm": 1.0})
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])
    optim([a, b])
    coef = 1.0 / (5.0 + 1e-6)
    torch.testing.assert_close(a.detach(), torch.tensor([-3.0 * coef, -4.0 * coef]),
                               rtol=1e-6, atol=0)
    # b's norm (0.5) is under the bound: its gradient is used exactly as is.
    assert torch.equal(b.detach(), torch.tensor([1.0, 1.0]) - torch.tensor([0.3, 0.4]))


def test_clip_value_clamps_elementwise(store):
    a = _leaf([0.0, 0.0, 0.0])
    optim = sg.optim.SGD({"lr": 1.0}, clip_args={"clip_value": 1.0})
    a.grad = torch.tensor([3.0, -0.5, -4.0])
    optim([a])
    assert torch.equal(a.detach(), torch.tensor([-1.0, 0.5, 1.0]))


@pytest.mark.parametrize("clip_args", [{"max_norm": 1.0}, {}, {"clip_norm": 1, "clip_value": 1},
                                       "clip_norm", {"clip_norm": -1.0}])
def test_bad_clip_args_raise_value_error_naming_the_keys(clip_args):
    with pytest.raises(ValueError, match="clip_norm"):
        sg.optim.Adam({"lr": 0.1}, clip_args=clip_args)


# ClippedAdam
def _clipped(grad, clip_norm):
    return grad * min(1.0, clip_norm / (float(grad.norm()) + 1e-6))


def test_clipped_adam_clips_gradient_norm_and_decays_lr(store):
    lr, lrd, clip = 0.1, 0.5, 1.0
    scales = [100.0, 0.1, 50.0, 1.0, 0.01]
    base = torch.tensor([0.6, -0.8, 0.3])
    p, ref, unclipped = (_leaf([1.0, 2.0, 3.0]) for _ in range(3))
    optim = TorchClippedAdam([p], lr=lr, clip_norm=clip, lrd=lrd)
    ref_opt = torch.optim.Adam([ref], lr=lr)
    raw_opt = torch.optim.Adam([unclipped], lr=lr)
    for k, scale in enumerate(scales):
        grad = base * scale
        p.grad = grad.clone()
        optim.step()
        assert torch.equal(p.grad, grad)  # the gradient itself is not modified
        for opt in (ref_opt, raw_opt):
            opt.param_groups[0]["lr"] = lr * lrd ** k
        ref.grad, unclipped.grad = _clipped(grad, clip), grad.clone()
        ref_opt.step()
        raw_opt.step()
    torch.testing.assert_close(p.detach(), ref.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(p.detach(), unclipped.detach(), rtol=1e-4, atol=1e-5)
    assert optim.param_groups[0]["lr"] == pytest.approx(lr * lrd ** len(scales), rel=1e-12)


def test_clipped_adam_alias_defaults_and_validation(store):
    optim = sg.optim.ClippedAdam({"lr": 0.1})
    leaf = _leaf([1.0])
    leaf.grad = torch.ones(1)
    optim([leaf])
    group = optim.optimizers[0].param_groups[0]
    assert group["clip_norm"] == 10.0 and group["lrd"] == 1.0 and group["lr"] == 0.1
    with pytest.raises(ValueError, match="lrd"):
        TorchClippedAdam([leaf], lrd=0.0)
    with pytest.raises(ValueError, match="clip_norm"):
        TorchClippedAdam([leaf], clip_norm=-1.0)


# learning-rate schedules
S = torch.optim.lr_scheduler
SCHEDULERS = [
    (sg.optim.ExponentialLR, S.ExponentialLR, {"gamma": 0.5}),
    (sg.optim.StepLR, S.StepLR, {"step_size": 2, "gamma": 0.3}),
    (sg.optim.MultiStepLR, S.MultiStepLR, {"milestones": [1, 4], "gamma": 0.1}),
    (sg.optim.CosineAnnealingLR, S.CosineAnnealingLR, {"T_max": 5, "eta_min": 0.001}),
    (sg.optim.LambdaLR, S.LambdaLR, {"lr_lambda": lambda epoch: 0.9 ** epoch}),
    (sg.optim.ReduceLROnPlateau, S.ReduceLROnPlateau, {"patience": 1, "factor": 0.5}),
    (sg.optim.OneCycleLR, S.OneCycleLR, {"max_lr": 0.5, "total_steps": 20}),
    (sg.optim.CyclicLR, S.CyclicLR, {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2}),
]


@pytest.mark.parametrize("alias, torch_class, kwargs", SCHEDULERS,
                         ids=[s[0].__name__ for s in SCHEDULERS])
def test_scheduler_lr_matches_torch(store, alias, torch_class, kwargs):
    store.get("x", torch.tensor([0.5, 1.5]))
    optim_args = {"lr": 0.1, "momentum": 0.9}
    sched = alias({"optimizer": torch.optim.SGD, "optim_args": optim_args, **kwargs})
    ref = _leaf([0.5, 1.5])
    ref_opt = torch.optim.SGD([ref], **optim_args)
    ref_sched = torch_class(ref_opt, **kwargs)
    metric = (1.0,) if torch_class is S.ReduceLROnPlateau else ()
    x = store["x"].unconstrained()
    lrs, ref_lrs = [], []
    for step in range(7):
        grad = torch.tensor([float(step), -1.0])
        x.grad, ref.grad = grad.clone(), grad.clone()
        sched([x])
        ref_opt.step()
        sched.step(*metric)
        ref_sched.step(*metric)
        lrs.append(sched.optimizers[0].param_groups[0]["lr"])
        ref_lrs.append(ref_opt.param_groups[0]["lr"])
    assert lrs == ref_lrs
    assert len(set(lrs)) > 1  # the schedule did move
    assert torch.equal(x.detach(), ref.detach())


def test_exponential_lr_example(store):
    sched = sg.optim.ExponentialLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1},
                                    "gamma": 0.5})
    store.get("x", torch.zeros(3))
    for _ in range(3):
        _quadratic_step(sched, store)
        sched.step()
    assert sched.optimizers[0].param_groups[0]["lr"] == 0.1 * 0.5 ** 3
    assert len(sched.schedulers) == 1


def test_scheduler_argument_errors():
    with pytest.raises(ValueError, match="'optimizer'"):
        sg.optim.StepLR({"optim_args": {"lr": 0.1}, "step_size": 2})
    with pytest.raises(TypeError, match="gamma"):
        sg.optim.ExponentialLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}})
    with pytest.raises(TypeError, match="scheduler"):
        LRScheduler("StepLR", {"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}})


def test_scheduler_accepts_svigraph_alias_as_optimizer(store):
    sched = sg.optim.StepLR({"optimizer": sg.optim.Adam, "optim_args": {"lr": 0.1},
                             "step_size": 1, "gamma": 0.5})
    store.get("x", torch.zeros(3))
    _quadratic_step(sched, store)
    assert isinstance(sched.optimizers[0], torch.optim.Adam)


# multi-optimizers
def _loss(a, b):
    return ((a - torch.tensor([1.0, 2.0])) ** 2).sum() * 3.0 + (b ** 3).sum()


def test_mixed_multi_optimizer_usage_and_exact_step(store):
    a0, b0 = torch.tensor([0.5, 3.0]), torch.tensor([1.5])
    adam = sg.optim.Adam({'lr': 0.1}); sgd = sg.optim.SGD({'lr': 0.01})  # noqa: E702
    optim = MixedMultiOptimizer([(['a'], adam), (['b'], sgd)])
    params = {'a': store.get('a', a0, constraints.positive), 'b': store.get('b', b0)}
    loss = _loss(params["a"], params["b"])
    optim.step(loss, params)

    ref_ua, ref_b = a0.log().requires_grad_(), b0.clone().requires_grad_()
    ref_adam = torch.optim.Adam([ref_ua], lr=0.1)
    ref_sgd = torch.optim.SGD([ref_b], lr=0.01)
    _loss(ref_ua.exp(), ref_b).backward()
    ref_adam.step()
    ref_sgd.step()
    assert torch.equal(store["a"].unconstrained().detach(), ref_ua.detach())
    assert torch.equal(store["b"].detach(), ref_b.detach())
    assert store["a"].unconstrained().grad is None  # .grad is neither read nor left set


def test_mixed_multi_optimizer_with_multi_optimizer_part(store):
    params = {"a": store.get("a", torch.tensor([0.5, 3.0])),
              "b": store.get("b", torch.tensor([1.5]))}
    optim = MixedMultiOptimizer([(["a"], TorchMultiOptimizer(torch.optim.SGD, {"lr": 0.5})),
                                 ("b", sg.optim.SGD({"lr": 0.25}))])
    grad_a, grad_b = torch.autograd.grad(_loss(params["a"], params["b"]),
                                         [params["a"], params["b"]])
    expected = {"a": params["a"].detach() - 0.5 * grad_a, "b": params["b"].detach() - 0.25 * grad_b}
    optim.step(_loss(params["a"], params["b"]), params)
    torch.testing.assert_close(store["a"].detach(), expected["a"], rtol=1e-6, atol=0)
    torch.testing.assert_close(store["b"].detach(), expected["b"], rtol=1e-6, atol=0)


def test_mixed_multi_optimizer_errors_name_the_param(store):
    adam, sgd = sg.optim.Adam({"lr": 0.1}), sg.optim.SGD({"lr": 0.1})
    with pytest.raises(ValueError, match="'a'"):
        MixedMultiOptimizer([(["a"], adam), (["a", "b"], sgd)])
    optim = MixedMultiOptimizer([(["a"], adam)])
    params = {"a": store.get("a", torch.ones(2)), "zed": store.get("zed", torch.ones(1))}
    with pytest.raises(ValueError, match="'zed'"):
        optim.step(_loss(params["a"], params["zed"]), params)
    with pytest.raises(TypeError, match="Optim or a MultiOptimizer"):
        MixedMultiOptimizer([(["a"], torch.optim.Adam)])


def test_torch_multi_optimizer_matches_hand_written_torch(store):
    params = {"a": store.get("a", torch.tensor([0.5, 3.0])),
              "b": store.get("b", torch.tensor([1.5]))}
    ref_a, ref_b = _leaf([0.5, 3.0]), _leaf([1.5])
    ref_opt = torch.optim.Adam([ref_a, ref_b], lr=0.1, betas=(0.8, 0.9))
    optim = TorchMultiOptimizer(torch.optim.Adam, {"lr": 0.1, "betas": (0.8, 0.9)})
    for _ in range(3):
        optim.step(_loss(params["a"], params["b"]), params)
        ref_opt.zero_grad()
        _loss(ref_a, ref_b).backward()
        ref_opt.step()
    assert torch.equal(store["a"].detach(), ref_a.detach())
    assert torch.equal(store["b"].detach(), ref_b.detach())


def test_optim_multi_optimizer_exact_sgd_step(store):
    params = {"a": store.get("a", torch.tensor([0.5, 3.0]))}
    optim = OptimMultiOptimizer(sg.optim.SGD({"lr": 0.5}))
    grad = 6.0 * (torch.tensor([0.5, 3.0]) - torch.tensor([1.0, 2.0]))
    optim.step(((params["a"] - torch.tensor([1.0, 2.0])) ** 2).sum() * 3.0, params)
    assert torch.equal(store["a"].detach(), torch.tensor([0.5, 3.0]) - 0.5 * grad)


def test_get_step_does_not_apply_or_advance_state(store):
    store.get("a", torch.tensor([0.5, 3.0]), constraints.positive)
    store.get("b", torch.tensor([1.5]))
    optim = MixedMultiOptimizer([(["a"], sg.optim.Adam({"lr": 0.1})),
                                 (["b"], sg.optim.ClippedAdam({"lr": 0.1, "lrd": 0.5}))])

    def loss_and_params():
        params = {"a": store["a"], "b": store["b"]}  # fresh constrained values: a new graph
        return _loss(params["a"], params["b"]), params

    optim.step(*loss_and_params())  # some state to keep intact
    before = {n: store[n].unconstrained().detach().clone() for n in ("a", "b")}
    new = optim.get_step(*loss_and_params())
    for n in ("a", "b"):
        assert torch.equal(store[n].unconstrained().detach(), before[n])
        assert not torch.equal(new[n], before[n])
    optim.step(*loss_and_params())
    for n in ("a", "b"):
        assert torch.equal(store[n].unconstrained().detach(), new[n])


def test_multi_optimizer_subclass_overriding_get_step_only(store):
    class HalfStep(MultiOptimizer):
        def get_step(self, loss, params):
            (grad,) = torch.autograd.grad(loss, [params["a"]])
            return {"a": params["a"].detach() - 0.5 * grad}

    params = {"a": store.get("a", torch.tensor([2.0]))}
    HalfStep().step((params["a"] ** 2).sum(), params)
    assert torch.equal(store["a"].detach(), torch.tensor([0.0]))


# state: save, load, resume
def _train(optim, store, steps, start):
    for step in range(start, start + steps):
        loss = sum(((store[n] - TARGET[: len(store[n])] * (1 + step % 3)) ** 2).sum()
                   for n in ("a", "b"))
        loss.backward()
        leaves = [store[n].unconstrained() for n in ("a", "b")]
        optim(leaves)
        if isinstance(optim, LRScheduler):
            optim.step()
        for leaf in leaves:
            leaf.grad = None


def _init(store):
    store.clear()
    store.get("a", torch.tensor([0.3, -0.7, 1.1]))
    store.get("b", torch.tensor([2.0, 0.5]))


RESUMABLE = [
    lambda: sg.optim.Adam({"lr": 0.05}),
    lambda: sg.optim.ClippedAdam({"lr": 0.05, "lrd": 0.9, "clip_norm": 1.0}),
    lambda: sg.optim.StepLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05},
                             "step_size": 3, "gamma": 0.5}),
    lambda: sg.optim.SGD(lambda name: {"lr": 0.01 if name == "a" else 0.02, "momentum": 0.9}),
]


@pytest.mark.parametrize("make", RESUMABLE, ids=["Adam", "ClippedAdam", "StepLR", "SGD-callable"])
def test_save_load_resumes_bit_exactly(store, tmp_path, make):
    _init(store)
    straight = make()
    _train(straight, store, 10, 0)
    expected = {n: store[n].detach().clone() for n in ("a", "b")}

    _init(store)
    first = make()
    _train(first, store, 4, 0)
    store.save(tmp_path / "params.pt")
    first.save(tmp_path / "optim.pt")
    _train(first, store, 3, 4)  # progress after the save is discarded

    store.clear()
    store.load(tmp_path / "params.pt")
    resumed = make()
    resumed.load(tmp_path / "optim.pt")
    _train(resumed, store, 6, 4)
    for n in ("a", "b"):
        assert torch.equal(store[n].detach(), expected[n]), n


def test_same_optimizer_keeps_state_by_name_when_store_is_restored(store):
    _init(store)
    straight = sg.optim.Adam({"lr": 0.05})
    _train(straight, store, 10, 0)
    expected = {n: store[n].detach().clone() for n in ("a", "b")}

    _init(store)
    optim = sg.optim.Adam({"lr": 0.05})
    _train(optim, store, 4, 0)
    params_state, optim_state = store.get_state(), optim.get_state()
    _train(optim, store, 3, 4)
    optim.set_state(optim_state)  # before the store: applied to the old leaves, then inherited
    store.set_state(params_state)
    _train(optim, store, 6, 4)
    for n in ("a", "b"):
        assert torch.equal(store[n].detach(), expected[n]), n


def test_get_state_is_keyed_by_name_and_set_state_applies_lazily(store):
    _init(store)
    optim = sg.optim.Adam({"lr": 0.05})
    _train(optim, store, 3, 0)
    state = optim.get_state()
    assert set(state) == {"a", "b"}
    assert float(state["a"]["state"]["step"]) == 3 and state["a"]["group"]["lr"] == 0.05
    fresh = sg.optim.Adam({"lr": 0.05})
    fresh.set_state(state)
    assert set(fresh.get_state()) == {"a", "b"}  # pending state is kept
    _train(fresh, store, 1, 3)
    assert float(fresh.get_state()["b"]["state"]["step"]) == 4


def test_late_param_with_saved_state_does_not_rewind_shared_lr(store):
    _init(store)
    optim = sg.optim.ClippedAdam({"lr": 0.08, "lrd": 0.5})
    _train(optim, store, 2, 0)
    state = optim.get_state()
    assert state["b"]["group"]["lr"] == 0.02
    resumed = sg.optim.ClippedAdam({"lr": 0.08, "lrd": 0.5})
    resumed.set_state(state)
    a, b = store["a"].unconstrained(), store["b"].unconstrained()
    for _ in range(2):
        a.grad = torch.ones(3)
        resumed([a])  # the group is created from a's saved entry, then decays
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    resumed([a, b])  # b's saved entry brings its state, not the old lr
    assert resumed.optimizers[0].param_groups[0]["lr"] == 0.02 * 0.5 ** 3
    assert float(resumed.get_state()["b"]["state"]["step"]) == 3


def test_set_state_rejects_non_state(store):
    with pytest.raises(ValueError, match="get_state"):
        sg.optim.Adam({"lr": 0.1}).set_state({"a": torch.ones(2)})


_EXECUTED = []


def _mark(tag):
    _EXECUTED.append(tag)
    return tag


class _Payload:
    def __reduce__(self):
        return (_mark, ("unpickled",))


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"a": {"state": {}, "group": {"hook": _Payload()}}}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        sg.optim.Adam({"lr": 0.1}).load(path)
    assert _EXECUTED == []
    torch.load(path, weights_only=False)  # the payload is live: it runs when unpickled
    assert _EXECUTED == ["unpickled"]
    _EXECUTED.clear()


# argument errors
def test_constructor_and_args_errors():
    with pytest.raises(TypeError, match="torch.optim.Optimizer subclass"):
        Optim("adam", {"lr": 0.1})
    with pytest.raises(TypeError, match="instance"):
        Optim(torch.optim.SGD([_leaf([1.0])], lr=0.1), {"lr": 0.1})
    with pytest.raises(TypeError, match="lrr"):
        Optim(torch.optim.Adam, {"lrr": 0.1})
    with pytest.raises(TypeError, match="optim_args must be a dict"):
        sg.optim.Adam(0.1)
    assert isinstance(Optim(sg.optim.Adam, {"lr": 0.1}), Optim)
