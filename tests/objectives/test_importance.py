"""Importance sampling, TracePosterior and EmpiricalMarginal against closed forms.

The coin model (Beta(10, 10) prior, 6 heads in 10 flips) has evidence B(16, 14) / B(10, 10)
and posterior Beta(16, 14). Statistical checks use a fixed seed and a tolerance of 4
standard errors, with the standard error computed from the same weights (delta method), and
also require that standard error to be small, so a biased estimator cannot pass by noise.
"""

import math

import pytest
import torch

import svigraph as sg
from svigraph import constraints
from svigraph import distributions as dist
from svigraph.errors import ShapeMismatchError, SvigraphError
from svigraph.infer import EmpiricalMarginal, Importance, TracePosterior
from svigraph.trace_struct import Trace

FLIPS = torch.tensor([1.0] * 6 + [0.0] * 4)
EXACT_LOG_Z = (math.lgamma(16) + math.lgamma(14) - math.lgamma(30)
               - (2 * math.lgamma(10) - math.lgamma(20)))
POST_MEAN = 16 / 30
POST_VAR = 16 * 14 / (30 ** 2 * 31)


def coin_model(flips):
    f = sg.sample("fairness", dist.Beta(10.0, 10.0))
    with sg.plate("flips", len(flips)):
        sg.sample("obs", dist.Bernoulli(f), obs=flips)
    return f


def beta_guide(a0, b0):
    def guide(flips):
        a = sg.param("a", torch.tensor(a0), constraint=constraints.positive)
        b = sg.param("b", torch.tensor(b0), constraint=constraints.positive)
        sg.sample("fairness", dist.Beta(a, b))
    return guide


def log_weights(posterior):
    return torch.stack(posterior.log_weights).double()


def log_evidence_se(posterior):
    w = log_weights(posterior)
    w = (w - w.max()).exp()
    return float(w.std() / (w.mean() * math.sqrt(len(w))))


def fairness(posterior):
    return torch.stack([tr["fairness"]["value"] for tr in posterior.exec_traces]).double()


def bernoulli_log_lik(f):
    return 6 * torch.log(f) + 4 * torch.log1p(-f)


@pytest.fixture(scope="module")
def prior_posterior():
    """2000 prior-proposal samples, shared by the tests that only read them."""
    sg.set_rng_seed(0)
    return Importance(coin_model, num_samples=2000).run(FLIPS)


def test_prior_proposal_weights_are_the_likelihood_and_estimate_the_evidence(prior_posterior):
    posterior = prior_posterior
    assert isinstance(posterior, TracePosterior) and len(posterior.exec_traces) == 2000
    # proposing from the prior, log p(z) - log q(z) cancels: each weight is log p(x | z)
    f = fairness(posterior)
    assert torch.allclose(log_weights(posterior), bernoulli_log_lik(f), atol=1e-4)
    se = log_evidence_se(posterior)
    assert se < 0.02
    assert abs(float(posterior.get_log_normalizer()) - EXACT_LOG_Z) < 4 * se


def test_guide_proposal_weights_are_log_joint_minus_log_guide():
    posterior = Importance(coin_model, beta_guide(15.0, 15.0), num_samples=1000).run(FLIPS)
    f = fairness(posterior)
    prior, q = torch.distributions.Beta(10.0, 10.0), torch.distributions.Beta(15.0, 15.0)
    log_ratio = prior.log_prob(f.float()).double() - q.log_prob(f.float()).double()
    expected = bernoulli_log_lik(f) + log_ratio
    assert torch.allclose(log_weights(posterior), expected, atol=1e-4)
    se = log_evidence_se(posterior)
    assert se < 0.03
    assert abs(float(posterior.get_log_normalizer()) - EXACT_LOG_Z) < 4 * se


def test_exact_posterior_as_guide_gives_constant_weights():
    """q = p(z | x) makes every weight equal to log p(x): the estimate is exact, ESS = N."""
    posterior = Importance(coin_model, beta_guide(16.0, 14.0), num_samples=50).run(FLIPS)
    w = log_weights(posterior)
    assert torch.allclose(w, torch.full_like(w, EXACT_LOG_Z), atol=2e-4)
    assert abs(float(posterior.get_log_normalizer()) - EXACT_LOG_Z) < 2e-4
    assert abs(float(posterior.get_ESS()) - 50) < 1e-2


def test_ess_and_normalized_weights_formulas():
    posterior = Importance(coin_model, num_samples=300).run(FLIPS)
    w = log_weights(posterior).exp()
    assert abs(float(posterior.get_ESS()) - float(w.sum() ** 2 / (w ** 2).sum())) < 1e-2
    normalized = posterior.get_normalized_weights()
    assert torch.allclose(normalized.double(), w / w.sum(), atol=1e-6)
    log_normalized = posterior.get_normalized_weights(log_scale=True)
    assert torch.allclose(log_normalized.exp(), normalized)
    assert 1.0 <= float(posterior.get_ESS()) <= 300.0


def test_ess_of_one_dominant_weight_is_one():
    posterior = Importance(coin_model, num_samples=1)
    posterior.log_weights = [torch.tensor(0.0), torch.tensor(-1e4), torch.tensor(-1e4)]
    assert abs(float(posterior.get_ESS()) - 1.0) < 1e-6
    assert abs(float(posterior.get_log_normalizer()) - (-math.log(3))) < 1e-6


def test_empirical_marginal_mean_and_variance_match_the_beta_posterior(prior_posterior):
    posterior = prior_posterior
    marginal = EmpiricalMarginal(posterior, "fairness")
    # exactly the self-normalized weighted moments of the traces' values
    f, wbar = fairness(posterior), posterior.get_normalized_weights().double()
    mean = float((wbar * f).sum())
    assert abs(float(marginal.mean) - mean) < 1e-5
    assert abs(float(marginal.variance) - float((wbar * (f - mean) ** 2).sum())) < 1e-6
    ess = float(posterior.get_ESS())
    assert abs(mean - POST_MEAN) < 4 * math.sqrt(POST_VAR / ess)
    # the variance estimate's SE is about sqrt(2) var / sqrt(ESS) (near-Gaussian posterior)
    assert abs(float(marginal.variance) - POST_VAR) < 4 * math.sqrt(2 * POST_VAR ** 2 / ess)


def test_default_site_is_the_return_value():
    posterior = Importance(coin_model, num_samples=100).run(FLIPS)
    assert all(tr["_RETURN"]["value"] is tr["fairness"]["value"] for tr in posterior.exec_traces)
    assert torch.equal(EmpiricalMarginal(posterior).mean,
                       EmpiricalMarginal(posterior, "fairness").mean)
    assert all(isinstance(tr, Trace) for tr in posterior.exec_traces)


def two_latent_model(x):
    a = sg.sample("a", dist.Normal(0.0, 1.0))
    b = sg.sample("b", dist.Normal(a, 1.0))
    v = sg.sample("v", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    sg.sample("x", dist.Normal(a + b + v.sum(), 1.0), obs=x)
    return a - b


def test_sites_list_stacks_same_shaped_sites():
    posterior = Importance(two_latent_model, num_samples=200).run(torch.tensor(1.0))
    both = EmpiricalMarginal(posterior, sites=["a", "b"])
    assert both.event_shape == (2,) and both.sample_size == 200
    a, b = EmpiricalMarginal(posterior, "a"), EmpiricalMarginal(posterior, "b")
    assert torch.allclose(both.mean, torch.stack([a.mean, b.mean]))
    assert torch.allclose(both.variance, torch.stack([a.variance, b.variance]))
    assert both.sample((5,)).shape == (5, 2)
    vector = EmpiricalMarginal(posterior, "v")
    assert vector.event_shape == (3,) and vector.mean.shape == (3,)
    with pytest.raises(ShapeMismatchError, match="a: \\(\\)") as err:
        EmpiricalMarginal(posterior, sites=["a", "v"])
    assert "one EmpiricalMarginal per site" in str(err.value)


def test_marginals_hold_one_empirical_per_site():
    posterior = Importance(two_latent_model, num_samples=50).run(torch.tensor(1.0))
    marginals = posterior.marginal(["a", "v"])
    assert set(marginals.empirical) == {"a", "v"}
    assert marginals.support()["v"].shape == (50, 3)


def discrete_model(x):
    z = sg.sample("z", dist.Bernoulli(0.3))
    sg.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)
    return z


def test_empirical_log_prob_is_the_weight_of_matching_samples():
    """A Bernoulli latent: log_prob(1) estimates log p(z = 1 | x); unseen values get -inf."""
    x = 1.5
    like1, like0 = 0.3 * math.exp(-0.5 * (x - 2) ** 2), 0.7 * math.exp(-0.5 * x ** 2)
    exact = like1 / (like1 + like0)
    posterior = Importance(discrete_model, num_samples=1000).run(torch.tensor(x))
    marginal = EmpiricalMarginal(posterior, "z")
    z = torch.stack([tr["z"]["value"] for tr in posterior.exec_traces])
    wbar = posterior.get_normalized_weights()
    p1 = marginal.log_prob(torch.tensor(1.0)).exp()
    assert abs(float(p1) - float(wbar[z == 1].sum())) < 1e-5
    assert abs(float(p1 + marginal.log_prob(torch.tensor(0.0)).exp()) - 1.0) < 1e-5
    se = math.sqrt(exact * (1 - exact) / float(posterior.get_ESS()))
    assert abs(float(p1) - exact) < 4 * se
    assert marginal.log_prob(torch.tensor(0.5)) == -math.inf
    with pytest.raises(ShapeMismatchError, match="batch_shape \\+ event_shape"):
        marginal.log_prob(torch.ones(2))


def test_empirical_sample_draws_in_proportion_to_weight():
    from svigraph.distributions.empirical import Empirical
    d = Empirical(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, math.log(3.0), -math.inf]))
    draws = d.sample((4000,))
    assert draws.shape == (4000,)
    frac_one = float((draws == 1.0).double().mean())
    assert abs(frac_one - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 4000)
    assert not bool((draws == 2.0).any())
    assert abs(float(d.mean) - 0.75) < 1e-6


def test_subsampled_plate_scales_the_log_weight():
    """A subsampled plate scales the likelihood by N / n in the weight, as in the ELBO."""
    data = torch.arange(10.0) / 5

    def model(data):
        m = sg.sample("m", dist.Normal(0.0, 1.0))
        with sg.plate("data", 10, subsample_size=4) as idx:
            sg.sample("x", dist.Normal(m, 1.0), obs=data[idx])

    posterior = Importance(model, num_samples=20).run(data)
    for tr, w in zip(posterior.exec_traces, posterior.log_weights):
        site = tr["x"]
        assert site["scale"] == 2.5
        expected = 2.5 * dist.Normal(tr["m"]["value"], 1.0).log_prob(site["value"]).sum()
        assert abs(float(w) - float(expected)) < 1e-4


def test_one_compile_per_structure(monkeypatch):
    import svigraph.infer.elbo as elbo_module
    calls = []
    real = elbo_module.trace_graph
    monkeypatch.setattr(elbo_module, "trace_graph",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    posterior = Importance(coin_model, num_samples=30).run(FLIPS)
    assert len(calls) == 1
    assert posterior.plan.sites["fairness"].estimator == "pathwise"
    posterior.run(FLIPS)
    assert len(calls) == 1  # the plan is cached across runs


def test_call_draws_a_trace_without_observed_sites():
    posterior = Importance(coin_model, beta_guide(16.0, 14.0), num_samples=20).run(FLIPS)
    tr = posterior()
    assert isinstance(tr, Trace) and "obs" not in tr and "fairness" in tr
    values = {float(t["fairness"]["value"]) for t in posterior.exec_traces}
    assert float(tr["fairness"]["value"]) in values


def test_run_hides_sites_from_outer_handlers():
    with sg.handlers.trace() as outer:
        Importance(coin_model, num_samples=3).run(FLIPS)
    assert len(outer.trace) == 0


def test_information_criterion_matches_its_formula():
    posterior = Importance(coin_model, beta_guide(16.0, 14.0), num_samples=200).run(FLIPS)
    ic = posterior.information_criterion(pointwise=True)
    f = fairness(posterior)
    ll = torch.where(FLIPS.double() == 1, f.log()[:, None], (-f).log1p()[:, None])
    lpd = torch.logsumexp(ll, 0) - math.log(200)     # equal weights (exact posterior guide)
    p_waic = ll.var(0)
    assert ic["waic"].shape == (10,)
    assert torch.allclose(ic["p_waic"].double(), p_waic, atol=1e-5)
    assert torch.allclose(ic["waic"].double(), -2 * (lpd - p_waic), atol=1e-4)
    total = posterior.information_criterion()
    assert abs(float(total["waic"]) - float(ic["waic"].sum())) < 1e-4


def test_information_criterion_needs_one_observed_site():
    posterior = Importance(two_latent_model, num_samples=5).run(torch.tensor(1.0))
    assert set(posterior.information_criterion()) == {"waic", "p_waic"}

    def two_obs(x):
        m = sg.sample("m", dist.Normal(0.0, 1.0))
        sg.sample("x1", dist.Normal(m, 1.0), obs=x)
        sg.sample("x2", dist.Normal(m, 1.0), obs=x)

    posterior = Importance(two_obs, num_samples=5).run(torch.tensor(1.0))
    with pytest.raises(SvigraphError, match="exactly one observed site"):
        posterior.information_criterion()


def test_errors_name_the_site_and_the_fix():
    posterior = Importance(coin_model, num_samples=5)
    with pytest.raises(SvigraphError, match="call .run"):
        EmpiricalMarginal(posterior)
    with pytest.raises(SvigraphError, match="call .run"):
        posterior.get_ESS()
    posterior.run(FLIPS)
    with pytest.raises(SvigraphError, match="did you mean 'fairness'") as err:
        EmpiricalMarginal(posterior, "fairnes")
    assert err.value.site == "fairnes" and "fix:" in str(err.value)
    with pytest.raises(ValueError, match="positive integer"):
        Importance(coin_model, num_samples=0)


def test_guide_missing_a_latent_is_refused_as_in_svi():
    def partial_guide(x):
        sg.sample("a", dist.Normal(0.0, 1.0))

    with pytest.raises(sg.errors.ModelGuideMismatchError, match="'b'"):
        Importance(two_latent_model, partial_guide, num_samples=2).run(torch.tensor(1.0))
