"""RenyiELBO against exact answers.

* Exact expected bound and gradient of discrete models: every K-tuple of guide
  configurations is enumerated (probability prod_k q(c_k), bound of the K log weights), and
  autograd of that sum is the exact gradient of E[bound]. Means of many estimates must lie
  within 4 standard errors (seeds fixed by conftest).
* Conjugate Normal model: closed-form log evidence; with the exact posterior as guide every
  weight equals log p(x), so the bound is exact for any K and alpha.
* Pathwise gradients of one fixed draw equal autograd of the formula on the same draws.
"""

import itertools
import math

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist, handlers
from svigraph.constraints import positive, unit_interval
from svigraph.errors import SvigraphError
from svigraph.infer import RenyiELBO, Trace_ELBO
from tests.models import PLATED_DATA, plated_guide, plated_model
from tests.reference import guide_configurations

# ---- exact references --------------------------------------------------------------------


def config_weights(model, guide, *args):
    """(log weight, log q) of every guide configuration, differentiable in the params.
    Weights carry scales and masks as the estimator's terms do; log q is the draw's."""
    ws, qs = [], []
    for values in guide_configurations(guide, *args):
        guide_tr = handlers.trace(handlers.condition(guide, data=values)).get_trace(*args)
        model_tr = handlers.trace(handlers.replay(model, trace=guide_tr)).get_trace(*args)
        ws.append(model_tr.log_prob_sum() - guide_tr.log_prob_sum())
        qs.append(sum(s["fn"].log_prob(s["value"]).sum() for s in guide_tr.sample_sites()))
    return torch.stack(ws), torch.stack(qs)


def bound_of(w, alpha):
    """The K-particle bound of log weights w (..., K)."""
    beta = 1.0 - alpha
    return (torch.logsumexp(beta * w, -1) - math.log(w.shape[-1])) / beta


def exact_expected_bound(model, guide, alpha, k, *args):
    """E[bound] over K independent guide draws, summed over every K-tuple of configurations."""
    w, log_q = config_weights(model, guide, *args)
    idx = torch.cartesian_prod(*[torch.arange(len(w))] * k).reshape(-1, k)
    return (log_q[idx].sum(1).exp() * bound_of(w[idx], alpha)).sum()


def exact_value_and_grads(model, guide, params, alpha, k, *args):
    value = exact_expected_bound(model, guide, alpha, k, *args)
    leaves = [sg.param(n).unconstrained() for n in params]
    grads = torch.autograd.grad(value, leaves)
    return value.detach(), dict(zip(params, grads))


def estimates(elbo, model, guide, params, n, *args):
    """Mean and standard error of the bound and of its gradient (of -loss) over n steps."""
    guide(*args)
    values, grads = [], {p: [] for p in params}
    for _ in range(n):
        leaves = [sg.param(p).unconstrained() for p in params]
        loss = elbo.differentiable_loss(model, guide, *args)
        gs = torch.autograd.grad(loss, leaves, allow_unused=True)
        values.append(-loss.detach())
        for p, g, leaf in zip(params, gs, leaves):
            grads[p].append(-g if g is not None else torch.zeros_like(leaf))

    def mean_se(xs):
        x = torch.stack(xs)
        return x.mean(0), x.std(0) / n ** 0.5
    return mean_se(values), {p: mean_se(g) for p, g in grads.items()}


def assert_matches_exact(elbo, model, guide, params, alpha, k, n, *args):
    exact_value, exact_grads = exact_value_and_grads(model, guide, params, alpha, k, *args)
    (value, value_se), grads = estimates(elbo, model, guide, params, n, *args)
    assert abs(value - exact_value) <= 4 * value_se + 1e-5, (value, exact_value, value_se)
    for p in params:
        mean, se = grads[p]
        assert torch.all((mean - exact_grads[p]).abs() <= 4 * se + 1e-5), \
            (p, mean, exact_grads[p], se)
    return exact_value, exact_grads


# ---- discrete models ------------------------------------------------------------------------

data = PLATED_DATA


def coin_model(flips):
    z = sg.sample("z", dist.Bernoulli(0.5))
    with sg.plate("flips", len(flips)):
        sg.sample("x", dist.Bernoulli(0.2 + 0.6 * z), obs=flips)


def coin_guide(flips):
    q = sg.param("q", torch.tensor(0.3), constraint=unit_interval)
    sg.sample("z", dist.Bernoulli(q))


flips = torch.tensor([1.0, 1.0, 0.0, 1.0])


def test_exact_reference_reduces_to_elbo_and_evidence():
    """The enumeration reference itself: K=1 is the ELBO; the exact posterior as guide gives
    log p(x) for any K; the expected bound rises with K for alpha=0."""
    from tests.reference import brute_log_marginal, exact_elbo
    coin_guide(flips)
    elbo1 = exact_expected_bound(coin_model, coin_guide, 0.0, 1, flips)
    assert torch.allclose(elbo1, exact_elbo(coin_model, coin_guide, flips), atol=1e-6)
    bounds = [float(exact_expected_bound(coin_model, coin_guide, 0.0, k, flips).detach())
              for k in (1, 2, 4, 8)]
    assert bounds == sorted(bounds) and bounds[-1] - bounds[0] > 0.1, bounds
    log_px = float(brute_log_marginal(coin_model, flips))
    assert bounds[-1] < log_px
    post = math.exp(float(handlers.trace(handlers.condition(coin_model, data={"z": torch.tensor(1.0)}))
                          .get_trace(flips).log_prob_sum()) - log_px)
    sg.get_param_store()["q"] = torch.tensor(post)
    for alpha in (0.0, 0.5, -1.0):
        exact = exact_expected_bound(coin_model, coin_guide, alpha, 3, flips)
        assert abs(float(exact.detach()) - log_px) < 1e-5


@pytest.mark.parametrize("alpha, k, vectorize, n", [
    (0.0, 3, True, 1000), (0.5, 2, False, 600),
    pytest.param(-0.5, 3, True, 3000, marks=pytest.mark.slow),
    pytest.param(2.0, 2, True, 3000, marks=pytest.mark.slow)])
def test_score_function_matches_enumeration(alpha, k, vectorize, n):
    """All-discrete guide (every site score function), global site and a plate of local
    ones: expected bound and gradient equal the enumeration over all K-tuples."""
    opts = dict(vectorize_particles=True, max_plate_nesting=1) if vectorize else {}
    elbo = RenyiELBO(alpha=alpha, num_particles=k, **opts)
    assert_matches_exact(elbo, plated_model, plated_guide, ["qz", "qw"], alpha, k, n, data)


def test_single_particle_score_function_is_the_elbo_gradient():
    """K=1: the bound is w itself for every alpha; gradient unbiased with no baseline."""
    elbo = RenyiELBO(alpha=0.3, num_particles=1)
    value, _ = assert_matches_exact(elbo, coin_model, coin_guide, ["q"], 0.3, 1, 600, flips)
    assert abs(value - exact_expected_bound(coin_model, coin_guide, 0.0, 1, flips).detach()) < 1e-6


def test_particles_with_different_structures_in_one_step():
    """Whether site y exists depends on the sampled c, so the K particles of one step run on
    different plans; their weights still combine into the exact expected bound."""
    def model():
        c = sg.sample("c", dist.Bernoulli(0.4))
        mean = 0.5
        if c.item() > 0:
            mean = 0.2 + 0.6 * sg.sample("y", dist.Bernoulli(0.7))
        sg.sample("x", dist.Bernoulli(mean), obs=torch.tensor(1.0))

    def guide():
        qc = sg.param("qc", torch.tensor(0.5), constraint=unit_interval)
        qy = sg.param("qy", torch.tensor(0.5), constraint=unit_interval)
        if sg.sample("c", dist.Bernoulli(qc)).item() > 0:
            sg.sample("y", dist.Bernoulli(qy))

    elbo = RenyiELBO(alpha=0.0, num_particles=2)
    assert_matches_exact(elbo, model, guide, ["qc", "qy"], 0.0, 2, 600)
    assert len(elbo._cache(model, guide)) == 2


def test_leave_one_out_baseline_cuts_variance():
    """The VIMCO baseline keeps the mean (tested above) and lowers the variance against the
    same estimator without a baseline (b_k = 0), on the same draws."""
    from runtime import renyi as rt
    elbo = RenyiELBO(alpha=0.0, num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    coin_guide(flips)
    leaf = sg.param("q").unconstrained()

    def grads(n):
        out = []
        for _ in range(n):
            (g,) = torch.autograd.grad(elbo.differentiable_loss(coin_model, coin_guide, flips),
                                       [leaf])
            out.append(g)
        return torch.stack(out)

    sg.set_rng_seed(1)
    with_loo = grads(200)
    original = rt.leave_one_out
    rt.leave_one_out = lambda w, beta: w.new_zeros(())
    try:
        sg.set_rng_seed(1)
        without = grads(200)
    finally:
        rt.leave_one_out = original
    assert with_loo.var() < 0.5 * without.var(), (with_loo.var(), without.var())


# ---- conjugate Normal model -----------------------------------------------------------------

obs = torch.tensor([0.8, 1.9, 1.1, 0.4])
PRIOR_SD, NOISE_SD = 1.0, 0.7


def normal_model(obs):
    mu = sg.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with sg.plate("data", len(obs)):
        sg.sample("x", dist.Normal(mu, NOISE_SD), obs=obs)


def normal_guide(obs):
    loc = sg.param("loc", torch.tensor(0.0))
    scale = sg.param("scale", torch.tensor(0.8), constraint=positive)
    sg.sample("mu", dist.Normal(loc, scale))


def normal_posterior_and_evidence(obs):
    n = len(obs)
    precision = 1 / PRIOR_SD ** 2 + n / NOISE_SD ** 2
    loc = float(obs.sum()) / NOISE_SD ** 2 / precision
    cov = PRIOR_SD ** 2 * torch.ones(n, n) + NOISE_SD ** 2 * torch.eye(n)
    evidence = torch.distributions.MultivariateNormal(torch.zeros(n), cov).log_prob(obs)
    return loc, precision ** -0.5, float(evidence)


@pytest.mark.parametrize("alpha", [0.0, 0.5, -2.0, 3.0])
def test_exact_posterior_guide_gives_the_evidence(alpha):
    loc, scale, log_px = normal_posterior_and_evidence(obs)
    normal_guide(obs)
    sg.get_param_store()["loc"] = torch.tensor(loc)
    sg.get_param_store()["scale"] = torch.tensor(scale)
    for opts in ({}, {"vectorize_particles": True, "max_plate_nesting": 1}):
        elbo = RenyiELBO(alpha=alpha, num_particles=3, **opts)
        assert abs(-elbo.loss(normal_model, normal_guide, obs) - log_px) < 1e-4
        loss = elbo.differentiable_loss(normal_model, normal_guide, obs)
        assert abs(-float(loss.detach()) - log_px) < 1e-4


def test_bound_approaches_log_evidence_as_particles_grow():
    """alpha=0 with a poor guide: E[bound] rises with K towards log p(x) (the bias of the
    IWAE bound shrinks like 1/K); estimated from 200 vectorized steps each."""
    _, _, log_px = normal_posterior_and_evidence(obs)
    normal_guide(obs)  # loc 0, scale 0.8: far from the posterior (loc ~0.94, sd ~0.31)
    gaps, ses = [], []
    for k in (1, 10, 100, 1000):
        elbo = RenyiELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
        values = torch.tensor([-elbo.loss(normal_model, normal_guide, obs) for _ in range(200)])
        gaps.append(log_px - float(values.mean()))
        ses.append(float(values.std()) / 200 ** 0.5)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[0] > 3.0 and gaps[1] < 0.5, gaps
    assert all(-4 * se - 1e-3 < gap for gap, se in zip(gaps, ses)), (gaps, ses)  # below log p(x)
    assert gaps[3] < 0.01, gaps  # K = 1000: within 0.01 nats


@pytest.mark.parametrize("alpha, vectorize", [(0.0, False), (0.5, True), (-1.0, False)])
def test_pathwise_gradient_of_a_fixed_draw(alpha, vectorize):
    """Loss and gradient of one step equal autograd of the formula on the same draws (the
    draws are reproduced by re-running the guide under the same seed)."""
    k = 4
    normal_guide(obs)
    opts = dict(vectorize_particles=True, max_plate_nesting=1) if vectorize else {}
    elbo = RenyiELBO(alpha=alpha, num_particles=k, **opts)
    leaves = [sg.param(n).unconstrained() for n in ("loc", "scale")]
    sg.set_rng_seed(7)
    loss = elbo.differentiable_loss(normal_model, normal_guide, obs)
    got = torch.autograd.grad(loss, leaves)

    sg.set_rng_seed(7)
    if vectorize:
        with sg.plate("particles", k, dim=-2):
            tr = handlers.trace(normal_guide).get_trace(obs)
        mus = tr["mu"]["value"].reshape(k)
    else:
        mus = torch.stack([handlers.trace(normal_guide).get_trace(obs)["mu"]["value"]
                           for _ in range(k)])
    loc, scale = sg.param("loc"), sg.param("scale")
    log_p = (dist.Normal(0.0, PRIOR_SD).log_prob(mus)
             + dist.Normal(mus.unsqueeze(-1), NOISE_SD).log_prob(obs).sum(-1))
    w = log_p - dist.Normal(loc, scale).log_prob(mus)
    expected = bound_of(w, alpha)
    want = torch.autograd.grad(-expected, leaves)
    assert torch.allclose(loss, -expected, atol=1e-5)
    for g, h in zip(got, want):
        assert torch.allclose(g, h, atol=1e-5), (got, want)


def test_pathwise_and_score_function_guide_matches_enumeration_of_the_discrete_part():
    """A mixed guide: a score-function discrete site z and a reparameterized continuous
    site y whose guide depends on z. The exact E[bound] has no closed form, so check the
    unbiasedness of the gradient w.r.t. the discrete site's parameter and of the value by
    a precise Monte Carlo reference: the discrete configurations of all K particles
    enumerated exactly and y drawn by many common random numbers."""
    k, alpha = 2, 0.0

    def model():
        z = sg.sample("z", dist.Bernoulli(0.4))
        y = sg.sample("y", dist.Normal(2.0 * z - 1.0, 1.0))
        sg.sample("x", dist.Normal(y, 0.5), obs=torch.tensor(0.7))

    def guide():
        q = sg.param("q", torch.tensor(0.5), constraint=unit_interval)
        z = sg.sample("z", dist.Bernoulli(q))
        sg.sample("y", dist.Normal(0.3 + 0.4 * z, 0.6))

    guide()
    q_leaf = sg.param("q").unconstrained()
    # reference: E over z-tuples (exact) of E over y-noise (4000 common draws) of the bound
    eps = torch.randn(4000, k)
    total = 0.0
    for zs in itertools.product((0.0, 1.0), repeat=k):
        z = torch.tensor(zs)
        q = sg.param("q")
        prob = torch.where(z > 0, q, 1 - q).prod()
        y = 0.3 + 0.4 * z + 0.6 * eps
        w = (dist.Bernoulli(0.4).log_prob(z) + dist.Normal(2.0 * z - 1.0, 1.0).log_prob(y)
             + dist.Normal(y, 0.5).log_prob(torch.tensor(0.7))
             - dist.Bernoulli(q).log_prob(z) - dist.Normal(0.3 + 0.4 * z, 0.6).log_prob(y))
        total = total + prob * bound_of(w, alpha).mean()
    (exact_grad,) = torch.autograd.grad(total, [q_leaf])
    elbo = RenyiELBO(alpha=alpha, num_particles=k, vectorize_particles=True, max_plate_nesting=0)
    (value, value_se), grads = estimates(elbo, model, guide, ["q"], 1000)
    mean, se = grads["q"]
    assert abs(value - total.detach()) <= 4 * value_se + 0.01, (value, total, value_se)
    assert abs(mean - exact_grad) <= 4 * se + 0.01, (mean, exact_grad, se)


# ---- minibatches ----------------------------------------------------------------------------

local_data = torch.tensor([1.0, 0.0, 1.0, 1.0])


def local_model(data, idx):
    with sg.plate("data", 4, subsample=idx) as i:
        w = sg.sample("w", dist.Bernoulli(0.3))
        sg.sample("x", dist.Bernoulli(0.15 + 0.7 * w), obs=data[i])


def local_guide(data, idx):
    qw = sg.param("qw", torch.tensor([0.3, 0.5, 0.7, 0.6]), constraint=unit_interval)
    with sg.plate("data", 4, subsample=idx) as i:
        sg.sample("w", dist.Bernoulli(qw[i]))


def test_minibatch_over_a_common_plate_is_unbiased_for_per_datapoint_bounds():
    """Every site is in the data plate: the estimate for minibatch B is (N/|B|) sum over B of
    per-datapoint bounds with unscaled weights; its expectation is exactly that."""
    alpha, k, idx = 0.0, 3, torch.tensor([1, 3])
    elbo = RenyiELBO(alpha=alpha, num_particles=k, vectorize_particles=True,
                     max_plate_nesting=1)
    text = " ".join(str(elbo.compile(local_model, local_guide, local_data, idx)).split())
    assert "one weight per slice of plate(s) data" in text
    assert "bound = 2 * sum[data](log(mean_k exp(w[k, data])))" in text
    assert "minibatch over common plate(s) (data 4/2)" in text and "x 2: unbiased" in text
    local_guide(local_data, idx)
    qw = sg.param("qw")
    expected = 0.0
    for n in idx.tolist():  # one datapoint: configurations w in {0, 1} for each of K draws
        def one_model(n=n):
            w = sg.sample("w", dist.Bernoulli(0.3))
            sg.sample("x", dist.Bernoulli(0.15 + 0.7 * w), obs=local_data[n])

        def one_guide(n=n):
            sg.sample("w", dist.Bernoulli(qw[n]))
        expected = expected + exact_expected_bound(one_model, one_guide, alpha, k)
    expected = 2.0 * expected
    (q_leaf,) = [sg.param("qw").unconstrained()]
    (exact_grad,) = torch.autograd.grad(expected, [q_leaf])
    (value, value_se), grads = estimates(elbo, local_model, local_guide, ["qw"], 800,
                                         local_data, idx)
    assert abs(value - expected.detach()) <= 4 * value_se + 1e-5, (value, expected)
    mean, se = grads["qw"]
    assert torch.all((mean - exact_grad).abs() <= 4 * se + 1e-5), (mean, exact_grad, se)
    assert mean[0] == 0 and mean[2] == 0  # datapoints outside the minibatch get no gradient


def test_minibatch_with_a_global_latent_is_the_rescaled_models_bound():
    """A subsampled plate the global site is outside of: the estimate is the bound of the
    model whose minibatch terms carry the scale N/|B| inside the weight, as documented."""
    alpha, k, idx = 0.0, 2, torch.tensor([0, 2])

    def model(data, idx):
        z = sg.sample("z", dist.Bernoulli(0.3))
        with sg.plate("data", 4, subsample=idx) as i:
            sg.sample("x", dist.Bernoulli(0.2 + 0.6 * z), obs=data[i])

    def guide(data, idx):
        q = sg.param("q", torch.tensor(0.4), constraint=unit_interval)
        sg.sample("z", dist.Bernoulli(q))

    elbo = RenyiELBO(alpha=alpha, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    text = " ".join(str(elbo.compile(model, guide, local_data, idx)).split())
    assert "minibatch over plate(s) not every site is in (data 4/2)" in text
    assert "bound of the minibatch-rescaled model" in text
    # the reference weights carry the plate's scale 2, as traces do
    assert_matches_exact(elbo, model, guide, ["q"], alpha, k, 800, local_data, idx)
    # and that differs from the full-data bound scaled down: not an unbiased full-data estimate
    full = exact_expected_bound(model, guide, alpha, k, local_data, torch.arange(4))
    rescaled = exact_expected_bound(model, guide, alpha, k, local_data, idx)
    assert abs(float(full.detach()) - float(rescaled.detach())) > 0.05


# ---- API, errors, printing ------------------------------------------------------------------


def test_alpha_one_is_refused_with_a_pointer_to_trace_elbo():
    with pytest.raises(SvigraphError, match="Trace_ELBO") as info:
        RenyiELBO(alpha=1)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="finite"):
        RenyiELBO(alpha=float("nan"))


def test_enumeration_and_baselines_are_refused():
    def guide(data):
        q = sg.param("q", torch.tensor(0.3), constraint=unit_interval)
        sg.sample("z", dist.Bernoulli(q), infer={"baseline": {"use_decaying_avg_baseline": True}})

    with pytest.raises(SvigraphError, match="leave-one-out") as info:
        RenyiELBO().loss(coin_model, guide, flips)
    assert info.value.site == "z"

    def enum_model(flips):
        z = sg.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        with sg.plate("flips", len(flips)):
            sg.sample("x", dist.Bernoulli(0.2 + 0.6 * z), obs=flips)

    with pytest.raises(SvigraphError, match="enumerat"):
        RenyiELBO().loss(enum_model, lambda flips: None, flips)


def test_methods_agree_and_plan_is_cached_and_printed():
    elbo = RenyiELBO(alpha=0.5, num_particles=3)
    plan = elbo.compile(plated_model, plated_guide, data)
    assert plan.loss_name == "RenyiELBO" and plan.sites["z"].estimator == "score_function"
    text = str(plan)
    assert "plan RenyiELBO(alpha=0.5, num_particles=3)" in text
    assert "w[k]      = -guide:z - sum[data](guide:w) + model:z + sum[data](model:w) + " \
           "sum[data](model:x)" in text
    assert "bound     = 1/(1-0.5) * log(mean_k exp((1-0.5) * w[k]))   k = 1..3" in text
    assert "surrogate = bound + sum_k (guide:z[k] + sum[data](guide:w[k])) * " \
           "stop(bound - loo[k])" in text
    assert "loo[k]" in text
    assert str(plan.objective) == "2*log(Sum(exp(w[k]/2), (k, 1, 3))/3)"
    sg.set_rng_seed(3)
    value = elbo.loss(plated_model, plated_guide, data)
    sg.set_rng_seed(3)
    tensor = elbo.differentiable_loss(plated_model, plated_guide, data)
    sg.set_rng_seed(3)
    float_with_grads = elbo.loss_and_grads(plated_model, plated_guide, data)
    assert abs(value - float(tensor.detach())) < 1e-5 and abs(value - float_with_grads) < 1e-5
    assert sg.param("qz").unconstrained().grad is not None
    assert elbo.compile(plated_model, plated_guide, data) is plan
    assert plan.loss(data) == pytest.approx(plan.loss(data), abs=10)  # runs through the plan


def test_svi_trains_an_iwae_on_the_conjugate_model():
    """SVI with RenyiELBO(alpha=0, K=5) closes the gap to log p(x) (from about 0.5 nats to
    a few hundredths; IWAE's guide gradients are noisy, so the check is on the bound)."""
    loc, _, log_px = normal_posterior_and_evidence(obs)
    elbo = RenyiELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    svi = sg.infer.SVI(normal_model, normal_guide, sg.optim.Adam({"lr": 0.03}), elbo)
    normal_guide(obs)

    def gap():
        return log_px + sum(elbo.loss(normal_model, normal_guide, obs) for _ in range(100)) / 100
    before = gap()
    locs = []
    for _ in range(500):
        svi.step(obs)
        locs.append(float(sg.param("loc").detach()))
    assert before > 0.3 and gap() < 0.08, (before, gap())
    assert abs(sum(locs[-100:]) / 100 - loc) < 0.25
    assert svi.plan.loss_name == "RenyiELBO"


# ---- regressions: score sites outside the data plate, shared minibatches ------------------

obs4 = torch.tensor([0.3, 1.9, -0.7, 1.1])


def global_model(x, sub=None):
    z = sg.sample("z", dist.Bernoulli(0.5))
    with sg.plate("data", 4, subsample_size=2 if sub == "random" else None) as i:
        sg.sample("x", dist.Normal(2.0 * z, 1.0), obs=x[i])


def global_guide(x, sub=None):
    q = sg.param("gq", torch.tensor(0.3))
    sg.sample("z", dist.Bernoulli(logits=q))


@pytest.mark.parametrize("vectorize", [False, True])
def test_score_site_outside_the_data_plate_gets_its_own_particles_cost(vectorize):
    """One fixed draw: the VIMCO surrogate's gradient equals autograd of the formula.

    Regression: with particles run one by one, the score of a site outside every plate was
    stacked to shape (K,) while the log weights (reduced from plated terms) were (K, 1), so
    scores * cost broadcast to (K, K): every particle's score was multiplied by every
    particle's cost (the gradient had the wrong sign on mixed draws like z = 1, 0, 1)."""
    k = 3
    opts = dict(vectorize_particles=True, max_plate_nesting=1) if vectorize else {}
    elbo = RenyiELBO(alpha=0.0, num_particles=k, **opts)
    global_guide(obs4)
    leaf = sg.param("gq").unconstrained()
    draws = []

    def guide(x, sub=None):
        q = sg.param("gq", torch.tensor(0.3))
        draws.append(sg.sample("z", dist.Bernoulli(logits=q)))

    sg.set_rng_seed(0)
    loss = elbo.differentiable_loss(global_model, guide, obs4)
    (got,) = torch.autograd.grad(loss, [leaf])
    z = draws[-1].reshape(-1) if vectorize else torch.stack(draws[-k:])
    assert z.tolist() == [1.0, 0.0, 1.0]  # a mixed draw: the case that was wrong
    log_q = dist.Bernoulli(logits=leaf).log_prob(z)
    w = (dist.Bernoulli(0.5).log_prob(z)
         + dist.Normal(2.0 * z.unsqueeze(-1), 1.0).log_prob(obs4).sum(-1) - log_q)
    bound = bound_of(w, 0.0)
    wd = w.detach()
    loo = torch.stack([bound_of(torch.cat([wd[:j], (wd.sum() - wd[j]).reshape(1) / (k - 1),
                                           wd[j + 1:]]), 0.0) for j in range(k)])
    surrogate = bound + (log_q * (bound.detach() - loo)).sum()
    (want,) = torch.autograd.grad(-surrogate, [leaf])
    assert torch.allclose(loss, -bound.detach(), atol=1e-5)
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    assert abs(float(want) - 0.8288988) < 1e-4  # the exact value of this draw's gradient


def test_particles_of_one_step_share_the_plate_subsample():
    """Regression: particles run one by one each drew their own minibatch, so one step's
    bound mixed log weights of different minibatches (with a global latent: E[bound] was
    -6.31 where the documented rescaled-model bound is -6.77), and the slices of a common
    plate were different datapoints in different particles."""
    seen = []

    def model(x, sub=None):
        z = sg.sample("z", dist.Bernoulli(0.5))
        with sg.plate("data", 4, subsample_size=2) as i:
            seen.append(tuple(i.tolist()))
            sg.sample("x", dist.Normal(2.0 * z, 1.0), obs=x[i])

    elbo = RenyiELBO(alpha=0.0, num_particles=4)
    elbo.loss(model, global_guide, obs4)  # the first step also traces the model to compile
    steps = []
    for _ in range(5):
        seen.clear()
        elbo.loss(model, global_guide, obs4)
        steps.append(set(seen))
    assert all(len(s) == 1 for s in steps), steps  # one minibatch per step
    assert len(set.union(*steps)) > 1  # and a new one each step


def test_random_minibatch_with_a_global_latent_matches_the_rescaled_bound_over_subsets():
    """E[estimate] = the average over all C(4, 2) minibatches B of the exact K-particle
    bound of the model whose minibatch log-likelihood is scaled by 4/2 (by enumeration)."""
    alpha, k = 0.0, 3
    global_guide(obs4)
    leaf = sg.param("gq").unconstrained()
    z = torch.tensor([0.0, 1.0])
    log_q = dist.Bernoulli(logits=leaf).log_prob(z)
    subsets = list(itertools.combinations(range(4), 2))
    exact = 0.0
    for subset in subsets:
        log_lik = sum(dist.Normal(2.0 * z, 1.0).log_prob(obs4[j]) for j in subset)
        w = dist.Bernoulli(0.5).log_prob(z) + 2.0 * log_lik - log_q
        idx = torch.cartesian_prod(*[torch.arange(2)] * k)
        exact = exact + (log_q[idx].sum(1).exp() * bound_of(w[idx], alpha)).sum() / len(subsets)
    (exact_grad,) = torch.autograd.grad(exact, [leaf])
    assert abs(float(exact.detach()) - (-6.77398)) < 1e-3
    (value, value_se), grads = estimates(RenyiELBO(alpha=alpha, num_particles=k), global_model,
                                         global_guide, ["gq"], 800, obs4, "random")
    assert abs(value - exact.detach()) <= 4 * value_se + 1e-5, (value, exact, value_se)
    mean, se = grads["gq"]
    assert abs(mean - exact_grad) <= 4 * se + 1e-5, (mean, exact_grad, se)
