"""The JIT objectives compute exactly what their eager counterparts compute.

Each test runs the eager objective and the JIT one from the same seed through the same
sequence of steps (gradient step by plain SGD on the store's leaves) and compares every
step's loss and gradients: the JIT's warm-up step is eager, its next step is the capturing
run, and the steps after it replay the captured graph, so all three paths are checked.
The "fx" backend replays the recorded aten calls, so equality is to float rounding (rtol
1e-6); the inductor backend fuses arithmetic into C++ kernels (rtol 1e-4; a slow test,
since compiling takes seconds).
"""

import re

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.constraints import positive
from svigraph.errors import NonFiniteLossError
from svigraph.infer import (JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, SVI,
                            Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, config_enumerate)
from tests.models import hmm_model, no_guide

FX = {"backend": "fx"}
FLIPS = torch.tensor([1.0] * 6 + [0.0] * 4)
BASELINE = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}


def run_steps(elbo, model, guide, args, steps=5, lr=0.05, kwargs_per_step=None, seed=0):
    """Per step: (loss, {param: grad}); then an SGD step on the leaves, in place."""
    sg.clear_param_store()
    sg.set_rng_seed(seed)
    store = sg.get_param_store()
    out = []
    for i in range(steps):
        kwargs = kwargs_per_step(i) if kwargs_per_step else {}
        loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        grads = {}
        with torch.no_grad():
            for name, leaf in store.named_parameters():
                if leaf.grad is not None:
                    grads[name] = leaf.grad.clone()
                    leaf -= lr * leaf.grad
                    leaf.grad = None
        out.append((float(loss.detach()), grads))
    return out


def assert_same(eager, jit, rtol=1e-6, atol=1e-6):
    assert len(eager) == len(jit)
    for step, ((le, ge), (lj, gj)) in enumerate(zip(eager, jit)):
        assert lj == pytest.approx(le, rel=rtol, abs=atol), f"step {step}: loss {lj} != {le}"
        assert ge.keys() == gj.keys(), f"step {step}: params with grads differ"
        for name in ge:
            assert torch.allclose(gj[name], ge[name], rtol=rtol, atol=atol), \
                f"step {step}: grad of {name}: {gj[name]} != {ge[name]}"


def losses(objective, model, guide, data, calls=4, seed=1):
    """``objective.loss`` called ``calls`` times from a fresh store and seed."""
    sg.clear_param_store()
    sg.set_rng_seed(seed)
    return [objective.loss(model, guide, data) for _ in range(calls)]


def captured(elbo, mode="step"):
    return elbo.last_plan.jit.get(mode, "")


# ---- coin -------------------------------------------------------------------------------
def coin_model(data):
    f = sg.sample("fairness", dist.Beta(10.0, 10.0))
    with sg.plate("flips", len(data)):
        sg.sample("obs", dist.Bernoulli(f), obs=data)


def coin_guide(data):
    a = sg.param("alpha_q", torch.tensor(15.0), constraint=positive)
    b = sg.param("beta_q", torch.tensor(15.0), constraint=positive)
    sg.sample("fairness", dist.Beta(a, b))


def coin_score_guide(data):
    a = sg.param("alpha_q", torch.tensor(15.0), constraint=positive)
    b = sg.param("beta_q", torch.tensor(15.0), constraint=positive)
    sg.sample("fairness", dist.Beta(a, b).with_rsample(False), infer=BASELINE)


def test_coin_pathwise_equals_eager():
    eager = run_steps(Trace_ELBO(), coin_model, coin_guide, (FLIPS,), steps=6)
    elbo = JitTrace_ELBO(jit_options=FX)
    jit = run_steps(elbo, coin_model, coin_guide, (FLIPS,), steps=6)
    assert_same(eager, jit)
    assert captured(elbo).startswith("captured forward + backward")
    text = str(elbo.last_plan)
    assert text.startswith("plan JitTrace_ELBO(num_particles=1, jit=fx)")
    assert "  jit step: captured forward + backward: " in text and \
        "inputs 2 param(s), 1 argument tensor(s); fx replay" in text


def test_coin_score_function_with_decaying_baseline_equals_eager():
    eager_elbo = TraceGraph_ELBO()
    eager = run_steps(eager_elbo, coin_model, coin_score_guide, (FLIPS,), steps=8)
    elbo = JitTraceGraph_ELBO(jit_options=FX)
    jit = run_steps(elbo, coin_model, coin_score_guide, (FLIPS,), steps=8)
    assert_same(eager, jit)
    # the baseline's running average evolved identically (it is a graph input and output)
    assert torch.allclose(elbo.baselines.averages["fairness"],
                          eager_elbo.baselines.averages["fairness"], rtol=1e-6)
    assert "1 baseline average(s)" in captured(elbo)


def test_loss_only_and_site_scales_equal_eager():
    """``loss()`` captures a forward-only graph; per-call ``site_scales`` values (KL
    annealing) are graph inputs, so changing them each step needs no recapture."""
    def scales(i):
        return {"site_scales": {"fairness": 0.1 * (i + 1)}}

    eager = run_steps(Trace_ELBO(), coin_model, coin_guide, (FLIPS,), steps=5,
                      kwargs_per_step=scales)
    elbo = JitTrace_ELBO(jit_options=FX)
    jit = run_steps(elbo, coin_model, coin_guide, (FLIPS,), steps=5, kwargs_per_step=scales)
    assert_same(eager, jit)
    assert "site_scales fairness" in captured(elbo, "step[site_scales fairness]")

    elbo = JitTrace_ELBO(jit_options=FX)
    assert losses(elbo, coin_model, coin_guide, FLIPS) == pytest.approx(
        losses(Trace_ELBO(), coin_model, coin_guide, FLIPS), rel=1e-6)
    assert captured(elbo, "loss").startswith("captured forward (loss only)")


@pytest.mark.parametrize("options", [
    {"num_particles": 3},
    {"num_particles": 4, "vectorize_particles": True, "max_plate_nesting": 1}],
    ids=["sequential", "vectorized"])
def test_particles_equal_eager(options):
    eager = run_steps(Trace_ELBO(**options), coin_model, coin_guide, (FLIPS,))
    jit = run_steps(JitTrace_ELBO(jit_options=FX, **options), coin_model, coin_guide, (FLIPS,))
    assert_same(eager, jit)
    eager = run_steps(TraceGraph_ELBO(**options), coin_model, coin_score_guide, (FLIPS,))
    jit = run_steps(JitTraceGraph_ELBO(jit_options=FX, **options), coin_model,
                    coin_score_guide, (FLIPS,))
    assert_same(eager, jit)


def test_loss_and_grads_accumulates_like_eager_and_hands_out_own_tensors():
    """From a capture, loss_and_grads writes the gradients into .grad without autograd; they
    add to a .grad already there, and no two leaves (nor the data) share a gradient tensor."""
    def model(x):
        a = sg.param("a", torch.zeros(3))
        b = sg.param("b", torch.zeros(3))
        sg.factor("f", (a + b).sum() + (a * x).sum() - (a ** 2 + b ** 2).sum())

    def guide(x):
        pass

    x = torch.tensor([1.0, 2.0, 3.0])
    for objective in (Trace_ELBO(), JitTrace_ELBO(jit_options=FX)):
        sg.clear_param_store()
        for _ in range(3):
            loss = objective.loss_and_grads(model, guide, x)
        a, b = (dict(sg.get_param_store().named_parameters())[n] for n in "ab")
        # three accumulated steps at a = b = 0: d(-f)/da = -(1 + x), d(-f)/db = -1
        assert torch.equal(a.grad, -3.0 * (1.0 + x)) and torch.equal(b.grad, -3.0 * torch.ones(3))
        assert loss == 0.0
        b.grad.zero_()
        assert torch.equal(a.grad, -3.0 * (1.0 + x))
        assert torch.equal(x, torch.tensor([1.0, 2.0, 3.0]))
    assert captured(objective).startswith("captured forward + backward")


# ---- chain and plates ---------------------------------------------------------------------
def chain_model(x, n=10):
    z = sg.sample("z_0", dist.Normal(0.0, 1.0))
    for i in range(1, n):
        z = sg.sample(f"z_{i}", dist.Normal(z, 1.0))
    sg.sample("x", dist.Normal(z, 1.0), obs=x)


def chain_guide(x, n=10):
    for i in range(n):
        loc = sg.param(f"loc_{i}", torch.tensor(0.1 * i))
        scale = sg.param(f"scale_{i}", torch.tensor(1.0), constraint=positive)
        sg.sample(f"z_{i}", dist.Normal(loc, scale))


def test_chain_of_ten_equals_eager():
    x = torch.tensor(1.5)
    eager = run_steps(Trace_ELBO(), chain_model, chain_guide, (x,))
    elbo = JitTrace_ELBO(jit_options=FX)
    jit = run_steps(elbo, chain_model, chain_guide, (x,))
    assert_same(eager, jit)
    assert "inputs 20 param(s), 1 argument tensor(s)" in captured(elbo)


def plated_model(data):
    mu = sg.sample("mu", dist.Normal(0.0, 5.0))
    with sg.plate("groups", 6, subsample_size=3) as idx:
        theta = sg.sample("theta", dist.Normal(mu, 1.0))
        sg.sample("obs", dist.Normal(theta, 0.5), obs=data[idx])


def plated_guide(data):
    m = sg.param("m", torch.tensor(0.0))
    s = sg.param("s", torch.tensor(1.0), constraint=positive)
    locs = sg.param("locs", torch.zeros(6))
    mu = sg.sample("mu", dist.Normal(m, s))
    with sg.plate("groups", 6, subsample_size=3) as idx:
        sg.sample("theta", dist.Normal(locs[idx] + 0.1 * mu, 1.0))


def test_subsampled_plate_equals_eager():
    """The subsample indices are a random draw (randperm) replayed inside the graph; the
    plate's scale 6/3 applies to the local terms as in the eager objective."""
    data = torch.tensor([0.5, -1.0, 2.0, 0.3, 1.1, -0.4])
    eager = run_steps(Trace_ELBO(), plated_model, plated_guide, (data,), steps=6)
    jit = run_steps(JitTrace_ELBO(jit_options=FX), plated_model, plated_guide, (data,), steps=6)
    assert_same(eager, jit)


# ---- enumeration ---------------------------------------------------------------------------
@config_enumerate
def mixture_model(x):
    weights = sg.param("weights", torch.tensor([0.3, 0.7]), constraint=sg.constraints.simplex)
    locs = sg.sample("locs", dist.Normal(torch.zeros(2), 5.0).to_event(1))
    with sg.plate("data", len(x)):
        k = sg.sample("k", dist.Categorical(weights))
        sg.sample("obs", dist.Normal(locs[k], 1.0), obs=x)


def mixture_guide(x):
    loc = sg.param("loc_q", torch.tensor([-1.0, 1.0]))
    sg.sample("locs", dist.Normal(loc, 0.5).to_event(1))


def test_enumerated_mixture_equals_eager():
    x = torch.tensor([-2.1, -1.7, 0.2, 2.5, 3.1])
    eager = run_steps(TraceEnum_ELBO(max_plate_nesting=1), mixture_model, mixture_guide, (x,))
    elbo = JitTraceEnum_ELBO(max_plate_nesting=1, jit_options=FX)
    jit = run_steps(elbo, mixture_model, mixture_guide, (x,))
    assert_same(eager, jit)
    assert captured(elbo).startswith("captured forward + backward")
    assert str(elbo.last_plan).startswith("plan JitTraceEnum_ELBO(")


# ---- structure changes ---------------------------------------------------------------------
def branching_model(data):
    c = sg.sample("c", dist.Bernoulli(0.5))
    if c.item() == 1.0:
        z = sg.sample("z", dist.Normal(1.0, 1.0))
    else:
        z = torch.tensor(0.0)
    sg.sample("obs", dist.Normal(z, 1.0), obs=data)


def branching_guide(data):
    p = sg.param("p", torch.tensor(0.5), constraint=sg.constraints.unit_interval)
    c = sg.sample("c", dist.Bernoulli(p))
    if c.item() == 1.0:
        sg.sample("z", dist.Normal(sg.param("zloc", torch.tensor(0.0)), 1.0))


def test_structure_changing_with_a_sampled_value_stays_exact():
    """The model reads c into Python: the plan has control edges, so no step is ever
    replayed from a capture: each runs the program, detects its structure, and the second
    structure compiles a plan of its own."""
    data = torch.tensor(0.7)
    eager = run_steps(TraceGraph_ELBO(), branching_model, branching_guide, (data,), steps=10)
    elbo = JitTraceGraph_ELBO(jit_options=FX)
    jit = run_steps(elbo, branching_model, branching_guide, (data,), steps=10)
    assert_same(eager, jit)
    cache = elbo._cache(branching_model, branching_guide)
    assert len(cache) == 2  # both branches ran, each compiled once
    assert "not captured: site 'c' is read into Python" in captured(elbo)


def counting_model(counts):
    z = sg.sample("z", dist.Normal(0.0, 1.0))
    for i in range(int(counts.sum())):  # the structure depends on the data's values
        sg.sample(f"obs_{i}", dist.Normal(z, 1.0), obs=torch.tensor(0.5))


def counting_guide(counts):
    sg.sample("z", dist.Normal(sg.param("loc", torch.tensor(0.0)), 1.0))


def test_python_read_of_an_argument_is_not_captured():
    """Arguments are guarded by shape, not value, so a step that reads one into Python
    cannot be replayed: the capture stops at the read and the guard runs eagerly."""
    def steps(elbo):
        sg.clear_param_store()
        sg.set_rng_seed(0)
        return [elbo.loss(counting_model, counting_guide, torch.tensor([1.0, float(i % 3)]))
                for i in range(6)]

    elbo = JitTrace_ELBO(jit_options=FX)
    assert steps(elbo) == pytest.approx(steps(Trace_ELBO()), rel=1e-6)
    assert "not captured: the step could not be captured" in captured(elbo, "loss")


def test_new_argument_shape_captures_again_and_stays_exact():
    def args(i):
        return (FLIPS,) if i % 2 == 0 else (torch.cat([FLIPS, FLIPS]),)

    def steps(elbo):
        sg.clear_param_store()
        sg.set_rng_seed(0)
        out = []
        for i in range(8):
            out.append(elbo.loss(coin_model, coin_guide, *args(i)))
        return out

    elbo = JitTrace_ELBO(jit_options=FX)
    assert steps(elbo) == pytest.approx(steps(Trace_ELBO()), rel=1e-6)
    assert len(elbo._cache(coin_model, coin_guide)) == 2
    assert len(elbo._table(coin_model, coin_guide)) == 2
    assert all(e.step is not None for e in elbo._table(coin_model, coin_guide).values())


def test_params_recreated_mid_run_stay_exact():
    """Clearing the store creates new leaves from the inits: the capture notices the missing
    params, the next step runs eagerly (creating them) and the one after captures again."""
    def steps(elbo):
        sg.set_rng_seed(0)
        out = []
        for i in range(7):
            if i == 3:
                sg.clear_param_store()
            out.append(float(elbo.differentiable_loss(coin_model, coin_guide, FLIPS).detach()))
        return out

    sg.clear_param_store()
    eager = steps(Trace_ELBO())
    sg.clear_param_store()
    assert steps(JitTrace_ELBO(jit_options=FX)) == pytest.approx(eager, rel=1e-6)


def test_non_finite_param_raises_the_eager_error():
    elbo = JitTrace_ELBO(jit_options=FX)
    for _ in range(3):
        elbo.differentiable_loss(coin_model, coin_guide, FLIPS)
    assert captured(elbo)
    with torch.no_grad():
        dict(sg.get_param_store().named_parameters())["alpha_q"].fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="alpha_q"):
        elbo.differentiable_loss(coin_model, coin_guide, FLIPS)


def belief_net(seed=0):
    """(model, guide, nets): a two-layer sigmoid belief net whose weights live in modules
    registered with ``sg.module``, with a neural baseline (inside the registered module)
    for each score-function site; fresh weights from ``seed``."""
    torch.manual_seed(seed)
    nets = torch.nn.ModuleDict({"p_top": torch.nn.Linear(3, 4), "p_x": torch.nn.Linear(4, 5),
                                "q_x": torch.nn.Linear(5, 4), "q_top": torch.nn.Linear(4, 3),
                                "base_z": torch.nn.Linear(5, 1), "base_top": torch.nn.Linear(5, 1)})

    def model(x):
        sg.module("nets", nets)
        with sg.plate("batch", x.shape[0]):
            top = sg.sample("top", dist.Bernoulli(logits=torch.zeros(x.shape[0], 3)).to_event(1))
            z = sg.sample("z", dist.Bernoulli(logits=nets["p_top"](top)).to_event(1))
            sg.sample("x", dist.Bernoulli(logits=nets["p_x"](z)).to_event(1), obs=x)

    def guide(x):
        sg.module("nets", nets)
        with sg.plate("batch", x.shape[0]):
            z = sg.sample("z", dist.Bernoulli(logits=nets["q_x"](x)).to_event(1),
                          infer={"baseline": {"nn_baseline": nets["base_z"],
                                              "nn_baseline_input": x}})
            sg.sample("top", dist.Bernoulli(logits=nets["q_top"](z)).to_event(1),
                      infer={"baseline": {"nn_baseline": nets["base_top"],
                                          "nn_baseline_input": x}})

    return model, guide, nets


BELIEF_DATA = (torch.linspace(0.0, 1.0, 6 * 5).reshape(6, 5).sin() > 0.4).float()


@pytest.mark.parametrize("options", [FX, {"backend": "forward"}], ids=["fx", "forward"])
def test_registered_module_weights_enter_the_capture_as_inputs(options):
    """``sg.module`` weights (and a neural baseline's, inside the registered module) are the
    graph's inputs: the step is captured, its losses and gradients are the eager step's, and
    the modules keep their own Parameters."""
    model, guide, _ = belief_net()
    eager = run_steps(TraceGraph_ELBO(), model, guide, (BELIEF_DATA,), steps=5)
    model, guide, nets = belief_net()
    own = [p for p in nets.parameters()]
    elbo = JitTraceGraph_ELBO(jit_options=options)
    jit = run_steps(elbo, model, guide, (BELIEF_DATA,), steps=5)
    assert captured(elbo).startswith("captured"), captured(elbo)
    assert_same(eager, jit, rtol=1e-5, atol=1e-6)
    assert len(eager[-1][1]) == len(own) == 12  # every weight got its gradient
    assert all(a is b and type(a) is torch.nn.Parameter
               for a, b in zip(nets.parameters(), own))


def test_module_given_a_new_parameter_is_captured_again():
    """A module whose Parameter is replaced after the capture computes with the new one, as
    the eager step would: the guard sees the module changed and the step runs again."""
    model, guide, nets = belief_net()
    elbo = JitTraceGraph_ELBO(jit_options=FX)
    run_steps(elbo, model, guide, (BELIEF_DATA,), steps=3)
    assert captured(elbo).startswith("captured")
    fresh = torch.nn.Parameter(torch.zeros_like(nets["p_x"].weight))
    nets["p_x"].weight = fresh
    elbo.differentiable_loss(model, guide, BELIEF_DATA).backward()
    assert fresh.grad is not None and fresh.grad.abs().sum() > 0
    assert dict(sg.get_param_store().named_parameters())["nets.p_x.weight"] is fresh


def test_unregistered_module_weights_are_not_captured_as_constants():
    net = torch.nn.Linear(1, 1)

    def model(x):
        loc = net(torch.ones(1)).squeeze()  # never registered with sg.module
        z = sg.sample("z", dist.Normal(loc, 1.0))
        sg.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        sg.sample("z", dist.Normal(sg.param("q", torch.tensor(0.0)), 1.0))

    x = torch.tensor(1.0)
    eager = run_steps(Trace_ELBO(), model, guide, (x,), steps=4)
    elbo = JitTrace_ELBO(jit_options=FX)
    jit = run_steps(elbo, model, guide, (x,), steps=4)
    assert_same(eager, jit)  # runs eagerly, exact
    assert "not captured" in captured(elbo) and "requires grad" in captured(elbo)
    assert type(net.weight) is torch.nn.Parameter


def test_step_over_max_ops_replays_its_forward_pass():
    """With the inductor backend, a captured step bigger than max_ops is not compiled (it
    would take minutes): its forward pass is captured, simplified and replayed under
    autograd, with the eager objective's losses and gradients (same draws)."""
    data = torch.tensor([0.3, -1.2, 2.0, 0.7])
    eager = run_steps(Trace_ELBO(), normal_model, normal_guide, (data,), steps=6)
    elbo = JitTrace_ELBO(jit_options={"max_ops": 5})
    jit = run_steps(elbo, normal_model, normal_guide, (data,), steps=6)
    assert_same(eager, jit, rtol=1e-5)
    note = captured(elbo)
    assert note.startswith("captured the forward pass: ") and "replayed under autograd" in note


@pytest.mark.parametrize("oversize", [4, 10 ** 9], ids=["counted-eager-step", "captured-whole"])
def test_step_over_max_ops_is_found_out_either_way(oversize, monkeypatch):
    """A step is known to be over max_ops either from its eager step's aten-op count (far
    over: no whole-step capture) or from its whole-step capture (then the forward pass is
    captured on the next step); both end replaying the forward pass, exact as eager."""
    import svigraph.infer.jit_elbo as jit_elbo

    calls = []
    real_capture = jit_elbo.capture_step

    def counting_capture(fn, inputs, quiet=False):
        calls.append(len(inputs))
        return real_capture(fn, inputs, quiet)

    monkeypatch.setattr(jit_elbo, "OVERSIZE", oversize)
    monkeypatch.setattr(jit_elbo, "capture_step", counting_capture)
    data = torch.tensor([0.3, -1.2, 2.0, 0.7])
    eager = run_steps(Trace_ELBO(), normal_model, normal_guide, (data,), steps=5)
    elbo = JitTrace_ELBO(jit_options={"max_ops": 5})
    jit = run_steps(elbo, normal_model, normal_guide, (data,), steps=5)
    assert_same(eager, jit, rtol=1e-5)
    assert captured(elbo).startswith("captured the forward pass: ")
    assert len(calls) == (1 if oversize == 4 else 2)


def test_forward_replay_refused_for_a_custom_autograd_function():
    """Beta's sampler differentiates by a custom autograd.Function, which a replay of the
    recorded aten operations cannot: the replay is checked against the eager step when
    captured, refused, and the structure runs eagerly, exactly as the eager objective."""
    eager = run_steps(Trace_ELBO(), coin_model, coin_guide, (FLIPS,), steps=5)
    elbo = JitTrace_ELBO(jit_options={"backend": "forward"})
    jit = run_steps(elbo, coin_model, coin_guide, (FLIPS,), steps=5)
    assert_same(eager, jit)
    note = captured(elbo)
    assert note.startswith("not captured: its forward pass, replayed under autograd")
    assert "_sample_dirichlet" in note


def test_unknown_jit_option_is_refused():
    with pytest.raises(ValueError, match="unknown jit_options"):
        JitTrace_ELBO(jit_options={"bakend": "fx"})
    JitTrace_ELBO(jit_options={"check_trace": False}, ignore_jit_warnings=True)  # Pyro's


# ---- training -------------------------------------------------------------------------------
def normal_model(data):
    mu = sg.sample("mu", dist.Normal(0.0, 2.0))
    with sg.plate("data", len(data)):
        sg.sample("obs", dist.Normal(mu, 1.0), obs=data)


def normal_guide(data):
    loc = sg.param("loc", torch.tensor(0.0))
    scale = sg.param("scale", torch.tensor(1.0), constraint=positive)
    sg.sample("mu", dist.Normal(loc, scale))


def train(loss, steps=400):
    sg.clear_param_store()
    sg.set_rng_seed(0)
    data = torch.tensor([1.2, 0.8, 1.9, 1.4, 0.6, 1.1, 1.5, 0.9])
    svi = SVI(normal_model, normal_guide, sg.optim.Adam({"lr": 0.05}), loss)
    losses = [svi.step(data) for _ in range(steps)]
    store = sg.get_param_store()
    return losses, store["loc"].item(), store["scale"].item()


def test_svi_with_jit_loss_trains_like_eager():
    """Normal-Normal: the exact posterior is N(sum(x) / (n + 1/4), 1 / (n + 1/4)). SVI with
    the JIT loss follows the eager trajectory step for step and ends near the posterior."""
    eager_losses, eager_loc, eager_scale = train(Trace_ELBO())
    jit_losses, jit_loc, jit_scale = train(JitTrace_ELBO(jit_options=FX))
    assert jit_losses == pytest.approx(eager_losses, rel=1e-5)
    assert jit_loc == pytest.approx(eager_loc, rel=1e-5)
    assert jit_scale == pytest.approx(eager_scale, rel=1e-5)
    n, total = 8, 9.4
    post_loc, post_scale = total / (n + 0.25), (1.0 / (n + 0.25)) ** 0.5
    # 400 noisy steps at lr 0.05: the guide lands within ~3 posterior sds of the mean
    assert abs(jit_loc - post_loc) < 0.3 and abs(jit_scale - post_scale) < 0.15


# ---- the inductor backend ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("objective, eager_objective, guide", [
    (JitTrace_ELBO, Trace_ELBO, coin_guide),
    (JitTraceGraph_ELBO, TraceGraph_ELBO, coin_score_guide)], ids=["pathwise", "score"])
def test_inductor_backend_equals_eager(objective, eager_objective, guide):
    eager = run_steps(eager_objective(), coin_model, guide, (FLIPS,), steps=5)
    elbo = objective(jit_options={"backend": "inductor"}, ignore_jit_warnings=True)
    jit = run_steps(elbo, coin_model, guide, (FLIPS,), steps=5)
    # inductor reassociates float32 arithmetic (~1e-7 relative per operation); a score-function
    # gradient multiplies by cost minus baseline, a difference that magnifies it to ~1e-5
    assert_same(eager, jit, rtol=1e-4, atol=1e-5)
    assert "inductor, compiled in" in captured(elbo)


# ---- the "forward" backend: the forward pass replayed under autograd --------------------------
HMM_DATA = torch.linspace(-2.0, 2.0, 40 * 3).reshape(40, 3).sin() * 2.0  # long: a scan


@pytest.fixture
def float64():
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(saved)


@pytest.mark.parametrize("case", ["normal", "hmm"])
def test_forward_backend_equals_eager(case, float64):
    """The "forward" backend (forward pass captured, repeated work merged, replayed under
    autograd) gives the eager objective's losses and gradients over six SGD steps; the
    HMM's loop repeats the same transition work every step, which the replay does once.
    In float64: merged work may add the same terms in another order, a rounding
    difference that float32 training trajectories amplify (to 1e-5 in six steps here)."""
    if case == "normal":
        args, model, guide = (torch.tensor([0.3, -1.2, 2.0, 0.7]),), normal_model, normal_guide
        eager_elbo, jit_elbo = Trace_ELBO(), JitTrace_ELBO(jit_options={"backend": "forward"})
    else:
        args, model, guide = (HMM_DATA.double(),), hmm_model, no_guide
        eager_elbo = TraceEnum_ELBO(max_plate_nesting=1)
        jit_elbo = JitTraceEnum_ELBO(max_plate_nesting=1, jit_options={"backend": "forward"})
    eager = run_steps(eager_elbo, model, guide, args, steps=6)
    jit = run_steps(jit_elbo, model, guide, args, steps=6)
    assert_same(eager, jit, rtol=1e-10, atol=1e-10)
    note = captured(jit_elbo)
    assert note.startswith("captured the forward pass: "), note
    kept, recorded = map(int, re.search(
        r"(\d+) aten ops after merging repeated work \((\d+) recorded", note).groups())
    if case == "hmm":
        assert kept < 0.6 * recorded, note


FORWARD = {"backend": "forward"}


def test_forward_capture_is_checked_against_log_space_scans(monkeypatch):
    """Eager steps may run an HMM's scan in rescaled linear space, a capture cannot (it
    cannot branch on values): the eager run the replay is checked against runs the capture's
    log-space rounds. Here the linear-space result is 1% off, loss and gradients (standing
    in for float32 rounding at T = 10,000, beyond the check's tolerance), and the capture is
    still made."""
    import runtime.scan

    exact = runtime.scan._scaled_rounds
    calls = []

    def off(by_step, index, init=None):
        result = exact(by_step, index, init)
        calls.append(result is not None)
        return None if result is None else result * 1.01

    monkeypatch.setattr(runtime.scan, "_scaled_rounds", off)
    elbo = JitTraceEnum_ELBO(max_plate_nesting=1, jit_options=FORWARD)
    run_steps(elbo, hmm_model, no_guide, (HMM_DATA,), steps=3)
    assert calls and all(calls)  # the eager step did take the linear-space path
    assert captured(elbo).startswith("captured the forward pass: "), captured(elbo)


def normal_score_guide(data):
    loc = sg.param("loc", torch.tensor(0.0))
    scale = sg.param("scale", torch.tensor(1.0), constraint=positive)
    sg.sample("mu", dist.Normal(loc, scale).with_rsample(False), infer=BASELINE)


def _forward_cases():
    data = torch.tensor([0.5, -1.0, 2.0, 0.3, 1.1, -0.4])
    return {
        "chain": (Trace_ELBO(), JitTrace_ELBO(jit_options=FORWARD), chain_model, chain_guide,
                  (torch.tensor(1.5),)),
        "subsampled-plate": (Trace_ELBO(), JitTrace_ELBO(jit_options=FORWARD), plated_model,
                             plated_guide, (data,)),
        "enumerated-mixture": (TraceEnum_ELBO(max_plate_nesting=1),
                               JitTraceEnum_ELBO(max_plate_nesting=1, jit_options=FORWARD),
                               mixture_model, mixture_guide, (data[:5],)),
        "score-function-baseline": (TraceGraph_ELBO(), JitTraceGraph_ELBO(jit_options=FORWARD),
                                    normal_model, normal_score_guide, (data,)),
        "particles": (Trace_ELBO(num_particles=3),
                      JitTrace_ELBO(num_particles=3, jit_options=FORWARD),
                      normal_model, normal_guide, (data,)),
    }


@pytest.mark.parametrize("case", ["chain", "subsampled-plate", "enumerated-mixture",
                                  "score-function-baseline", "particles"])
def test_forward_backend_scenarios_equal_eager(case, float64):
    """Draws (the guide's, a plate's subsample), enumeration, score functions with their
    decaying baseline (an input and an output of the replay) and particles: the replayed
    forward pass gives the eager objective's losses, gradients and baseline averages."""
    eager_elbo, jit_elbo, model, guide, args = _forward_cases()[case]
    eager = run_steps(eager_elbo, model, guide, args, steps=6, lr=0.01)
    jit = run_steps(jit_elbo, model, guide, args, steps=6, lr=0.01)
    assert_same(eager, jit, rtol=1e-10, atol=1e-10)
    assert captured(jit_elbo).startswith("captured the forward pass: ")
    for site, average in eager_elbo.baselines.averages.items():
        assert torch.allclose(jit_elbo.baselines.averages[site], average, rtol=1e-10)


def test_forward_backend_loss_only_loss_and_grads_and_site_scales(float64):
    """``loss()`` replays a forward pass of its own (under no_grad); ``loss_and_grads``
    accumulates into ``.grad`` by autograd, as the eager objective does; per-call
    ``site_scales`` are replay inputs."""
    data = torch.tensor([0.3, -1.2, 2.0, 0.7])

    elbo = JitTrace_ELBO(jit_options=FORWARD)
    assert losses(elbo, normal_model, normal_guide, data) == pytest.approx(
        losses(Trace_ELBO(), normal_model, normal_guide, data), rel=1e-12)
    assert captured(elbo, "loss").startswith("captured the forward pass: ")

    def accumulated(objective):
        sg.clear_param_store()
        sg.set_rng_seed(2)
        values = [objective.loss_and_grads(normal_model, normal_guide, data,
                                           site_scales={"mu": 0.5 * (i + 1)})
                  for i in range(4)]
        return values, {n: leaf.grad.clone()
                        for n, leaf in sg.get_param_store().named_parameters()}

    (jit_values, jit_grads), (values, grads) = accumulated(elbo), accumulated(Trace_ELBO())
    assert jit_values == pytest.approx(values, rel=1e-12)
    assert jit_grads.keys() == grads.keys()
    for name in grads:
        assert torch.allclose(jit_grads[name], grads[name], rtol=1e-10), name
    assert "site_scales mu" in captured(elbo, "step[site_scales mu]")


def test_forward_backend_non_finite_param_raises_the_eager_error():
    elbo = JitTrace_ELBO(jit_options=FORWARD)
    data = torch.tensor([0.3, -1.2])
    for _ in range(3):
        elbo.differentiable_loss(normal_model, normal_guide, data)
    assert captured(elbo).startswith("captured the forward pass: ")
    with torch.no_grad():
        dict(sg.get_param_store().named_parameters())["loc"].fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="loc"):
        elbo.differentiable_loss(normal_model, normal_guide, data)
