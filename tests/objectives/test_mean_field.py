"""TraceMeanField_ELBO against exact answers.

Deterministic checks (to float32 round-off, 1e-5): where every term is analytic the loss is
the KL itself and its gradient the KL's gradient; with Monte Carlo terms left, the loss under
a fixed seed differs from Trace_ELBO's (same draw) by exactly KL - (log q(z) - log p(z)).
Statistical checks (means of N single-sample estimates within 4 standard errors, seeds fixed
by conftest): unbiased value and gradient on a conjugate Normal model, a score-function Beta
guide (coin), and a non-mean-field guide whose KL term is a cost of a score-function site.
"""

import math

import pytest
import torch
from torch.distributions import kl_divergence

import svigraph as sg
from svigraph import distributions as dist, handlers
from svigraph.constraints import positive, unit_interval
from svigraph.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from tests.reference import mean_grads

TOL = 1e-5


def normal_guide(*args):
    m = sg.param("m", torch.tensor(0.3))
    s = sg.param("s", torch.tensor(0.7), constraint=positive)
    sg.sample("z", dist.Normal(m, s))


def prior_only_model(*args):
    sg.sample("z", dist.Normal(0.5, 2.0))


def leaves(*names):
    return [sg.param(n).unconstrained() for n in names]


def exact_kl():
    return kl_divergence(torch.distributions.Normal(sg.param("m"), sg.param("s")),
                         torch.distributions.Normal(0.5, 2.0))


@pytest.mark.parametrize("elbo", [
    TraceMeanField_ELBO(),
    TraceMeanField_ELBO(num_particles=3),
    TraceMeanField_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0),
], ids=["one", "particles", "vectorized"])
def test_all_analytic_loss_and_gradient_are_exact(elbo):
    """No Monte Carlo term left: loss = KL(q || p), gradient = its gradient, every seed."""
    normal_guide()
    for seed in range(3):
        sg.set_rng_seed(seed)
        loss = elbo.differentiable_loss(prior_only_model, normal_guide)
        got = torch.autograd.grad(loss, leaves("m", "s"))
        expected_value = exact_kl()
        expected = torch.autograd.grad(expected_value, leaves("m", "s"))
        assert float(loss.detach()) == pytest.approx(float(expected_value.detach()), abs=TOL)
        for g, e in zip(got, expected):
            assert torch.allclose(g, e, atol=TOL)
    assert elbo.loss(prior_only_model, normal_guide) == pytest.approx(float(exact_kl().detach()),
                                                                    abs=TOL)


data = torch.tensor([0.8, 1.9, 1.2])
PRIOR = (0.5, 2.0)
SIGMA = 0.9


def conjugate_model(data):
    z = sg.sample("z", dist.Normal(*PRIOR))
    with sg.plate("data", len(data)):
        sg.sample("x", dist.Normal(z, SIGMA), obs=data)


def guide_draw(guide, seed, *args):
    sg.set_rng_seed(seed)
    return handlers.trace(guide).get_trace(*args)["z"]["value"].detach()


def test_monte_carlo_terms_are_kept_and_only_the_kl_pair_replaced():
    """Same seed, same draw z: loss_TMF - loss_Trace = KL - (log q(z) - log p(z)), exactly."""
    normal_guide()
    q = torch.distributions.Normal(sg.param("m").detach(), sg.param("s").detach())
    p = torch.distributions.Normal(*PRIOR)
    for seed in range(3):
        z = guide_draw(normal_guide, seed, data)
        sg.set_rng_seed(seed)
        mean_field = TraceMeanField_ELBO().loss(conjugate_model, normal_guide, data)
        sg.set_rng_seed(seed)
        trace = Trace_ELBO().loss(conjugate_model, normal_guide, data)
        expected = float(kl_divergence(q, p) - (q.log_prob(z) - p.log_prob(z)))
        assert mean_field - trace == pytest.approx(expected, abs=TOL)


def exact_conjugate_elbo(data):
    m, s = sg.param("m"), sg.param("s")
    expected_loglik = (-math.log(SIGMA) - 0.5 * math.log(2 * math.pi)
                       - ((data - m) ** 2 + s ** 2) / (2 * SIGMA ** 2)).sum()
    kl = kl_divergence(torch.distributions.Normal(m, s), torch.distributions.Normal(*PRIOR))
    return expected_loglik - kl


def test_conjugate_model_value_and_gradient_unbiased():
    normal_guide()
    exact = exact_conjugate_elbo(data)
    exact_grads = torch.autograd.grad(exact, leaves("m", "s"))
    estimates, (value, value_se) = mean_grads(TraceMeanField_ELBO().differentiable_loss,
                                              conjugate_model, normal_guide, ["m", "s"], 500,
                                              data)
    for name, e in zip(["m", "s"], exact_grads):
        mean, se = estimates[name]
        assert abs(float(mean - e)) <= 4 * float(se) + 1e-6, (name, mean, e, se)
    assert abs(float(value - exact.detach())) <= 4 * float(value_se) + 1e-6


def test_svi_reaches_the_exact_posterior():
    """Normal-Normal: the optimum of the ELBO is the exact posterior."""
    precision = 1 / PRIOR[1] ** 2 + len(data) / SIGMA ** 2
    post_mean = (PRIOR[0] / PRIOR[1] ** 2 + float(data.sum()) / SIGMA ** 2) / precision
    svi = SVI(conjugate_model, normal_guide, sg.optim.Adam({"lr": 0.1}), TraceMeanField_ELBO())
    for _ in range(250):
        svi.step(data)
    assert float(sg.param("m").detach()) == pytest.approx(post_mean, abs=0.08)
    assert float(sg.param("s").detach()) == pytest.approx(precision ** -0.5, abs=0.08)


def model_with_prior_param(data):
    mu0 = sg.param("mu0", torch.tensor(0.2))
    z = sg.sample("z", dist.Normal(mu0, 1.5))
    with sg.plate("data", len(data)):
        sg.sample("x", dist.Normal(z, SIGMA), obs=data)


def test_gradient_of_a_prior_parameter_has_zero_variance():
    """mu0 enters only log p(z): with the analytic KL its gradient is exact on every draw;
    Trace_ELBO's single-sample gradient varies with the draw."""
    normal_guide()
    model_with_prior_param(data)
    exact = (float(sg.param("m").detach()) - 0.2) / 1.5 ** 2  # -d KL / d mu0
    mean_field, trace = [], []
    for seed in range(5):
        for elbo, out in ((TraceMeanField_ELBO(), mean_field), (Trace_ELBO(), trace)):
            sg.set_rng_seed(seed)
            loss = elbo.differentiable_loss(model_with_prior_param, normal_guide, data)
            out.append(-float(torch.autograd.grad(loss, leaves("mu0"))[0]))
    assert mean_field == pytest.approx([exact] * 5, abs=TOL)
    assert torch.tensor(trace).std() > 0.05


# ---- plates, subsampling, masks, scales, Independent ---------------------------------------

LOCS = torch.linspace(-1.0, 1.0, 10)
seen = []


def plated_model():
    with sg.plate("n", 10, subsample_size=4):
        sg.sample("z", dist.Normal(0.0, 1.0))


def plated_guide():
    loc = sg.param("loc", LOCS.clone())
    with sg.plate("n", 10, subsample_size=4) as idx:
        seen.append(idx)
        sg.sample("z", dist.Normal(loc[idx], 0.5))


def test_subsampled_plate_scales_the_kl_per_element():
    loss = TraceMeanField_ELBO().loss(plated_model, plated_guide)
    idx = seen[-1]
    kl = kl_divergence(torch.distributions.Normal(LOCS[idx], 0.5),
                       torch.distributions.Normal(0.0, 1.0))
    assert loss == pytest.approx(float(10 / 4 * kl.sum()), abs=TOL)
    plan = TraceMeanField_ELBO().compile(plated_model, plated_guide)
    assert "elbo      = -sum[n](KL(q_z||p_z))" in str(plan)
    assert str(plan.objective) == "-5*Sum(KL(q_z[i_n], p_z[i_n]), (i_n, 0, 3))/2"


MASK = torch.tensor([True, False, True])


def vector_model():
    with sg.plate("n", 3):
        sg.sample("z", dist.Normal(0.0, 1.0))


def vector_guide():
    with sg.plate("n", 3):
        sg.sample("z", dist.Normal(torch.tensor([0.3, -0.2, 1.0]), torch.tensor([0.5, 0.8, 1.2])))


def vector_kl_and_entropy():
    q = torch.distributions.Normal(torch.tensor([0.3, -0.2, 1.0]), torch.tensor([0.5, 0.8, 1.2]))
    return kl_divergence(q, torch.distributions.Normal(0.0, 1.0)), q.entropy()


def masked_prior_model():
    with sg.plate("n", 3):
        sg.sample("z", dist.Normal(0.0, 1.0).mask(MASK))


@pytest.mark.parametrize("case", ["both", "model_only", "distribution_mask"])
def test_masks_weight_the_kl_exactly(case):
    """Same mask on both sides: mask * KL. Model side only: the masked-out elements keep
    -log q, whose expectation is the entropy: cost = m KL + (m - 1) H."""
    kl, entropy = vector_kl_and_entropy()
    m = MASK.float()
    if case == "both":
        model, guide = handlers.mask(vector_model, mask=MASK), handlers.mask(vector_guide,
                                                                               mask=MASK)
        expected = (m * kl).sum()
    elif case == "model_only":
        model, guide = handlers.mask(vector_model, mask=MASK), vector_guide
        expected = (m * kl + (m - 1) * entropy).sum()
    else:
        model, guide = masked_prior_model, vector_guide
        expected = (m * kl + (m - 1) * entropy).sum()
    assert TraceMeanField_ELBO().loss(model, guide) == pytest.approx(float(expected), abs=TOL)


def test_model_only_mask_matches_the_monte_carlo_expectation():
    """The entropy correction is what Trace_ELBO estimates: its mean over 20000 vectorized
    particles agrees within 4 standard errors (the SE from the same draws' spread)."""
    kl, entropy = vector_kl_and_entropy()
    m = MASK.float()
    exact = float((m * kl + (m - 1) * entropy).sum())
    model = handlers.mask(vector_model, mask=MASK)
    n = 20000
    estimate = Trace_ELBO(num_particles=n, vectorize_particles=True,
                          max_plate_nesting=1).loss(model, vector_guide)
    q = torch.distributions.Normal(torch.tensor([0.3, -0.2, 1.0]), torch.tensor([0.5, 0.8, 1.2]))
    z = q.sample((n,))
    per_draw = (q.log_prob(z) - m * torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1)
    se = float(per_draw.std()) / n ** 0.5
    assert abs(estimate - exact) <= 4 * se


@pytest.mark.parametrize("where", ["model", "both", "site_scales"])
def test_scales_weight_the_kl_exactly(where):
    beta = 0.25
    kl, entropy = vector_kl_and_entropy()
    elbo, kwargs = TraceMeanField_ELBO(), {}
    model, guide = vector_model, vector_guide
    if where == "model":  # a beta-weighted prior: cost = beta KL + (beta - 1) H
        model = handlers.scale(vector_model, scale=beta)
        expected = (beta * kl + (beta - 1) * entropy).sum()
    elif where == "both":
        model = handlers.scale(vector_model, scale=beta)
        guide = handlers.scale(vector_guide, scale=beta)
        expected = beta * kl.sum()
    else:
        kwargs = {"site_scales": {"z": beta}}
        expected = beta * kl.sum()
    assert elbo.loss(model, guide, **kwargs) == pytest.approx(float(expected), abs=TOL)


def event_model():
    sg.sample("s", dist.Gamma(torch.tensor([2.0, 3.0, 1.5]), 1.0).to_event(1))
    sg.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))


def event_guide():
    loc = sg.param("loc", torch.tensor([0.1, 0.4, -0.3]))
    sg.sample("s", dist.LogNormal(loc, 0.6).to_event(1))
    sg.sample("z", dist.Normal(loc, 0.6).to_event(1))


def test_independent_sums_the_kl_over_event_dims_also_for_derived_pairs():
    plan = TraceMeanField_ELBO().compile(event_model, event_guide)
    assert plan.sites["s"].estimator == plan.sites["z"].estimator == "analytic_kl"
    assert "KL(Independent(LogNormal, 1) || Independent(Gamma, 1))" in plan.sites["s"].note
    loc = torch.tensor([0.1, 0.4, -0.3])
    from compiler.kl_derived import derive
    kl_s = derive("LogNormal", "Gamma")(torch.distributions.LogNormal(loc, 0.6),
                                        torch.distributions.Gamma(torch.tensor([2.0, 3.0, 1.5]),
                                                                  1.0))
    kl_z = kl_divergence(torch.distributions.Normal(loc, 0.6), torch.distributions.Normal(0.0, 1.0))
    loss = TraceMeanField_ELBO().loss(event_model, event_guide)
    assert loss == pytest.approx(float(kl_s.sum() + kl_z.sum()), abs=TOL)


# ---- score-function sites ------------------------------------------------------------------

flips = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])


def coin_model(flips):
    f = sg.sample("f", dist.Beta(10.0, 10.0))
    with sg.plate("flips", len(flips)):
        sg.sample("obs", dist.Bernoulli(f), obs=flips)


def coin_guide(flips):
    a = sg.param("a", torch.tensor(12.0), constraint=positive)
    b = sg.param("b", torch.tensor(9.0), constraint=positive)
    sg.sample("f", dist.Beta(a, b).with_rsample(False))


def test_score_function_guide_with_analytic_kl_is_unbiased():
    """Beta guide sampled by score function: the KL is analytic, the likelihood term is
    Monte Carlo with the site's score weighting it. Exact ELBO: E_q[log f] = psi(a) -
    psi(a + b)."""
    coin_guide(flips)
    a, b = sg.param("a"), sg.param("b")
    heads = flips.sum()
    exact = (heads * (torch.digamma(a) - torch.digamma(a + b))
             + (len(flips) - heads) * (torch.digamma(b) - torch.digamma(a + b))
             - kl_divergence(torch.distributions.Beta(a, b), torch.distributions.Beta(10.0, 10.0)))
    exact_grads = torch.autograd.grad(exact, leaves("a", "b"))
    plan = TraceMeanField_ELBO().compile(coin_model, coin_guide, flips)
    assert plan.sites["f"].estimator == "analytic_kl"
    assert "value score function" in plan.sites["f"].note
    assert plan.sites["f"].cost == (("model", "obs"),)
    estimates, (value, value_se) = mean_grads(TraceMeanField_ELBO().differentiable_loss,
                                              coin_model, coin_guide, ["a", "b"], 600, flips)
    for name, e in zip(["a", "b"], exact_grads):
        mean, se = estimates[name]
        assert abs(float(mean - e)) <= 4 * float(se) + 1e-6, (name, mean, e, se)
    assert abs(float(value - exact.detach())) <= 4 * float(value_se) + 1e-6


def nonmf_model():
    sg.sample("u", dist.Bernoulli(0.3))
    sg.sample("v", dist.Normal(0.0, 1.0))


def nonmf_guide():
    qu = sg.param("qu", torch.tensor(0.6), constraint=unit_interval)
    m = sg.param("m", torch.tensor(0.2))
    u = sg.sample("u", dist.Bernoulli(qu))
    sg.sample("v", dist.Normal(m + 1.5 * u, 1.0))


def test_kl_depending_on_a_score_site_is_rao_blackwellized_unbiasedly():
    """q(v | u) reads the score-function site u: KL(q(v|u) || p(v)) is a cost of u. Exact
    ELBO = -KL(q_u || p_u) - sum_u q(u) KL(q(v|u) || p(v))."""
    nonmf_guide()
    qu, m = sg.param("qu"), sg.param("m")
    kl_v = [kl_divergence(torch.distributions.Normal(m + 1.5 * u, 1.0),
                          torch.distributions.Normal(0.0, 1.0)) for u in (0.0, 1.0)]
    exact = (-kl_divergence(torch.distributions.Bernoulli(qu), torch.distributions.Bernoulli(0.3))
             - (1 - qu) * kl_v[0] - qu * kl_v[1])
    exact_grads = torch.autograd.grad(exact, leaves("qu", "m"))
    plan = TraceMeanField_ELBO().compile(nonmf_model, nonmf_guide)
    assert plan.sites["u"].cost == (("kl", "v"),)
    estimates, (value, value_se) = mean_grads(TraceMeanField_ELBO().differentiable_loss,
                                              nonmf_model, nonmf_guide, ["qu", "m"], 600)
    for name, e in zip(["qu", "m"], exact_grads):
        mean, se = estimates[name]
        assert abs(float(mean - e)) <= 4 * float(se) + 1e-6, (name, mean, e, se)
    assert abs(float(value - exact.detach())) <= 4 * float(value_se) + 1e-6


def plated_nonmf_model():
    with sg.plate("n", 2):
        sg.sample("u", dist.Bernoulli(0.3))
        sg.sample("v", dist.Normal(0.0, 1.0))


def plated_nonmf_guide():
    qu = sg.param("qu", torch.tensor([0.6, 0.25]), constraint=unit_interval)
    m = sg.param("m", torch.tensor([0.2, -0.5]))
    with sg.plate("n", 2):
        u = sg.sample("u", dist.Bernoulli(qu))
        sg.sample("v", dist.Normal(m + 1.5 * u, 1.0))


def test_plated_kl_cost_is_sliced_per_element():
    """In a plate, u_i is weighted only by KL(q(v_i | u_i) || p(v_i)), slice by slice."""
    plated_nonmf_guide()
    qu, m = sg.param("qu"), sg.param("m")
    kl_v = [kl_divergence(torch.distributions.Normal(m + 1.5 * u, 1.0),
                          torch.distributions.Normal(0.0, 1.0)) for u in (0.0, 1.0)]
    exact = (-kl_divergence(torch.distributions.Bernoulli(qu), torch.distributions.Bernoulli(0.3))
             - (1 - qu) * kl_v[0] - qu * kl_v[1]).sum()
    exact_grads = torch.autograd.grad(exact, leaves("qu", "m"))
    plan = TraceMeanField_ELBO().compile(plated_nonmf_model, plated_nonmf_guide)
    (score,) = plan.scores
    assert [t for t, _ in score.costs] == [("kl", "v")] and not score.whole_terms
    estimates, (value, value_se) = mean_grads(TraceMeanField_ELBO().differentiable_loss,
                                              plated_nonmf_model, plated_nonmf_guide,
                                              ["qu", "m"], 600)
    for name, e in zip(["qu", "m"], exact_grads):
        mean, se = estimates[name]
        assert torch.all((mean - e).abs() <= 4 * se + 1e-6), (name, mean, e, se)
    assert abs(float(value - exact.detach())) <= 4 * float(value_se) + 1e-6


def cauchy_model(data):
    z = sg.sample("z", dist.Cauchy(0.0, 1.0))
    sg.sample("x", dist.Normal(z, 1.0), obs=data)


def test_fallback_site_keeps_the_trace_elbo_estimate():
    normal_guide()
    plan = TraceMeanField_ELBO().compile(cauchy_model, normal_guide, torch.tensor(0.4))
    assert plan.sites["z"].estimator == "pathwise"
    assert "no closed form" in plan.sites["z"].note and not plan.kl_terms
    sg.set_rng_seed(3)
    a = TraceMeanField_ELBO().loss(cauchy_model, normal_guide, torch.tensor(0.4))
    sg.set_rng_seed(3)
    b = Trace_ELBO().loss(cauchy_model, normal_guide, torch.tensor(0.4))
    assert a == pytest.approx(b, abs=TOL)


def test_hierarchical_model_is_refused_with_the_fix():
    def model():
        mu = sg.sample("mu", dist.Normal(0.0, 1.0))
        sg.sample("theta", dist.Normal(mu, 1.0))

    def guide():
        sg.sample("mu", dist.Normal(sg.param("a", torch.tensor(0.0)), 1.0))
        sg.sample("theta", dist.Normal(sg.param("b", torch.tensor(0.0)), 1.0))

    with pytest.raises(sg.errors.MeanFieldError, match="depends on latent 'mu'") as err:
        TraceMeanField_ELBO().loss(model, guide)
    assert err.value.site == "theta" and "Trace_ELBO" in err.value.fix
