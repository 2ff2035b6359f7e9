"""The per-step fast paths compute exactly what the reference paths compute.

* Unchecked steps: once a plan's first step has run with torch's distribution checks on,
  later steps run with them off. Same random draws must give bit-identical losses and
  gradients, and bad values must still raise the same errors.
* Lean recording: with no user handler active, ``param`` statements skip the handler stack.
  The records, losses and gradients must equal those of the full stack (forced here by an
  extra no-op handler).
"""

import pytest
import torch
from torch import nn
from torch.distributions import Distribution

import svigraph as sg
import svigraph.primitives as primitives
import svigraph.infer.elbo as elbo_module
from svigraph import distributions as dist
from svigraph.constraints import positive
from svigraph.effects import Messenger
from svigraph.errors import NonFiniteLossError, ShapeMismatchError, SupportError
from svigraph.infer import SVI, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO
from svigraph.infer.elbo import RECHECK_EVERY
from tests.models import hmm_model, no_guide

FLIPS = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
CHECKS = []  # torch's default validation flag, as each model run saw it


# ---- models: one per kind of plan the runtime executes ------------------------------------
def coin_model(flips):
    CHECKS.append(Distribution._validate_args)
    f = sg.sample("f", dist.Beta(10.0, 10.0))
    with sg.plate("flips", len(flips)):
        sg.sample("obs", dist.Bernoulli(f), obs=flips)


def coin_score_guide(flips):
    a = sg.param("a", torch.tensor(12.0), constraint=positive)
    b = sg.param("b", torch.tensor(9.0), constraint=positive)
    sg.sample("f", dist.Beta(a, b).with_rsample(False),
              infer={"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}})


def coin_pathwise_guide(flips):
    a = sg.param("a", torch.tensor(12.0), constraint=positive)
    b = sg.param("b", torch.tensor(9.0), constraint=positive)
    sg.sample("f", dist.Beta(a, b))


def mixture_model(x):
    CHECKS.append(Distribution._validate_args)
    locs = sg.sample("locs", dist.Normal(torch.zeros(3), 5.0).to_event(1))
    with sg.plate("data", len(x)):
        z = sg.sample("z", dist.Categorical(torch.ones(3) / 3))
        sg.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def mixture_guide(x):
    m = sg.param("m", torch.tensor([-1.0, 0.0, 1.0]))
    locs = sg.sample("locs", dist.Normal(m, 1.0).to_event(1))
    logits = sg.param("logits", torch.zeros(len(x), 3))
    with sg.plate("data", len(x)):
        sg.sample("z", dist.Categorical(logits=logits))
    return locs


def enum_model(x):
    CHECKS.append(Distribution._validate_args)
    locs = sg.sample("locs", dist.Normal(torch.zeros(3), 5.0).to_event(1))
    with sg.plate("data", len(x)):
        z = sg.sample("z", dist.Categorical(torch.ones(3) / 3),
                      infer={"enumerate": "parallel"})
        sg.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def locs_guide(x):
    m = sg.param("m", torch.tensor([-1.0, 0.0, 1.0]))
    sg.sample("locs", dist.Normal(m, 1.0).to_event(1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Linear(4, 6)
        self.q = nn.Linear(6, 4)
        self.base = nn.Linear(6, 1)


NET = None


def belief_model(x):
    CHECKS.append(Distribution._validate_args)
    sg.module("net", NET)
    with sg.plate("batch", x.shape[0]):
        z = sg.sample("z", dist.Bernoulli(logits=torch.zeros(x.shape[0], 4)).to_event(1))
        sg.sample("x", dist.Bernoulli(logits=NET.p(z)).to_event(1), obs=x)


def belief_guide(x):
    sg.module("net", NET)
    with sg.plate("batch", x.shape[0]):
        sg.sample("z", dist.Bernoulli(logits=NET.q(x)).to_event(1),
                  infer={"baseline": {"nn_baseline": lambda v: NET.base(v).squeeze(-1),
                                      "nn_baseline_input": x}})


def chain_model(x):
    CHECKS.append(Distribution._validate_args)
    z = torch.tensor(0.0)
    for i in range(6):
        z = sg.sample(f"z{i}", dist.Normal(z, 1.0))
    sg.sample("x", dist.Normal(z, 1.0), obs=x)


def chain_guide(x):
    for i in range(6):
        m = sg.param(f"m{i}", torch.tensor(0.1 * i))
        s = sg.param(f"s{i}", torch.tensor(1.0), constraint=positive)
        sg.sample(f"z{i}", dist.Normal(m, s).with_rsample(i % 2 == 0))


def _belief_data():
    return (torch.rand(5, 6, generator=torch.Generator().manual_seed(3)) < 0.4).float()


CASES = {
    "coin-score-baseline": (coin_model, coin_score_guide, TraceGraph_ELBO, lambda: (FLIPS,)),
    "coin-pathwise": (coin_model, coin_pathwise_guide, Trace_ELBO, lambda: (FLIPS,)),
    "mixture-score": (mixture_model, mixture_guide, TraceGraph_ELBO,
                      lambda: (torch.tensor([-2.0, 0.1, 2.5, 1.0]),)),
    "mixture-enum": (enum_model, locs_guide, lambda: TraceEnum_ELBO(max_plate_nesting=1),
                     lambda: (torch.tensor([-2.0, 0.1, 2.5, 1.0]),)),
    "belief-nn-baseline": (belief_model, belief_guide, TraceGraph_ELBO, lambda: (_belief_data(),)),
    "chain-half-score": (chain_model, chain_guide, TraceGraph_ELBO, lambda: (torch.tensor(1.0),)),
}


@pytest.fixture(autouse=True)
def _fresh():
    global NET
    torch.manual_seed(0)
    NET = Net()
    CHECKS.clear()
    yield
    CHECKS.clear()


def _loss_and_grads(elbo, model, guide, args, seed):
    torch.manual_seed(seed)
    loss = elbo.differentiable_loss(model, guide, *args)
    leaves = dict(sg.get_param_store().named_parameters())
    for leaf in leaves.values():
        leaf.grad = None
    loss.backward()
    grads = {name: leaf.grad.clone() for name, leaf in leaves.items() if leaf.grad is not None}
    for leaf in leaves.values():
        leaf.grad = None
    return loss.detach(), grads


@pytest.mark.parametrize("case", sorted(CASES))
def test_unchecked_step_equals_checked_step(case, monkeypatch):
    """A warm objective (plan validated, so its step runs unchecked) and a fresh one (its
    first step runs checked) give bit-identical losses and gradients from the same seed,
    baseline state included. The unchecked step checks only its one observed value."""
    model, guide, make_elbo, make_args = CASES[case]
    args = make_args()
    warm, fresh = make_elbo(), make_elbo()
    for seed in (10, 11):  # compile, then one unchecked step
        _loss_and_grads(warm, model, guide, args, seed)
    CHECKS.clear()
    fresh.baselines.set_state(warm.baselines.get_state())
    checked_values = []
    real_check = Distribution._validate_sample

    def counting_check(self, value):
        checked_values.append(type(self).__name__)
        return real_check(self, value)

    monkeypatch.setattr(Distribution, "_validate_sample", counting_check)
    real_shape_check = elbo_module._check_sample_shape  # a real-valued site's check

    def counting_shape_check(fn, value):
        checked_values.append(type(fn).__name__)
        return real_shape_check(fn, value)

    monkeypatch.setattr(elbo_module, "_check_sample_shape", counting_shape_check)
    elbo_module._SHAPES_CHECKED.clear()  # shapes that passed are not checked again: forget
    fast_loss, fast_grads = _loss_and_grads(warm, model, guide, args, seed=7)
    assert CHECKS == [False], "the warm objective did not take the unchecked path"
    assert len(checked_values) == 1, checked_values  # the observed site, nothing else
    monkeypatch.undo()
    CHECKS.clear()
    ref_loss, ref_grads = _loss_and_grads(fresh, model, guide, args, seed=7)
    assert CHECKS[0] is True, "the fresh objective did not check its first step"
    assert torch.equal(fast_loss, ref_loss), (fast_loss, ref_loss)
    assert fast_grads.keys() == ref_grads.keys() and fast_grads
    for name in ref_grads:
        assert torch.equal(fast_grads[name], ref_grads[name]), name
    assert warm.baselines.get_state().keys() == fresh.baselines.get_state().keys()
    for site, avg in warm.baselines.get_state().items():
        assert torch.equal(avg, fresh.baselines.get_state()[site]), site


def test_training_with_fast_paths_equals_reference_training():
    """Fifty SVI steps with every fast path on equal, bit for bit, fifty steps run fully
    checked through the full handler stack (the reference path)."""
    def train(reference):
        sg.clear_param_store()
        torch.manual_seed(1)
        elbo = TraceGraph_ELBO()
        svi = SVI(coin_model, coin_score_guide, sg.optim.Adam({"lr": 0.05}), elbo)
        losses = []
        for _ in range(50):
            if reference:
                elbo._validated.clear()  # every step is a plan's first: checked
                with Messenger():        # a user handler: the full stack for every statement
                    losses.append(svi.step(FLIPS))
            else:
                losses.append(svi.step(FLIPS))
        return losses, {k: v.detach().clone() for k, v in sg.get_param_store().items()}

    fast_losses, fast_params = train(reference=False)
    ref_losses, ref_params = train(reference=True)
    assert fast_losses == ref_losses
    for name, value in ref_params.items():
        assert torch.equal(fast_params[name], value), name


def test_periodic_checked_step():
    """Every RECHECK_EVERY-th particle on a validated plan runs checked (a safety net)."""
    elbo = Trace_ELBO()
    for _ in range(RECHECK_EVERY + 3):
        elbo.loss(coin_model, coin_pathwise_guide, FLIPS)
    # run 0: checked; 1: compiling (its tracing always unchecked); then RECHECK_EVERY
    # unchecked steps, one checked, one unchecked
    assert len(CHECKS) == RECHECK_EVERY + 4
    assert [i for i, checked in enumerate(CHECKS) if checked] == [0, RECHECK_EVERY + 2]


def test_new_structure_runs_checked():
    """A step that lands on a plan not seen before (a new data size) runs checked, and its
    draws are those of an unchecked attempt (the replay restores the random state)."""
    elbo = TraceGraph_ELBO()
    for _ in range(3):
        elbo.loss(coin_model, coin_score_guide, FLIPS)
    longer = torch.cat([FLIPS, FLIPS])
    CHECKS.clear()
    torch.manual_seed(5)
    value = elbo.loss(coin_model, coin_score_guide, longer)
    assert CHECKS[-1] is True and len(elbo._cache(coin_model, coin_score_guide)) == 2
    torch.manual_seed(5)
    assert TraceGraph_ELBO().loss(coin_model, coin_score_guide, longer) == value


# ---- errors are still raised on unchecked steps -------------------------------------------
def test_observed_value_outside_support_on_unchecked_step():
    elbo = Trace_ELBO()
    for _ in range(3):
        elbo.loss(coin_model, coin_pathwise_guide, FLIPS)
    bad = FLIPS.clone()
    bad[2] = 2.0  # Bernoulli data must be 0 or 1; its unchecked log-prob would be finite
    with pytest.raises(SupportError, match="obs"):
        elbo.loss(coin_model, coin_pathwise_guide, bad)


@pytest.mark.parametrize("change", ["in-place", "data-swap", "categorical-size"])
def test_checked_data_changed_later_is_checked_again(change):
    """An observed tensor whose support check passed is not re-checked elementwise while it
    is unchanged; changed in place, given new storage (``x.data = y``) or scored by a
    support of another size, it is checked again and the error names the site."""
    def cat_model(x):
        k = sg.param("k", torch.tensor(3))  # not a leaf of the loss: just the size
        with sg.plate("xs", len(x)):
            sg.sample("obs", dist.Categorical(torch.ones(int(k)) / int(k)), obs=x)

    elbo = Trace_ELBO()
    if change == "categorical-size":
        data = torch.tensor([0, 2, 1, 2])
        for _ in range(3):
            elbo.loss(cat_model, no_guide, data)
        sg.get_param_store().get("k").unconstrained().data.fill_(2)  # support now {0, 1}
        with pytest.raises(SupportError, match="obs"):
            elbo.loss(cat_model, no_guide, data)
        return
    data = FLIPS.clone()
    for _ in range(3):
        elbo.loss(coin_model, coin_pathwise_guide, data)
    if change == "in-place":
        data[2] = 2.0
    else:
        bad = FLIPS.clone()
        bad[2] = 2.0
        data.data = bad
    with pytest.raises(SupportError, match="obs"):
        elbo.loss(coin_model, coin_pathwise_guide, data)


def test_support_check_of_unchanged_data_is_skipped(monkeypatch):
    """The same, unchanged data tensor is support-checked once, not every step."""
    calls = []
    real = torch.distributions.Bernoulli._validate_sample

    def counting(self, value):
        calls.append(value)
        return real(self, value)

    monkeypatch.setattr(torch.distributions.Bernoulli, "_validate_sample", counting)
    elbo = Trace_ELBO()
    data = FLIPS.clone()
    for _ in range(6):
        elbo.loss(coin_model, coin_pathwise_guide, data)
    # the checked first step validates in log_prob; the first unchecked step checks the
    # data once; the other four only check its shape
    assert sum(1 for v in calls if v is data) == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_real_observation_on_unchecked_step_names_the_site(bad):
    """A real-valued observation is only shape-checked on an unchecked step: a nan (outside
    the real line) or an infinity makes the loss non-finite, which replays the step checked
    and names the site; the params are left as they were."""
    def model(x):
        f = sg.sample("f", dist.Beta(10.0, 10.0))
        with sg.plate("xs", len(x)):
            sg.sample("obs", dist.Normal(f, 1.0), obs=x)

    svi = SVI(model, coin_pathwise_guide, sg.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(3):
        svi.step(FLIPS)
    before = {k: v.detach().clone() for k, v in sg.get_param_store().named_parameters()}
    data = FLIPS.clone()
    data[1] = bad
    with pytest.raises((SupportError, NonFiniteLossError), match="obs"):
        svi.step(data)
    for name, value in sg.get_param_store().named_parameters():
        assert torch.equal(value.detach(), before[name]), name


def test_misshapen_real_observation_on_unchecked_step_names_the_site():
    """The shape half of the check still runs on unchecked steps for real-valued data."""
    def model(x):
        f = sg.sample("f", dist.Beta(10.0, 10.0))
        with sg.plate("xs", 3):
            sg.sample("obs", dist.Normal(f, 1.0), obs=x)

    elbo = Trace_ELBO()
    for _ in range(3):
        elbo.loss(model, coin_pathwise_guide, torch.zeros(3))
    with pytest.raises(ShapeMismatchError, match="obs"):
        elbo.loss(model, coin_pathwise_guide, torch.zeros(4))


def test_nan_param_on_unchecked_step_names_the_param():
    elbo = Trace_ELBO()
    for _ in range(3):
        elbo.differentiable_loss(coin_model, coin_pathwise_guide, FLIPS)
    with torch.no_grad():
        dict(sg.get_param_store().named_parameters())["a"].fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="'a'"):
        elbo.differentiable_loss(coin_model, coin_pathwise_guide, FLIPS)


def _shifted_model(shift):
    def model(flips):
        f = sg.sample("f", dist.Beta(10.0, 10.0))
        with sg.plate("flips", len(flips)):
            sg.sample("obs", dist.Normal(f, 1.0 - shift[0]), obs=flips)
    return model


def test_invalid_argument_on_unchecked_step_raises_torch_error():
    """An argument outside its constraint that makes the loss non-finite (a negative
    scale: log of a negative number): the replayed, checked step raises torch's own error."""
    shift = [0.0]
    model = _shifted_model(shift)
    elbo = Trace_ELBO()
    for _ in range(3):
        elbo.loss(model, coin_pathwise_guide, FLIPS)
    shift[0] = 3.0
    with pytest.raises(ValueError, match="scale"):
        elbo.loss(model, coin_pathwise_guide, FLIPS)


def test_invalid_argument_with_finite_loss_raises_by_the_periodic_check():
    """An argument outside its constraint whose unchecked loss stays finite (torch clamps
    Bernoulli probs above 1) is caught at the latest by the periodic checked step."""
    shift = [0.0]

    def model(flips):
        f = sg.sample("f", dist.Beta(10.0, 10.0))
        with sg.plate("flips", len(flips)):
            sg.sample("obs", dist.Bernoulli(f + shift[0]), obs=flips)

    elbo = Trace_ELBO()
    for _ in range(3):
        elbo.loss(model, coin_pathwise_guide, FLIPS)
    shift[0] = 2.0  # probs above 1
    with pytest.raises(ValueError, match="probs"):
        for _ in range(RECHECK_EVERY + 1):
            elbo.loss(model, coin_pathwise_guide, FLIPS)


# ---- lean recording -----------------------------------------------------------------------
@pytest.mark.parametrize("case", ["belief-nn-baseline", "chain-half-score", "mixture-score"])
def test_lean_params_equal_full_stack(case, monkeypatch):
    """With no user handler, params skip the stack: same params recorded, same loss and
    gradients as with a (no-op) user handler forcing every statement through the stack."""
    model, guide, make_elbo, make_args = CASES[case]
    args = make_args()
    messages = []
    real_apply_stack = primitives.apply_stack

    def counting_apply_stack(msg):
        messages.append(msg["type"])
        return real_apply_stack(msg)

    monkeypatch.setattr(primitives, "apply_stack", counting_apply_stack)
    elbo = make_elbo()
    _loss_and_grads(elbo, model, guide, args, seed=1)
    messages.clear()
    lean_loss, lean_grads = _loss_and_grads(elbo, model, guide, args, seed=2)
    lean_params = set(elbo.last_params)
    assert "param" not in messages and lean_params
    messages.clear()
    with Messenger():
        full_loss, full_grads = _loss_and_grads(elbo, model, guide, args, seed=2)
    assert "param" in messages
    assert set(elbo.last_params) == lean_params
    assert torch.equal(lean_loss, full_loss)
    assert lean_grads.keys() == full_grads.keys()
    for name in full_grads:
        assert torch.equal(lean_grads[name], full_grads[name]), name


# ---- plate-expanded distributions: log densities from the unexpanded one ------------------
@pytest.mark.parametrize("make, value", [
    (lambda: dist.Categorical(torch.tensor([0.2, 0.3, 0.5])), torch.arange(3).reshape(3, 1, 1)),
    (lambda: dist.Normal(torch.tensor([[0.5], [1.0], [2.0], [3.0]]), 2.0), torch.randn(4, 5)),
    (lambda: dist.Bernoulli(0.3), torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])),
    (lambda: dist.Normal(torch.zeros(2), 1.0).to_event(1), torch.randn(4, 5, 2)),
    (lambda: dist.Categorical(logits=torch.randn(5, 3)).mask(torch.tensor([True, False] * 2
                                                                          + [True])),
     torch.tensor([0, 2, 1, 1, 0])),
], ids=["categorical-enumerated", "normal", "bernoulli", "independent", "masked"])
def test_plate_expanded_log_prob_equals_full_log_prob(make, value):
    """runtime.terms computes a plate-expanded site's log density on the distribution
    before expansion and broadcasts it: the values equal the expanded one's bit for bit."""
    from runtime.terms import site_log_prob
    with sg.plate("outer", 4, dim=-2), sg.plate("inner", 5, dim=-1):
        trace = sg.handlers.trace(lambda: sg.sample("s", make(), obs=value)).get_trace()
    site = trace.nodes["s"]
    full = site["fn"].log_prob(value)
    fast = site_log_prob(site)
    assert fast.shape == full.shape and torch.equal(fast, full)


def test_plate_expanded_log_prob_of_a_badly_shaped_value_raises_as_before():
    """A value that does not broadcast with the plate gets the full path's error."""
    from runtime.terms import UNEXPANDED, site_log_prob
    with sg.plate("data", 5):
        trace = sg.handlers.trace(
            lambda: sg.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(5))).get_trace()
    site = dict(trace.nodes["x"], value=torch.zeros(3))
    assert UNEXPANDED in site["fn"].__dict__
    with pytest.raises(SupportError, match="'x'"):
        site_log_prob(site)


def test_collector_is_paused_during_a_step_and_restored_after():
    """The cyclic GC is off while a step records and executes, and left as found after,
    also when the step raises."""
    import gc
    states = []

    def model(flips):
        states.append(gc.isenabled())
        coin_model(flips)

    sg.clear_param_store()
    svi = SVI(model, coin_score_guide, sg.optim.Adam({"lr": 0.01}), TraceGraph_ELBO())
    assert gc.isenabled()
    svi.step(FLIPS)
    assert states == [False, False] and gc.isenabled()  # traced once, then the step

    def bad_model(flips):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        TraceGraph_ELBO().loss(bad_model, coin_score_guide, FLIPS)
    assert gc.isenabled()
    gc.disable()
    try:
        svi.step(FLIPS)
        assert not gc.isenabled()  # left disabled when the caller had it disabled
    finally:
        gc.enable()


@pytest.mark.parametrize("kind", ["tracegraph", "traceenum-hmm"])
def test_a_steps_records_are_freed_before_the_collector_resumes(kind, monkeypatch):
    """The collection that re-enabling the GC triggers scans every object allocated during
    the step that is still alive: the step's records and distributions must be gone by
    then (an HMM's per-site containers, kept by the loss's terms, made it cost 7 ms a step
    at T=1,000)."""
    import weakref
    made = []

    def hmm(data):  # tests.models.hmm_model, keeping a weak reference to each site's fn
        trans = sg.param("trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]]),
                         constraint=sg.constraints.simplex)
        with sg.plate("seqs", data.shape[1], dim=-1):
            z = 0
            for t in sg.markov(range(data.shape[0])):
                d = dist.Categorical(trans[z])
                made.append(weakref.ref(d))
                z = sg.sample(f"z{t}", d, infer={"enumerate": "parallel"})
                sg.sample(f"x{t}", dist.Normal(z.float(), 1.0), obs=data[t])

    def guide(flips):
        q = dist.Beta(sg.param("a", torch.tensor(2.0), constraint=positive), 2.0)
        q = q.with_rsample(False)  # a score-function site: its log q is in the surrogate
        made.append(weakref.ref(q))
        sg.sample("f", q)

    alive = []
    real_exit = elbo_module.gc_paused.__exit__

    def exit_(self, *exc):
        alive.append(sum(r() is not None for r in made))
        return real_exit(self, *exc)

    sg.clear_param_store()
    if kind == "tracegraph":
        svi, data = SVI(coin_model, guide, sg.optim.Adam({"lr": 0.01}), TraceGraph_ELBO()), FLIPS
    else:  # long enough for the parallel scan, which takes the stacked factors whole
        data = torch.linspace(-2.0, 2.0, 40 * 3).reshape(40, 3).sin() * 2.0
        svi = SVI(hmm, no_guide, sg.optim.Adam({"lr": 0.01}),
                  TraceEnum_ELBO(max_plate_nesting=1))
    svi.step(data)
    monkeypatch.setattr(elbo_module.gc_paused, "__exit__", exit_)
    made.clear()
    svi.step(data)
    assert made and alive == [0]


KEY_CASES = {**CASES, "hmm-enum": (hmm_model, no_guide,
                                   lambda: TraceEnum_ELBO(max_plate_nesting=1),
                                   lambda: (torch.tensor([[0.1, -1.0], [1.2, 0.4], [-0.7, 0.9]]),))}


@pytest.mark.parametrize("case", sorted(KEY_CASES))
def test_signatures_taken_while_recording_make_the_structure_key(case):
    """Each site's signature, taken as the step records it, gives the structure key that
    the finished records give (the plan cache's key)."""
    from runtime.records import args_signature, structure_key
    from svigraph.recording import record, recorded_structure_key

    model, guide, make_elbo, make_args = KEY_CASES[case]
    elbo, args = make_elbo(), make_args()
    elbo.differentiable_loss(model, guide, *args)
    run_model, run_guide = elbo._programs(model, guide)
    guide_rec, model_rec = record(run_model, run_guide, args, {})
    assert guide_rec.signatures is not None and model_rec.signatures is not None
    assert len(model_rec.signatures) == len(model_rec.sites) > 0
    key = recorded_structure_key(guide_rec, model_rec, ("args",))
    assert key == structure_key(guide_rec.sites, model_rec.sites, ("args",))
    assert recorded_structure_key(guide_rec, model_rec, args_signature(args, {})) \
        == elbo.last_plan.key  # the plan this structure compiled to is found under it


def test_a_handler_that_changes_a_recorded_site_gets_the_key_of_the_final_records():
    """A user's handler sits inside the recorder and postprocesses after it: a site it
    changes is keyed as it finally is (the signatures taken while recording are dropped)."""
    from runtime.records import structure_key
    from svigraph.recording import record, recorded_structure_key

    class Widen(Messenger):
        def postprocess_message(self, msg):
            if msg["type"] == "sample" and msg["name"] == "obs":
                msg["value"] = msg["value"].expand(2, -1)

    def model(flips):
        with Widen():
            coin_model(flips)

    guide_rec, model_rec = record(model, coin_pathwise_guide, (FLIPS,), {})
    assert model_rec.signatures is None and guide_rec.signatures is not None
    key = recorded_structure_key(guide_rec, model_rec)
    assert key == structure_key(guide_rec.sites, model_rec.sites)
    assert (2, len(FLIPS)) in [tuple(sig[2]) for sig in key[1]]


@pytest.mark.parametrize("obs", [0.5, 1, [1.0, 0.0]])
def test_an_observed_value_that_is_not_a_tensor_names_the_site(obs):
    def model():
        f = sg.sample("f", dist.Beta(2.0, 2.0))
        sg.sample("flip", dist.Bernoulli(f), obs=obs)

    def guide():
        sg.sample("f", dist.Beta(sg.param("a", torch.tensor(2.0), constraint=positive), 2.0))

    sg.clear_param_store()
    with pytest.raises(sg.errors.ObservationError, match="'flip'.*tensor") as err:
        Trace_ELBO().differentiable_loss(model, guide)
    fix = f"obs=torch.tensor({obs!r})" if not isinstance(obs, list) else "obs=torch.as_tensor("
    assert err.value.site == "flip" and fix in str(err.value)
    assert isinstance(err.value, TypeError)


def test_a_conditioned_value_that_is_not_a_tensor_names_the_site():
    def model():
        f = sg.sample("f", dist.Beta(2.0, 2.0))
        sg.sample("flip", dist.Bernoulli(f))

    def guide():
        sg.sample("f", dist.Beta(sg.param("a", torch.tensor(2.0), constraint=positive), 2.0))

    sg.clear_param_store()
    conditioned = sg.handlers.condition(model, data={"flip": 1.0})
    with pytest.raises(sg.errors.ObservationError, match="'flip': condition") as err:
        Trace_ELBO().differentiable_loss(conditioned, guide)
    assert "condition(data={'flip': torch.tensor(1.0)})" in str(err.value)
    ok = sg.handlers.condition(model, data={"flip": torch.tensor(1.0)})
    assert torch.isfinite(Trace_ELBO().differentiable_loss(ok, guide))


def test_plate_expanded_factor_keeps_its_log_density():
    """A factor's log density ignores its value: broadcast over the plates it sits in, a
    scalar factor under a plate of 3 counts three times (as the full log_prob says)."""
    from runtime.terms import site_log_prob
    with sg.plate("g", 3, dim=-2):
        trace = sg.handlers.trace(lambda: sg.factor("f", torch.tensor(-1.0))).get_trace()
    site = trace.nodes["f"]
    full = site["fn"].log_prob(site["value"])
    assert torch.equal(site_log_prob(site), full) and float(full.sum()) == -3.0


def test_factor_under_vectorized_particles_counts():
    """A param-only penalty (sg.factor) in a model run under vectorized particles: its
    gradient enters the loss (d/dw of -(-w^2/2) is w = 2)."""
    def model(d):
        w = sg.param("w", torch.tensor(2.0))
        sg.factor("reg", -0.5 * w ** 2)
        z = sg.sample("z", dist.Normal(0.0, 1.0))
        with sg.plate("n", 6):
            sg.sample("x", dist.Normal(z, 1.0), obs=d)

    def guide(d):
        sg.sample("z", dist.Normal(sg.param("loc", torch.tensor(0.3)), 1.0))

    sg.clear_param_store()
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, guide, torch.linspace(-1, 1, 6))
    w = sg.param("w").unconstrained()
    (grad,) = torch.autograd.grad(loss, [w])
    assert float(grad) == pytest.approx(2.0, abs=1e-6)


# ---- positive params: plain exp instead of torch's exp-then-affine(0, 1) -----------------
@pytest.mark.parametrize("constraint", [positive, sg.constraints.nonnegative,
                                        sg.constraints.greater_than(0.0)])
def test_positive_param_transform_equals_torch_biject_to(constraint):
    """``param_transform`` drops torch's exact ``x * 1 + 0`` after ``exp``: same constrained
    values, same inverse (the stored leaf) and same gradients, bit for bit."""
    from torch.distributions import biject_to, transforms
    from svigraph.params import param_transform
    ours, torchs = param_transform(constraint), biject_to(constraint)
    assert isinstance(ours, transforms.ExpTransform)
    assert not isinstance(torchs, transforms.ExpTransform)  # what the shortcut skips
    x = (torch.randn(200, dtype=torch.float64) * 20).requires_grad_()
    y, y_ref = ours(x), torchs(x)
    assert torch.equal(y, y_ref)
    assert torch.equal(ours.inv(y.detach()), torchs.inv(y_ref.detach()))
    weights = torch.randn(200, dtype=torch.float64)
    (grad,) = torch.autograd.grad((y * weights).sum(), x)
    (grad_ref,) = torch.autograd.grad((y_ref * weights).sum(), x)
    assert torch.equal(grad, grad_ref)


def test_other_constraints_keep_torch_transform():
    from torch.distributions import biject_to
    from svigraph.params import param_transform
    for constraint in (sg.constraints.greater_than(1.0), sg.constraints.simplex,
                       sg.constraints.interval(0.0, 2.0), sg.constraints.real):
        assert type(param_transform(constraint)) is type(biject_to(constraint))


# ---- lazy plate expansion of observed and enumerated sites --------------------------------
LAZY_CASES = {
    "mixture-enum": (enum_model, locs_guide, lambda: TraceEnum_ELBO(max_plate_nesting=1),
                     lambda: (torch.tensor([-2.0, 0.1, 2.5, 1.0]),)),
    "hmm-markov": (hmm_model, no_guide, lambda: TraceEnum_ELBO(max_plate_nesting=1),
                   lambda: (torch.randn(6, 3),)),
    "coin-pathwise": (coin_model, coin_pathwise_guide, Trace_ELBO, lambda: (FLIPS,)),
}


@pytest.mark.parametrize("case", sorted(LAZY_CASES))
def test_lazy_plate_expansion_equals_full_expansion(case, monkeypatch):
    """Recorded by svigraph's own handlers only, a plated observed or enumerated site keeps
    its parameters unexpanded; with a user handler on the stack plates expand them. Same
    loss, bit for bit, on the same draws; same gradients up to the order of float sums (the
    HMM's table, indexed by the same enumerated values at every step, gets its steps'
    gradients summed before one indexing node's backward on the lazy path, see
    ``runtime.stacked_terms._stack_rows``, and through one node per step on the other)."""
    model, guide, make_elbo, make_args = LAZY_CASES[case]
    lazy = []
    real = primitives._lazily_expanded
    monkeypatch.setattr(primitives, "_lazily_expanded", lambda *a: lazy.append(1) or real(*a))
    args = make_args()
    elbo = make_elbo()
    _loss_and_grads(elbo, model, guide, args, seed=1)
    lazy.clear()
    lazy_loss, lazy_grads = _loss_and_grads(elbo, model, guide, args, seed=2)
    assert lazy  # the step took the lazy path
    lazy.clear()
    with Messenger():
        full_loss, full_grads = _loss_and_grads(elbo, model, guide, args, seed=2)
    assert not lazy
    assert torch.equal(lazy_loss, full_loss)
    assert lazy_grads.keys() == full_grads.keys() and lazy_grads
    for name in full_grads:
        torch.testing.assert_close(lazy_grads[name], full_grads[name], rtol=1e-6, atol=1e-7,
                                   msg=name)


def test_lazy_expansion_only_under_recording_handlers():
    """The records of an ELBO step hold lazily expanded observed sites (right batch shape,
    parameters as given); under a user handler they hold fully expanded ones."""
    from runtime.terms import LAZY_EXPANDED
    from svigraph.recording import record
    _, lean = record(coin_model, coin_pathwise_guide, (FLIPS,), {})
    obs = lean.sites["obs"]["fn"]
    assert LAZY_EXPANDED in obs.__dict__ and obs.batch_shape == (6,) and obs.probs.shape == ()
    _, lean = record(mixture_model, mixture_guide, (torch.tensor([-2.0, 0.1, 2.5, 1.0]),), {})
    z = lean.sites["z"]["fn"]  # sampled in the guide and replayed: a latent, expanded
    assert LAZY_EXPANDED not in z.__dict__ and z.probs.shape == (4, 3)
    with Messenger():
        _, full = record(coin_model, coin_pathwise_guide, (FLIPS,), {})
    obs = full.sites["obs"]["fn"]
    assert LAZY_EXPANDED not in obs.__dict__ and obs.probs.shape == (6,)


def test_lazily_expanded_site_is_expanded_before_it_is_sampled():
    """An enumeration flag under an objective that does not enumerate: the site is sampled,
    from the fully expanded distribution (right shape, right parameters)."""
    def model(data):
        with sg.plate("data", 5):
            z = sg.sample("z", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])),
                          infer={"enumerate": "parallel"})
        return z

    from svigraph.recording import record
    _, rec = record(model, no_guide, (None,), {})
    site = rec.sites["z"]
    assert site["value"].shape == (5,)
    assert site["fn"].probs.shape == (5, 3)


def test_importance_trace_sites_have_expanded_parameters():
    """Records turned into a user's Trace (Importance) carry fully expanded distributions."""
    from svigraph.infer import Importance
    posterior = Importance(mixture_model, mixture_guide, num_samples=2).run(
        torch.tensor([-2.0, 0.1, 2.5, 1.0]))
    trace = posterior.exec_traces[0]
    fn = trace.nodes["x"]["fn"]
    assert fn.batch_shape == (4,) and fn.loc.shape == (4,) and fn.scale.shape == (4,)


# ---- small ELBOs summed by a chain of ops, not a stack -------------------------------------
@pytest.mark.parametrize("case", ["coin-score-baseline", "coin-pathwise", "mixture-enum",
                                  "chain-half-score"])
def test_chained_elbo_sum_equals_stacked_sum(case, monkeypatch):
    """Up to four ELBO terms are summed by a chain of adds (and a score whose cost is every
    term takes the ELBO's value): the loss and gradients equal those of the stacked,
    sign-multiplied sum the runtime uses for more terms, on the same draws."""
    import runtime.executor as executor
    model, guide, make_elbo, make_args = CASES[case]
    args = make_args()
    results = []
    for chain_at_most in (executor._CHAIN_AT_MOST, 0):
        monkeypatch.setattr(executor, "_CHAIN_AT_MOST", chain_at_most)
        sg.clear_param_store()
        elbo = make_elbo()
        _loss_and_grads(elbo, model, guide, args, seed=3)  # first step, baselines warm up
        results.append(_loss_and_grads(elbo, model, guide, args, seed=4))
    (loss, grads), (ref_loss, ref_grads) = results
    assert torch.allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        assert torch.allclose(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6), name


def test_plan_cache_follows_the_model_and_guide_pair():
    """The ELBO keeps the last (model, guide) pair's plan cache at hand: switching pairs,
    and back, still finds each pair's own cache and plan."""
    elbo = Trace_ELBO()
    elbo.loss(coin_model, coin_pathwise_guide, FLIPS)
    coin_cache = elbo._cache(coin_model, coin_pathwise_guide)
    coin_plan = elbo.last_plan
    args = (torch.tensor([-2.0, 0.1, 2.5, 1.0]),)
    elbo.loss(mixture_model, mixture_guide, *args)
    mixture_cache = elbo._cache(mixture_model, mixture_guide)
    assert mixture_cache is not coin_cache and elbo.last_plan is not coin_plan
    elbo.loss(coin_model, coin_pathwise_guide, FLIPS)
    assert elbo._cache(coin_model, coin_pathwise_guide) is coin_cache
    assert elbo.last_plan is coin_plan and len(coin_cache) == 1


def test_traceenum_programs_follow_the_model_and_guide_pair():
    """TraceEnum_ELBO wraps a pair's programs in its enumeration handlers once and reuses
    them; switching pairs, and back, gives each pair the loss a fresh objective gives."""
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    first = elbo._programs(enum_model, locs_guide)
    assert elbo._programs(enum_model, locs_guide) is first
    assert elbo._programs(hmm_model, no_guide) is not first
    x, data = torch.tensor([-2.0, 0.1, 2.5, 1.0]), torch.randn(4, 3)
    runs = [(enum_model, locs_guide, x), (hmm_model, no_guide, data), (enum_model, locs_guide, x)]
    for model, guide, arg in runs:
        torch.manual_seed(5)
        loss = elbo.loss(model, guide, arg)
        torch.manual_seed(5)
        assert loss == TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, arg)


# ---- the loss built from the negated ELBO -----------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_particle_loss_equals_negated_elbo_plus_surrogate(case):
    """A particle's loss, built as a chain of ``guide - model`` terms when the runtime can
    (no negation ops), has the value and gradients of -(elbo + (s - s.detach())) on the
    same draws."""
    model, guide, make_elbo, make_args = CASES[case]
    args = make_args()
    elbo = make_elbo()
    _loss_and_grads(elbo, model, guide, args, seed=3)  # first step: checked, baselines warm
    torch.manual_seed(4)
    parts = elbo._particle(model, guide, args, {})
    s = parts.surrogate
    reference = -(parts.elbo + (s - s.detach())) if s.requires_grad else -parts.elbo
    loss = parts.loss()
    assert torch.equal(loss, reference)
    leaves = [leaf for _, leaf in sg.get_param_store().named_parameters()]
    got = torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(reference, leaves, allow_unused=True)
    assert any(g is not None for g in got)
    for g, w in zip(got, want):
        assert (g is None) == (w is None) and (g is None or torch.allclose(g, w, rtol=1e-6,
                                                                           atol=1e-7))


def test_nonfinite_surrogate_makes_the_particle_loss_nan():
    from runtime.executor import LossParts
    leaf = torch.tensor(1.0, requires_grad=True)
    parts = LossParts(leaf * 2.0, leaf * float("inf"), {})
    assert torch.isnan(parts.loss())
    parts = LossParts(None, leaf * 0.0, {}, neg_elbo=leaf * 3.0)
    assert parts.loss().item() == 3.0 and parts.elbo.item() == -3.0


def test_step_returns_the_float_its_finite_check_read():
    """SVI.step returns the loss value the finite check already read (no second sync): the
    same float as the differentiable loss of the same draws; any other tensor is read."""
    model, guide, make_elbo, make_args = CASES["coin-score-baseline"]
    args = make_args()
    elbo = make_elbo()
    svi = SVI(model, guide, sg.optim.SGD({"lr": 0.0}), elbo)  # lr 0: the params stay put
    for _ in range(3):
        svi.step(*args)
    torch.manual_seed(8)
    state = elbo.baselines.get_state()
    value = svi.step(*args)
    elbo.baselines.set_state(state)
    torch.manual_seed(8)
    loss = elbo.differentiable_loss(model, guide, *args)
    assert value == float(loss.detach()) and elbo.loss_value(loss) == value
    other = loss.detach() + 1.0
    assert elbo.loss_value(other) == float(other)


# ---- one-pass recording of sample sites ---------------------------------------------------
def nested_plates_model(x):
    scale = sg.sample("scale", dist.Gamma(2.0, 2.0))
    with sg.plate("groups", 3, dim=-2):
        mu = sg.sample("mu", dist.Normal(0.0, 1.0))
        with sg.plate("items", 8, subsample_size=4, dim=-1) as idx:
            sg.sample("y", dist.Normal(mu, scale), obs=x[:, idx])
    for i in sg.plate("loop", 2):
        with sg.plate("inner", 3):
            sg.sample(f"w{i}", dist.Bernoulli(0.3), obs=torch.ones(3))


def nested_plates_guide(x):
    a = sg.param("a", torch.tensor(1.5), constraint=positive)
    sg.sample("scale", dist.Gamma(a, 2.0))
    with sg.plate("groups", 3, dim=-2):
        sg.sample("mu", dist.Normal(torch.zeros(3, 1), 1.0))


def sequential_guide(x):
    p = sg.param("p", torch.tensor([0.001, 0.999]), constraint=sg.constraints.simplex)
    sg.sample("c", dist.Categorical(p), infer={"enumerate": "sequential"})
    with sg.plate("data", len(x)):
        sg.sample("z", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"})


def sequential_model(x):
    c = sg.sample("c", dist.Categorical(torch.tensor([0.5, 0.5])))
    with sg.plate("data", len(x)):
        z = sg.sample("z", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"})
        sg.sample("x", dist.Normal(z.float() + c.float(), 1.0), obs=x)


RECORD_CASES = {
    "hmm-markov-enum": (hmm_model, no_guide, 2, lambda: (torch.randn(6, 3),)),
    "mixture-enum": (enum_model, locs_guide, 2, lambda: (torch.tensor([-2.0, 0.1, 2.5]),)),
    "nested-subsampled-sequential": (nested_plates_model, nested_plates_guide, None,
                                     lambda: (torch.randn(3, 8),)),
    "guide-enumerated-sequentially": (sequential_model, sequential_guide, 1,
                                      lambda: (torch.tensor([0.1, 1.2, 2.0]),)),
}


def _records(model, guide, args, plates):
    """Both programs' records, under TraceEnum_ELBO's handlers when ``plates`` is given."""
    from svigraph.handlers import enum, sequential_choice
    from svigraph.recording import record
    if plates is not None:
        chooser, inner = sequential_choice(), enum(guide, first_available_dim=-plates - 1)
        model = enum(model, after=inner)

        def guide(*a):
            with chooser:
                return inner(*a)
    torch.manual_seed(3)
    guide_rec, model_rec = record(model, guide, args, {})
    return {**{("guide", n): s for n, s in guide_rec.sites.items()},
            **{("model", n): s for n, s in model_rec.sites.items()}}


@pytest.mark.parametrize("case", sorted(RECORD_CASES))
def test_one_pass_recording_equals_the_handler_stack(case, monkeypatch):
    """A site recorded in one pass (``primitives._recorded``) holds what ``apply_stack``
    through every handler leaves: same keys, values, frames, scales, enumeration dims and
    distributions (class, batch shape, lazy expansion, parameters)."""
    from runtime.terms import LAZY_EXPANDED, UNEXPANDED
    model, guide, plates, make_args = RECORD_CASES[case]
    args = make_args()
    real, fast = primitives._recorded, []

    def counted(*a):
        msg = real(*a)
        fast.append(msg is not None)
        return msg

    monkeypatch.setattr(primitives, "_recorded", counted)
    _records(model, guide, args, plates)  # the plates' broadcasts are known from here on
    fast.clear()
    one_pass = _records(model, guide, args, plates)
    taken = sum(fast)
    monkeypatch.setattr(primitives, "_recorded", lambda *a: None)
    stacked = _records(model, guide, args, plates)
    assert taken == len(one_pass)  # every site took the one pass
    assert one_pass.keys() == stacked.keys()
    for key, site in one_pass.items():
        other = stacked[key]
        assert site.keys() == other.keys(), key
        for field in ("type", "is_observed", "infer", "scale", "mask", "cond_indep_stack",
                      "stop", "args"):
            assert site[field] == other[field], (key, field)
        assert site.get("enum_dim") == other.get("enum_dim"), key
        assert torch.equal(site["value"], other["value"]), key
        fn, ref = site["fn"], other["fn"]
        assert type(fn) is type(ref) and fn.batch_shape == ref.batch_shape, key
        assert fn.__dict__.keys() == ref.__dict__.keys(), key
        assert (LAZY_EXPANDED in fn.__dict__) == (LAZY_EXPANDED in ref.__dict__), key
        base, ref_base = fn.__dict__.get(UNEXPANDED, fn), ref.__dict__.get(UNEXPANDED, ref)
        for name in ("loc", "scale", "probs", "logits", "concentration", "rate"):
            if name in base.__dict__ or hasattr(type(base), name):
                try:
                    mine, theirs = getattr(base, name), getattr(ref_base, name)
                except (AttributeError, NotImplementedError):
                    continue
                assert torch.equal(mine, theirs), (key, name)


def test_one_pass_recording_leaves_errors_to_the_handler_stack():
    """A plate clash the one pass meets falls to ``apply_stack``, which names it."""
    from svigraph.errors import PlateError

    def model(x):
        with sg.plate("data", 4):
            sg.sample("x", dist.Normal(torch.zeros(4), 1.0), obs=x)
            sg.sample("y", dist.Normal(torch.zeros(5), 1.0), obs=torch.zeros(5))

    with pytest.raises(PlateError, match="'y'.*size 5"):
        _records(model, no_guide, (torch.zeros(4),), None)


# ---- sg.module: its own parameter walk and the path for registered parameters -------------
def _shared_net():
    shared = nn.Linear(2, 2)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), shared, nn.Sequential(shared, nn.Linear(2, 2)),
                        nn.LSTM(2, 3, num_layers=2))
    net.extra = nn.Parameter(torch.zeros(1))
    net.tied = net[0].weight  # a parameter under a second name
    return net


@pytest.mark.parametrize("make", [_shared_net, lambda: nn.Linear(1, 1), nn.Module],
                         ids=["shared-and-none", "linear", "empty"])
def test_module_walk_equals_torch_named_parameters(make):
    net = make()
    assert [(k, id(p)) for k, p in primitives.named_parameters(net)] == \
        [(k, id(p)) for k, p in net.named_parameters()]


def test_registered_module_records_its_parameters_and_follows_a_loaded_store(tmp_path):
    """A module registered already takes the short path in a step: the recorded params are
    the module's own Parameters; a store loaded later still overwrites the module."""
    net = nn.Linear(2, 1)

    def model(data):
        sg.module("net", net)
        sg.sample("y", dist.Normal(net(torch.ones(2)).squeeze(), 1.0), obs=data)

    elbo = Trace_ELBO()
    elbo.loss(model, no_guide, torch.tensor(0.5))  # registers the parameters
    elbo.differentiable_loss(model, no_guide, torch.tensor(0.5))
    assert elbo.last_params == {"net.weight": net.weight, "net.bias": net.bias}
    store = sg.get_param_store()
    store.save(tmp_path / "p.pt")
    saved = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    store.load(tmp_path / "p.pt")  # new leaves under the same names: copied into the module
    elbo.differentiable_loss(model, no_guide, torch.tensor(0.5))
    assert torch.equal(net.weight.detach(), saved)
    assert dict(store.named_parameters())["net.weight"] is net.weight
