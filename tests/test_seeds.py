"""The seed tutorials' code snippets (custom objectives, SVI parts I and III, custom training
loops), run with only the imports changed to svigraph, each on a small concrete model and
guide (the tutorials elide them), with assertions that can fail.

Seeds: 000 (custom SVI objectives), 001 (SVI part I), 002 (SVI part III: gradient estimators,
provenance, baselines), 003 (custom objectives and training loops, with the param-capture
loop and the Beta-VAE example).
"""

import math

import pytest
import torch
import torch.distributions.constraints as constraints
import torch.nn as nn

import svigraph as pyro
import svigraph.distributions as dist
from svigraph import poutine
from svigraph.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from svigraph.optim import Adam, MixedMultiOptimizer

from svigraph.errors import SupportError

sg = pyro

# ---------------------------------------------------------------------------------------------
# small concrete programs for the snippets that elide theirs

DATA = torch.tensor([0.5, 1.2, 0.9, 1.5])


def normal_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)


def normal_guide(data):
    q_loc = pyro.param("q_loc", torch.tensor(0.0))
    q_scale = pyro.param("q_scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("loc", dist.Normal(q_loc, q_scale))


def leaves(*names):
    """The unconstrained leaves (what optimizers update) of the named params."""
    return [pyro.param(n).unconstrained() for n in names]


def fl(x):
    """A Python float of a tensor (detached: float() on a tensor needing grad warns)."""
    return x.detach().item() if torch.is_tensor(x) else float(x)


def grads_of(loss, params):
    return torch.autograd.grad(loss, params)


def unconstrained_values(*names):
    return {n: pyro.param(n).unconstrained().detach().clone() for n in names}


# ---------------------------------------------------------------------------------------------
# 1. basic SVI usage (seeds 000, 001, 003)

def test_basic_svi_usage_adam_with_betas():
    model, guide = normal_model, normal_guide
    optimizer = pyro.optim.Adam({"lr": 0.001, "betas": (0.90, 0.999)})
    svi = pyro.infer.SVI(model, guide, optimizer, loss=pyro.infer.Trace_ELBO())

    # evaluate_loss: the same estimate Trace_ELBO().loss gives with the same seed, no step
    pyro.set_rng_seed(3)
    expected = Trace_ELBO().loss(model, guide, DATA)
    before = unconstrained_values("q_loc", "q_scale")
    pyro.set_rng_seed(3)
    evaluated = svi.evaluate_loss(DATA)
    assert isinstance(evaluated, float)
    assert evaluated == pytest.approx(expected, rel=1e-6)
    assert all(torch.equal(before[n], v)
               for n, v in unconstrained_values("q_loc", "q_scale").items())

    # step: returns the loss before the update, and Adam's first step moves each param by
    # lr * sign(gradient) (bias-corrected m / sqrt(v) = g / |g|)
    pyro.set_rng_seed(4)
    loss = Trace_ELBO().differentiable_loss(model, guide, DATA)
    g_loc, g_scale = grads_of(loss, leaves("q_loc", "q_scale"))
    pyro.set_rng_seed(4)
    returned = svi.step(DATA)
    assert returned == pytest.approx(fl(loss), rel=1e-6)
    after = unconstrained_values("q_loc", "q_scale")
    assert fl(after["q_loc"] - before["q_loc"]) == pytest.approx(
        -0.001 * fl(torch.sign(g_loc)), rel=1e-3)
    assert fl(after["q_scale"] - before["q_scale"]) == pytest.approx(
        -0.001 * fl(torch.sign(g_scale)), rel=1e-3)

    # and a few hundred steps move q_loc towards the posterior mean sum(x) / (n + 1) = 0.82
    for _ in range(150):
        svi.step(DATA)
    assert 0.05 < fl(pyro.param("q_loc")) < 0.82


# ---------------------------------------------------------------------------------------------
# 2. the lower-level pattern: param capture, torch.optim.Adam, differentiable_loss (seed 003)

X_TRAIN = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
Y_TRAIN = torch.tensor([0.1, 0.9, 2.1, 2.9, 4.2])


def regression_model(X, y):
    w = pyro.sample("w", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(w * X[:, 0] + b, 0.5), obs=y)


def regression_guide(X, y):
    w_loc = pyro.param("w_loc", torch.tensor(0.0))
    w_scale = pyro.param("w_scale", torch.tensor(0.5), constraint=constraints.positive)
    b_loc = pyro.param("b_loc", torch.tensor(0.0))
    b_scale = pyro.param("b_scale", torch.tensor(0.5), constraint=constraints.positive)
    pyro.sample("w", dist.Normal(w_loc, w_scale))
    pyro.sample("b", dist.Normal(b_loc, b_scale))


REGRESSION_PARAMS = ("w_loc", "w_scale", "b_loc", "b_scale")


def test_lower_level_pattern_with_param_capture_matches_svi():
    model, guide = regression_model, regression_guide
    X_train, y_train, n_iter = X_TRAIN, Y_TRAIN, 100

    # the seed's loop, verbatim apart from the names being defined here
    loss_fn = lambda model, guide: pyro.infer.Trace_ELBO().differentiable_loss(  # noqa: E731
        model, guide, X_train, y_train)
    with pyro.poutine.trace(param_only=True) as param_capture:
        loss = loss_fn(model, guide)
    params = set(site["value"].unconstrained()
                 for site in param_capture.trace.nodes.values())
    # the captured leaves are exactly the param store's leaves
    assert {id(p) for p in params} == {id(p) for p in leaves(*REGRESSION_PARAMS)}
    assert set(param_capture.trace.nodes) == set(REGRESSION_PARAMS)
    start = unconstrained_values(*REGRESSION_PARAMS)

    pyro.set_rng_seed(11)
    optimizer = torch.optim.Adam(params, lr=0.001, betas=(0.90, 0.999))
    for i in range(n_iter):
        # compute loss
        loss = loss_fn(model, guide)
        loss.backward()
        # take a step and zero the parameter gradients
        optimizer.step()
        optimizer.zero_grad()
    low_level = unconstrained_values(*REGRESSION_PARAMS)
    # the store's (constrained) values follow the leaves; w_loc moved towards w ~ 1
    assert fl(pyro.param("w_loc")) > 0.05
    assert all(not torch.equal(start[n], low_level[n]) for n in REGRESSION_PARAMS)

    # "equivalent to" the SVI loop: same seed, same draws, same Adam updates
    pyro.clear_param_store()
    pyro.set_rng_seed(11)
    optimizer = pyro.optim.Adam({"lr": 0.001, "betas": (0.90, 0.999)})
    svi = pyro.infer.SVI(model, guide, optimizer, loss=pyro.infer.Trace_ELBO())
    for i in range(n_iter):
        loss = svi.step(X_train, y_train)
    with_svi = unconstrained_values(*REGRESSION_PARAMS)
    for n in REGRESSION_PARAMS:
        assert torch.allclose(with_svi[n], low_level[n], atol=1e-5), n


# ---------------------------------------------------------------------------------------------
# 3. custom L2 regularizer (seeds 000, 003)

def my_custom_L2_regularizer(my_parameters):
    reg_loss = 0.0
    for param in my_parameters:
        reg_loss = reg_loss + param.pow(2.0).sum()
    return reg_loss


def test_custom_l2_regularizer_adds_two_times_param_to_gradient():
    model, guide = regression_model, regression_guide
    pyro.param("w_loc", torch.tensor(0.7))
    pyro.param("b_loc", torch.tensor(-0.3))
    regression_guide(X_TRAIN, Y_TRAIN)  # creates the other params
    loss_fn = lambda model, guide: pyro.infer.Trace_ELBO().differentiable_loss(  # noqa: E731
        model, guide, X_TRAIN, Y_TRAIN)
    my_parameters = leaves(*REGRESSION_PARAMS)

    pyro.set_rng_seed(5)
    plain = loss_fn(model, guide)
    pyro.set_rng_seed(5)
    loss = loss_fn(model, guide) + my_custom_L2_regularizer(my_parameters)
    expected_reg = sum(fl(p.detach().pow(2).sum()) for p in my_parameters)
    assert fl(loss) == pytest.approx(fl(plain) + expected_reg, rel=1e-6)

    g_plain = grads_of(plain, my_parameters)
    g_reg = grads_of(loss, my_parameters)
    for p, gp, gr in zip(my_parameters, g_plain, g_reg):
        assert torch.allclose(gr - gp, 2 * p.detach(), atol=1e-5)

    # and the regularized loop runs and trains
    optimizer = torch.optim.Adam(my_parameters, lr=0.01, betas=(0.90, 0.999))
    for _ in range(50):
        loss = loss_fn(model, guide) + my_custom_L2_regularizer(my_parameters)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert math.isfinite(fl(loss))


# ---------------------------------------------------------------------------------------------
# 4. clipping gradients (seeds 000, 003)

FAR_DATA = torch.full((100,), 50.0)


def test_adam_clip_norm_clips_each_gradient_before_the_update():
    model, guide = normal_model, normal_guide
    optimizer = pyro.optim.Adam({"lr": 0.001, "betas": (0.90, 0.999)}, {"clip_norm": 10.0})
    svi = pyro.infer.SVI(model, guide, optimizer, loss=pyro.infer.Trace_ELBO())

    pyro.set_rng_seed(6)
    loss = Trace_ELBO().differentiable_loss(model, guide, FAR_DATA)
    g_loc, g_scale = grads_of(loss, leaves("q_loc", "q_scale"))
    assert abs(fl(g_loc)) > 1000.0  # data far from the guide: a huge gradient

    pyro.set_rng_seed(6)
    svi.step(FAR_DATA)
    state = optimizer.get_state()
    for name, g in (("q_loc", g_loc), ("q_scale", g_scale)):
        clipped = g * min(1.0, 10.0 / (fl(g.norm()) + 1e-6))
        # Adam's first moment after one step is (1 - beta1) * (the clipped gradient)
        assert torch.allclose(state[name]["state"]["exp_avg"], 0.1 * clipped, rtol=1e-5), name
    assert fl(state["q_loc"]["state"]["exp_avg"].abs()) == pytest.approx(1.0, rel=1e-5)

    # without clip args the same step keeps the raw gradient
    pyro.clear_param_store()
    unclipped = pyro.optim.Adam({"lr": 0.001, "betas": (0.90, 0.999)})
    svi = pyro.infer.SVI(model, guide, unclipped, loss=pyro.infer.Trace_ELBO())
    pyro.set_rng_seed(6)
    svi.step(FAR_DATA)
    assert torch.allclose(unclipped.get_state()["q_loc"]["state"]["exp_avg"], 0.1 * g_loc,
                          rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# 5. scaling the loss (seeds 000, 003)

def test_scaling_the_loss_by_division_and_by_poutine_scale_agree():
    N_data = len(DATA)
    model, guide = normal_model, normal_guide
    pyro.param("q_loc", torch.tensor(0.4))
    loss_fn = pyro.infer.Trace_ELBO().differentiable_loss

    pyro.set_rng_seed(7)
    loss = loss_fn(model, guide, DATA) / N_data

    @poutine.scale(scale=1.0 / N_data)
    def model(data):
        normal_model(data)

    @poutine.scale(scale=1.0 / N_data)
    def guide(data):
        normal_guide(data)

    pyro.set_rng_seed(7)
    scaled = loss_fn(model, guide, DATA)
    assert fl(scaled) == pytest.approx(fl(loss), rel=1e-6)
    params = leaves("q_loc", "q_scale")
    for a, b in zip(grads_of(loss, params), grads_of(scaled, params)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)

    # the scale really applies: the unscaled estimate with the same seed is N times larger
    pyro.set_rng_seed(7)
    assert pyro.infer.Trace_ELBO().loss(model, guide, DATA) == pytest.approx(
        fl(loss), rel=1e-5)
    pyro.set_rng_seed(7)
    assert pyro.infer.Trace_ELBO().loss(normal_model, normal_guide, DATA) == pytest.approx(
        fl(loss) * N_data, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# 6. mixing optimizers (seeds 000, 003)

def test_mixing_torch_optimizers_by_hand():
    model = regression_model
    guide = regression_guide
    with pyro.poutine.trace(param_only=True) as param_capture:
        pyro.infer.Trace_ELBO().differentiable_loss(model, guide, X_TRAIN, Y_TRAIN)
    assert set(param_capture.trace.nodes) == set(REGRESSION_PARAMS)
    adam_parameters = leaves("w_loc", "w_scale")
    sgd_parameters = leaves("b_loc", "b_scale")
    before = unconstrained_values(*REGRESSION_PARAMS)

    pyro.set_rng_seed(8)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, X_TRAIN, Y_TRAIN)
    expected_grads = dict(zip(REGRESSION_PARAMS, grads_of(loss, leaves(*REGRESSION_PARAMS))))

    # The tutorial passes the options dict positionally (torch.optim.Adam(params, {...})),
    # which torch itself rejects (lr must be a number); keywords are what torch accepts.
    adam = torch.optim.Adam(adam_parameters, lr=0.001, betas=(0.90, 0.999))
    sgd = torch.optim.SGD(sgd_parameters, lr=0.0001)
    loss_fn = pyro.infer.Trace_ELBO().differentiable_loss
    pyro.set_rng_seed(8)
    # compute loss
    loss = loss_fn(model, guide, X_TRAIN, Y_TRAIN)
    loss.backward()
    # take a step and zero the parameter gradients
    adam.step()
    sgd.step()
    adam.zero_grad()
    sgd.zero_grad()

    after = unconstrained_values(*REGRESSION_PARAMS)
    for n in ("w_loc", "w_scale"):  # Adam's first step: lr * sign(g)
        assert fl(after[n] - before[n]) == pytest.approx(
            -0.001 * fl(torch.sign(expected_grads[n])), rel=1e-3), n
    for n in ("b_loc", "b_scale"):  # SGD: lr * g
        assert fl(after[n] - before[n]) == pytest.approx(
            -0.0001 * fl(expected_grads[n]), rel=1e-4, abs=1e-9), n


def test_mixed_multi_optimizer_as_in_the_seed():
    obs = torch.tensor([2.0, 2.5, 1.5])

    def model():
        a = pyro.param('a', torch.tensor(0.0))
        b = pyro.param('b', torch.tensor(0.5), constraint=constraints.positive)
        z = pyro.sample("z", dist.Normal(a, 1.0))
        with pyro.plate("obs", 3):
            pyro.sample("x", dist.Normal(z, b), obs=obs)

    def guide():
        q_loc = pyro.param("q_loc", torch.tensor(1.0))
        pyro.sample("z", dist.Normal(q_loc, 0.5))

    elbo = Trace_ELBO()
    pyro.set_rng_seed(9)
    loss = elbo.differentiable_loss(model, guide)
    expected = dict(zip("ab", grads_of(loss, leaves("a", "b"))))
    before = unconstrained_values("a", "b", "q_loc")

    adam = pyro.optim.Adam({'lr': 0.1})
    sgd = pyro.optim.SGD({'lr': 0.01})
    optim = MixedMultiOptimizer([(['a'], adam), (['b'], sgd)])
    pyro.set_rng_seed(9)
    with pyro.poutine.trace(param_only=True) as param_capture:
        loss = elbo.differentiable_loss(model, guide)
    params = {'a': pyro.param('a'), 'b': pyro.param('b')}
    optim.step(loss, params)

    assert {"a", "b", "q_loc"} <= set(param_capture.trace.nodes)
    after = unconstrained_values("a", "b", "q_loc")
    assert fl(after["a"] - before["a"]) == pytest.approx(
        -0.1 * fl(torch.sign(expected["a"])), rel=1e-3)
    assert fl(after["b"] - before["b"]) == pytest.approx(
        -0.01 * fl(expected["b"]), rel=1e-4)
    assert torch.equal(after["q_loc"], before["q_loc"])  # not in the optimizer's params


# ---------------------------------------------------------------------------------------------
# 7. custom ELBO: simple_elbo (seeds 000, 003)

# note that simple_elbo takes a model, a guide, and their respective arguments as inputs
def simple_elbo(model, guide, *args, **kwargs):
    # run the guide and trace its execution
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    # run the model and replay it against the samples from the guide
    model_trace = poutine.trace(
        poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    # construct the elbo loss function
    return -1*(model_trace.log_prob_sum() - guide_trace.log_prob_sum())


COIN_DATA = torch.tensor([1.0] * 6 + [0.0] * 4)


def coin_model(data):
    f = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def coin_guide(data):
    alpha_q = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
    beta_q = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
    pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))


def test_simple_elbo_equals_trace_elbo():
    # a Delta guide: no randomness at all, the two objectives must agree exactly
    def delta_guide(data):
        loc_map = pyro.param("loc_map", torch.tensor(0.4))
        pyro.sample("loc", dist.Delta(loc_map))

    ours = simple_elbo(normal_model, delta_guide, DATA)
    theirs = Trace_ELBO().differentiable_loss(normal_model, delta_guide, DATA)
    exact = -(dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.4))
              + dist.Normal(0.4, 1.0).log_prob(DATA).sum())
    assert fl(ours) == pytest.approx(fl(exact), rel=1e-5)
    assert fl(theirs) == pytest.approx(fl(exact), rel=1e-5)
    leaf = leaves("loc_map")
    assert torch.allclose(grads_of(ours, leaf)[0], grads_of(theirs, leaf)[0], rtol=1e-5)

    # a random guide: with the same seed both draw the same sample, value and gradient
    normal_guide(DATA)  # create the params
    params = leaves("q_loc", "q_scale")
    pyro.set_rng_seed(12)
    ours = simple_elbo(normal_model, normal_guide, DATA)
    pyro.set_rng_seed(12)
    theirs = Trace_ELBO().differentiable_loss(normal_model, normal_guide, DATA)
    assert fl(ours) == pytest.approx(fl(theirs), rel=1e-6)
    for a, b in zip(grads_of(ours, params), grads_of(theirs, params)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_simple_elbo_and_trace_elbo_with_a_map_delta_guide_on_a_beta_site():
    def delta_guide(data):
        f_map = pyro.param("f_map", torch.tensor(0.4), constraint=constraints.unit_interval)
        pyro.sample("latent_fairness", dist.Delta(f_map))

    exact = -(dist.Beta(10.0, 10.0).log_prob(torch.tensor(0.4))
              + 6 * math.log(0.4) + 4 * math.log(0.6))
    assert fl(simple_elbo(coin_model, delta_guide, COIN_DATA)) == pytest.approx(
        fl(exact), rel=1e-5)
    assert Trace_ELBO().loss(coin_model, delta_guide, COIN_DATA) == pytest.approx(
        fl(exact), rel=1e-5)


def test_simple_elbo_in_svi_learns_the_coin_posterior():
    def guide(data):  # started far from the posterior Beta(16, 14): mean 3 / 13 = 0.23
        alpha_q = pyro.param("alpha_q", torch.tensor(3.0), constraint=constraints.positive)
        beta_q = pyro.param("beta_q", torch.tensor(10.0), constraint=constraints.positive)
        pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))

    model = coin_model
    optim = Adam({"lr": 0.02})
    svi = SVI(model, guide, optim, loss=simple_elbo)
    for _ in range(300):
        loss = svi.step(COIN_DATA)
    assert math.isfinite(loss)
    a, b = fl(pyro.param("alpha_q")), fl(pyro.param("beta_q"))
    assert abs(a / (a + b) - 16 / 30) < 0.08


# ---------------------------------------------------------------------------------------------
# 8. KL annealing with a custom loss (seeds 000, 003)

def simple_elbo_kl_annealing(model, guide, *args, **kwargs):
    # get the annealing factor and latents to anneal from the keyword
    # arguments passed to the model and guide
    annealing_factor = kwargs.pop('annealing_factor', 1.0)
    latents_to_anneal = kwargs.pop('latents_to_anneal', [])
    # run the guide and replay the model against the guide
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(
        poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)

    elbo = 0.0
    # loop through all the sample sites in the model and guide trace and
    # construct the loss; note that we scale all the log probabilities of
    # samples sites in `latents_to_anneal` by the factor `annealing_factor`
    for site in model_trace.values():
        if site["type"] == "sample":
            factor = annealing_factor if site["name"] in latents_to_anneal else 1.0
            elbo = elbo + factor * site["fn"].log_prob(site["value"]).sum()
    for site in guide_trace.values():
        if site["type"] == "sample":
            factor = annealing_factor if site["name"] in latents_to_anneal else 1.0
            elbo = elbo - factor * site["fn"].log_prob(site["value"]).sum()
    return -elbo


def annealing_model(data):
    z = pyro.sample("my_latent", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(z, 1.0), obs=data)


def annealing_guide(data):
    q_loc = pyro.param("q_loc", torch.tensor(0.3))
    q_scale = pyro.param("q_scale", torch.tensor(0.8), constraint=constraints.positive)
    pyro.sample("my_latent", dist.Normal(q_loc, q_scale))


def test_kl_annealing_custom_loss_in_svi_step():
    model, guide, other_args = annealing_model, annealing_guide, DATA
    optim = Adam({"lr": 0.01})

    # the expected value, from the same draw: 0.2 * (log p(z) - log q(z)) + log p(x | z)
    pyro.set_rng_seed(13)
    z = dist.Normal(torch.tensor(0.3), torch.tensor(0.8)).rsample()
    expected = -(0.2 * (dist.Normal(0.0, 1.0).log_prob(z)
                        - dist.Normal(torch.tensor(0.3), torch.tensor(0.8)).log_prob(z))
                 + dist.Normal(z, 1.0).log_prob(DATA).sum())
    # factor 1.0 is simple_elbo
    pyro.set_rng_seed(13)
    plain = simple_elbo_kl_annealing(model, guide, other_args)
    pyro.set_rng_seed(13)
    assert fl(plain) == pytest.approx(fl(simple_elbo(model, guide, other_args)), rel=1e-6)

    svi = SVI(model, guide, optim, loss=simple_elbo_kl_annealing)
    pyro.set_rng_seed(13)
    loss = svi.step(other_args, annealing_factor=0.2, latents_to_anneal=["my_latent"])
    assert loss == pytest.approx(fl(expected), rel=1e-5)
    assert fl(pyro.param("q_loc")) != pytest.approx(0.3)  # a step was taken
    for _ in range(100):
        loss = svi.step(other_args, annealing_factor=0.2, latents_to_anneal=["my_latent"])
    assert math.isfinite(loss)


# ---------------------------------------------------------------------------------------------
# 9. SVI part I (seed 001)

def test_per_param_callable_optimizer_args():
    def per_param_callable(param_name):
        if param_name == 'my_special_parameter':
            return {"lr": 0.010}
        else:
            return {"lr": 0.001}
    optimizer = Adam(per_param_callable)

    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(z + w, 1.0), obs=data)

    def guide(data):
        special = pyro.param("my_special_parameter", torch.tensor(0.0))
        other = pyro.param("other_parameter", torch.tensor(0.0))
        pyro.sample("z", dist.Normal(special, 1.0))
        pyro.sample("w", dist.Normal(other, 1.0))

    svi = SVI(model, guide, optimizer, loss=Trace_ELBO())
    pyro.set_rng_seed(14)
    loss = Trace_ELBO().differentiable_loss(model, guide, DATA)
    g_special, g_other = grads_of(loss, leaves("my_special_parameter", "other_parameter"))
    pyro.set_rng_seed(14)
    svi.step(DATA)
    # Adam's first step is lr * sign(g): each parameter moved by its own learning rate
    assert fl(pyro.param("my_special_parameter")) == pytest.approx(
        -0.010 * fl(torch.sign(g_special)), rel=1e-3)
    assert fl(pyro.param("other_parameter")) == pytest.approx(
        -0.001 * fl(torch.sign(g_other)), rel=1e-3)


def test_svi_part_one_coin_script():
    n_steps = 400  # the tutorial's 2000 at lr 0.0005; fewer steps at a larger lr here

    # clear the param store in case we're in a REPL
    pyro.clear_param_store()

    # create some data with 6 observed heads and 4 observed tails
    data = []
    for _ in range(6):
        data.append(torch.tensor(1.0))
    for _ in range(4):
        data.append(torch.tensor(0.0))

    def model(data):
        # define the hyperparameters that control the Beta prior
        alpha0 = torch.tensor(10.0)
        beta0 = torch.tensor(10.0)
        # sample f from the Beta prior
        f = pyro.sample("latent_fairness", dist.Beta(alpha0, beta0))
        # loop over the observed data
        for i in range(len(data)):
            # observe datapoint i using the ernoulli likelihood
            pyro.sample("obs_{}".format(i), dist.Bernoulli(f), obs=data[i])

    def guide(data):
        alpha_q = pyro.param("alpha_q", torch.tensor(15.0),
                             constraint=constraints.positive)
        beta_q = pyro.param("beta_q", torch.tensor(15.0),
                            constraint=constraints.positive)
        # sample latent_fairness from the distribution Beta(alpha_q, beta_q)
        pyro.sample("latent_fairness", dist.Beta(alpha_q, beta_q))

    # setup the optimizer
    adam_params = {"lr": 0.01, "betas": (0.90, 0.999)}  # the tutorial's lr is 0.0005
    optimizer = Adam(adam_params)

    # setup the inference algorithm
    svi = SVI(model, guide, optimizer, loss=Trace_ELBO())

    # do gradient steps
    for step in range(n_steps):
        svi.step(data)

    # grab the learned variational parameters
    alpha_q = pyro.param("alpha_q").item()
    beta_q = pyro.param("beta_q").item()

    # here we use some facts about the Beta distribution
    # compute the inferred mean of the coin's fairness
    inferred_mean = alpha_q / (alpha_q + beta_q)
    # compute inferred standard deviation
    factor = beta_q / (alpha_q * (1.0 + alpha_q + beta_q))
    inferred_std = inferred_mean * math.sqrt(factor)

    assert abs(inferred_mean - 16 / 30) < 0.05
    assert alpha_q > beta_q  # heads favoured, as in the posterior Beta(16, 14)
    assert abs(inferred_std - math.sqrt(16 * 14 / (30 ** 2 * 31))) < 0.03


# ---------------------------------------------------------------------------------------------
# 10. provenance and the dependency graph (seed 002)

def test_provenance_snippet():
    from svigraph.ops.provenance import get_provenance, track_provenance

    a = track_provenance(torch.randn(3), frozenset({"a"}))
    b = track_provenance(torch.randn(3), frozenset({"b"}))
    c = torch.randn(3)  # no provenance information

    # For a unary operation, the provenance of the output tensor
    # equals the provenace of the input tensor
    assert get_provenance(a.exp()) == frozenset({"a"})
    # In general, the provenance of the output tensors of any op
    # is the union of provenances of input tensors.
    assert get_provenance(a * (b + c)) == frozenset({"a", "b"})
    assert get_provenance(c) == frozenset()


def test_categorical_chain_graph_has_direct_edges_only():
    def model():
        probs_a = torch.tensor([0.3, 0.7])
        probs_b = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
        probs_c = torch.tensor([[0.5, 0.5], [0.6, 0.4]])
        a = pyro.sample("a", dist.Categorical(probs_a))
        b = pyro.sample("b", dist.Categorical(probs_b[a]))
        pyro.sample("c", dist.Categorical(probs_c[b]), obs=torch.tensor(0))

    def guide():
        q_a = pyro.param("q_a", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
        q_b = pyro.param("q_b", torch.tensor([[0.5, 0.5], [0.5, 0.5]]),
                         constraint=constraints.simplex)
        a = pyro.sample("a", dist.Categorical(q_a))
        pyro.sample("b", dist.Categorical(q_b[a]))

    graph = sg.compile(model, guide).graph
    assert graph.has_edge("a", "b")
    assert graph.has_edge("b", "c")
    assert not graph.has_edge("a", "c")
    assert "model" in graph.edges["a", "b"]["via"] and "guide" in graph.edges["a", "b"]["via"]
    assert graph.edges["b", "c"]["via"] == frozenset({"model"})
    # Rao-Blackwellization under TraceGraph_ELBO: b's cost does not include a's terms
    plan = sg.compile(model, guide, loss=TraceGraph_ELBO())
    assert ("model", "a") not in plan.sites["b"].cost
    assert ("model", "c") in plan.sites["b"].cost


def test_track_non_reparam_snippet():
    from svigraph.infer.tracegraph_elbo import TrackNonReparam
    from svigraph.ops.provenance import get_provenance
    from svigraph.poutine import trace

    def model():
        probs_a = torch.tensor([0.3, 0.7])
        probs_b = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
        probs_c = torch.tensor([[0.5, 0.5], [0.6, 0.4]])
        a = pyro.sample("a", dist.Categorical(probs_a))
        b = pyro.sample("b", dist.Categorical(probs_b[a]))
        pyro.sample("c", dist.Categorical(probs_c[b]), obs=torch.tensor(0))

    with TrackNonReparam():
        model_tr = trace(model).get_trace()
    model_tr.compute_log_prob()

    assert get_provenance(model_tr.nodes["a"]["log_prob"]) == frozenset({'a'})
    assert get_provenance(model_tr.nodes["b"]["log_prob"]) == frozenset({'b', 'a'})
    assert get_provenance(model_tr.nodes["c"]["log_prob"]) == frozenset({'b', 'a'})


# ---------------------------------------------------------------------------------------------
# 11. baselines (seed 002)

SWITCH_DATA = torch.tensor([1.0, 1.4, 0.8])


def switch_model(data):
    z = pyro.sample("z", dist.Bernoulli(0.3))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(z, 1.0), obs=data)


def switch_posterior():
    lik = lambda v: dist.Normal(v, 1.0).log_prob(SWITCH_DATA).sum().exp()  # noqa: E731
    p1 = 0.3 * lik(torch.tensor(1.0))
    return fl(p1 / (p1 + 0.7 * lik(torch.tensor(0.0))))


def test_decaying_average_baseline_trains_under_tracegraph():
    def guide(data):
        p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
        z = pyro.sample("z", dist.Bernoulli(p),
                        infer=dict(baseline={'use_decaying_avg_baseline': True,
                                             'baseline_beta': 0.95}))
        return z

    svi = SVI(switch_model, guide, Adam({"lr": 0.05}), TraceGraph_ELBO())
    for _ in range(300):
        svi.step(SWITCH_DATA)
    spec = svi.plan.sites["z"].baseline
    assert spec is not None and spec.kind == "decaying_avg" and spec.beta == 0.95
    assert abs(fl(pyro.param("p")) - switch_posterior()) < 0.1  # 0.5 to about 0.70


class BaselineNN(nn.Module):
    def __init__(self, dim_input, dim_hidden):
        super().__init__()
        self.linear = nn.Linear(dim_input, dim_hidden)
        self.out = nn.Linear(dim_hidden, 1)

    def forward(self, x):
        hidden = torch.tanh(self.linear(x))
        baseline = self.out(hidden).squeeze(-1)
        return baseline


def test_neural_baseline_trains_with_its_own_learning_rate():
    torch.manual_seed(0)
    baseline_module = BaselineNN(3, 4)
    x = SWITCH_DATA

    def guide(x):  # here x is the current mini-batch of data
        pyro.module("my_baseline", baseline_module)
        p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
        z = pyro.sample("z", dist.Bernoulli(p),
                        infer=dict(baseline={'nn_baseline': baseline_module,
                                             'nn_baseline_input': x}))
        return z

    def per_param_args(param_name):
        if 'baseline' in param_name:
            return {"lr": 0.010}
        else:
            return {"lr": 0.001}

    optimizer = pyro.optim.Adam(per_param_args)
    svi = SVI(switch_model, guide, optimizer, TraceGraph_ELBO())
    before = {n: p.detach().clone() for n, p in baseline_module.named_parameters()}
    p_before = fl(pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
                     .unconstrained())
    svi.step(x)
    assert svi.plan.sites["z"].baseline.kind == "nn"
    # first Adam step: every baseline weight with a gradient moved by exactly 0.010,
    # the guide's own parameter by 0.001
    for n, p in baseline_module.named_parameters():
        moved = (p.detach() - before[n]).abs()
        assert moved.max() == pytest.approx(0.010, rel=1e-3), n
    assert abs(fl(pyro.param("p").unconstrained()) - p_before) == pytest.approx(
        0.001, rel=1e-3)
    store = pyro.get_param_store()
    assert "my_baseline.linear.weight" in store

    # training: the baseline learns to predict the cost (its squared error falls)
    def baseline_error():
        errors = []
        for _ in range(64):
            tr = poutine.trace(guide).get_trace(x)
            mtr = poutine.trace(poutine.replay(switch_model, trace=tr)).get_trace(x)
            cost = fl(mtr.log_prob_sum() - tr.log_prob_sum())
            errors.append((fl(baseline_module(x)) - cost) ** 2)
        return sum(errors) / len(errors)

    error_before = baseline_error()
    for _ in range(300):
        svi.step(x)
    assert baseline_error() < 0.5 * error_before
    for n, p in baseline_module.named_parameters():
        assert not torch.equal(p.detach(), before[n]), n


def test_baseline_value_is_subtracted_in_the_score_term():
    b = torch.tensor(3.0)  # do baseline computation

    def guide_with(baseline):
        def guide(data):
            p = pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)
            infer = dict(baseline={'baseline_value': baseline}) if baseline is not None else {}
            z = pyro.sample("z", dist.Bernoulli(p), infer=infer)
            return z
        return guide

    elbo = TraceGraph_ELBO()
    pyro.set_rng_seed(15)
    loss_b = elbo.differentiable_loss(switch_model, guide_with(b), SWITCH_DATA)
    leaf = leaves("p")
    pyro.set_rng_seed(15)
    loss_0 = elbo.differentiable_loss(switch_model, guide_with(None), SWITCH_DATA)
    assert fl(loss_b) == pytest.approx(fl(loss_0), rel=1e-6)  # the value is unchanged
    pyro.set_rng_seed(15)
    z = poutine.trace(guide_with(None)).get_trace(SWITCH_DATA)["z"]["value"]
    score = grads_of(dist.Bernoulli(pyro.param("p")).log_prob(z), leaf)[0]
    g_b, g_0 = grads_of(loss_b, leaf)[0], grads_of(loss_0, leaf)[0]
    # -(cost - b) * score  versus  -cost * score
    assert torch.allclose(g_b - g_0, b * score, rtol=1e-5, atol=1e-6)

    svi = SVI(switch_model, guide_with(b), Adam({"lr": 0.02}), TraceGraph_ELBO())
    for _ in range(300):
        svi.step(SWITCH_DATA)
    assert svi.plan.sites["z"].baseline.kind == "value"
    assert fl(pyro.param("p")) > 0.55  # towards the posterior (about 0.75)


# the complete example of seed 002, with the seed's NonreparameterizedBeta written here
def NonreparameterizedBeta(alpha, beta):
    return dist.Beta(alpha, beta).with_rsample(False)


def param_abs_error(name, target):
    return torch.sum(torch.abs(target - pyro.param(name))).item()


class BernoulliBetaExample:
    def __init__(self, max_steps):
        # the maximum number of inference steps we do
        self.max_steps = max_steps
        # the two hyperparameters for the beta prior
        self.alpha0 = 10.0
        self.beta0 = 10.0
        # the dataset consists of six 1s and four 0s
        self.data = torch.zeros(10)
        self.data[0:6] = torch.ones(6)
        self.n_data = self.data.size(0)
        # compute the alpha parameter of the exact beta posterior
        self.alpha_n = self.data.sum() + self.alpha0
        # compute the beta parameter of the exact beta posterior
        self.beta_n = - self.data.sum() + torch.tensor(self.beta0 + self.n_data)
        # initial values of the two variational parameters
        self.alpha_q_0 = 15.0
        self.beta_q_0 = 15.0

    def model(self, use_decaying_avg_baseline):
        # sample `latent_fairness` from the beta prior
        f = pyro.sample("latent_fairness", dist.Beta(self.alpha0, self.beta0))
        # use plate to indicate that the observations are
        # conditionally independent given f and get vectorization
        with pyro.plate("data_plate"):
            # observe all ten datapoints using the bernoulli likelihood
            pyro.sample("obs", dist.Bernoulli(f), obs=self.data)

    def guide(self, use_decaying_avg_baseline):
        # register the two variational parameters with pyro
        alpha_q = pyro.param("alpha_q", torch.tensor(self.alpha_q_0),
                             constraint=constraints.positive)
        beta_q = pyro.param("beta_q", torch.tensor(self.beta_q_0),
                            constraint=constraints.positive)
        # sample f from the beta variational distribution
        baseline_dict = {'use_decaying_avg_baseline': use_decaying_avg_baseline,
                         'baseline_beta': 0.90}
        # note that the baseline_dict specifies whether we're using
        # decaying average baselines or not
        pyro.sample("latent_fairness", NonreparameterizedBeta(alpha_q, beta_q),
                    infer=dict(baseline=baseline_dict))

    def do_inference(self, use_decaying_avg_baseline, tolerance=0.80):
        # clear the param store in case we're in a REPL
        pyro.clear_param_store()
        # setup the optimizer and the inference algorithm
        optimizer = pyro.optim.Adam({"lr": .0005, "betas": (0.93, 0.999)})
        svi = SVI(self.model, self.guide, optimizer, loss=TraceGraph_ELBO())
        # do up to this many steps of inference
        for k in range(self.max_steps):
            svi.step(use_decaying_avg_baseline)
            # compute the distance to the parameters of the true posterior
            alpha_error = param_abs_error("alpha_q", self.alpha_n)
            beta_error = param_abs_error("beta_q", self.beta_n)
            # stop inference early if we're close to the true posterior
            if alpha_error < tolerance and beta_error < tolerance:
                break
        self.svi = svi
        return k, alpha_error, beta_error


def test_bernoulli_beta_baseline_example():
    bbe = BernoulliBetaExample(max_steps=6000)
    steps, alpha_error, beta_error = bbe.do_inference(use_decaying_avg_baseline=True)
    assert alpha_error < 0.8 and beta_error < 0.8, (steps, alpha_error, beta_error)
    assert bbe.svi.plan.sites["latent_fairness"].estimator == "score_function"
    assert bbe.svi.plan.sites["latent_fairness"].baseline.kind == "decaying_avg"


def test_nonreparameterized_beta_import_path():
    from svigraph.distributions.testing.fakes import NonreparameterizedBeta as NRB
    assert not NRB(torch.tensor(2.0), torch.tensor(3.0)).has_rsample


# ---------------------------------------------------------------------------------------------
# 12. Beta-VAE: poutine.scale around a latent (seed 003)

def test_beta_vae_scale_on_the_latent():
    data = torch.tensor([1.0, 0.0, 1.0, 1.0])

    def model(data, beta=0.5):
        z_loc, z_scale = torch.tensor(0.0), torch.tensor(1.0)
        with pyro.poutine.scale(scale=beta):
            z = pyro.sample("z", dist.Normal(z_loc, z_scale))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Bernoulli(logits=z), obs=data)

    def guide(data, beta=0.5):
        with pyro.poutine.scale(scale=beta):
            z_loc = pyro.param("z_loc", torch.tensor(0.2))
            z_scale = pyro.param("z_scale", torch.tensor(0.7), constraint=constraints.positive)
            z = pyro.sample("z", dist.Normal(z_loc, z_scale))

    optimizer = pyro.optim.Adam({"lr": 0.01})
    svi = pyro.infer.SVI(model, guide, optimizer, loss=pyro.infer.Trace_ELBO())

    def expected(beta, seed):
        pyro.set_rng_seed(seed)
        q = dist.Normal(pyro.param("z_loc").detach(), pyro.param("z_scale").detach())
        z = q.rsample()
        kl_part = dist.Normal(0.0, 1.0).log_prob(z) - q.log_prob(z)
        return fl(-(beta * kl_part + dist.Bernoulli(logits=z).log_prob(data).sum()))

    pyro.param("z_loc", torch.tensor(0.2))
    pyro.param("z_scale", torch.tensor(0.7), constraint=constraints.positive)
    for beta in (0.5, 1.0, 4.0):
        want = expected(beta, 16)
        pyro.set_rng_seed(16)
        assert svi.evaluate_loss(data, beta) == pytest.approx(want, rel=1e-5), beta
    for _ in range(200):
        loss = svi.step(data)
    assert math.isfinite(loss)
    assert fl(pyro.param("z_loc")) > 0.2  # 3 of 4 ones: z moves up
