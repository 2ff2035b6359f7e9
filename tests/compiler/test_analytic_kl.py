"""The analytic-KL pass and the symbolically derived KL divergences.

Every derived KL is checked against an independent answer: torch's registry where it has the
pair (to 1e-9 relative, both are closed forms in float64), and numerical quadrature of
q(x) (log q(x) - log p(x)) with torch's own log densities (mpmath tanh-sinh quadrature, to
1e-7 relative: the quadrature is good to ~1e-12 on these smooth integrands, the densities to
float64 round-off). Gradients are checked against finite differences (torch.autograd.gradcheck).
"""

import math

import mpmath
import pytest
import sympy as sp
import torch
import torch.distributions as tdist

from compiler.analytic_kl import choose_analytic_kl, kl_cost_sets, kl_rule, match_signatures
from compiler.errors import MeanFieldError
from compiler.estimators import assign_estimators
from compiler.kl_derived import FAMILIES, NoClosedForm, derive, derive_expr
from compiler.schema import sample_sites

import svigraph as sg
from svigraph import distributions as dist
from svigraph.constraints import positive
from svigraph.infer import TraceMeanField_ELBO

D = torch.float64

# parameter values per family (torch constructor kwargs), away from any special case
PARAMS = {
    "Normal": {"loc": 0.3, "scale": 0.8},
    "LogNormal": {"loc": 0.2, "scale": 0.6},
    "Gamma": {"concentration": 2.5, "rate": 1.7},
    "Exponential": {"rate": 1.3},
    "HalfNormal": {"scale": 1.4},
    "Weibull": {"scale": 1.2, "concentration": 1.8},
    "Beta": {"concentration1": 2.2, "concentration0": 3.1},
    "Kumaraswamy": {"concentration1": 1.5, "concentration0": 2.5},
}
P_PARAMS = {  # the prior side gets other values, so q != p
    "Normal": {"loc": -0.4, "scale": 1.3},
    "LogNormal": {"loc": -0.1, "scale": 0.9},
    "Gamma": {"concentration": 1.6, "rate": 0.9},
    "Exponential": {"rate": 0.7},
    "HalfNormal": {"scale": 0.9},
    "Weibull": {"scale": 0.9, "concentration": 1.3},
    "Beta": {"concentration1": 1.4, "concentration0": 1.9},
    "Kumaraswamy": {"concentration1": 1.5, "concentration0": 2.5},
}


def make(name, params):
    return getattr(tdist, name)(**{k: torch.tensor(v, dtype=D) for k, v in params.items()})


def derivable_pairs():
    out = []
    for q in FAMILIES:
        for p in FAMILIES:
            try:
                derive_expr(q, p)
            except NoClosedForm:
                continue
            out.append((q, p))
    return out


DERIVED = derivable_pairs()


def quadrature_kl(q, p, support):
    def integrand(x):
        t = torch.tensor(float(x), dtype=D)
        lq = float(q.log_prob(t))
        if not math.isfinite(lq):  # an end point that float64 rounded onto: q is ~0 there
            return 0.0
        return math.exp(lq) * (lq - float(p.log_prob(t)))
    mpmath.mp.dps = 20
    limits = {"real": [-mpmath.inf, q.mean.item(), mpmath.inf],
              "positive": [0, q.mean.item(), mpmath.inf], "unit": [0, 0.5, 1]}[support]
    return float(mpmath.quad(integrand, limits))


def test_expected_pairs_are_derivable():
    """The pairs torch lacks and users need (LogNormal guides for positive priors, ...) derive;
    the derivation covers every pair of these families whose supports nest, except where a
    term truly has no closed form (Kumaraswamy's log(1 - x**a))."""
    for pair in [("LogNormal", "Gamma"), ("Gamma", "LogNormal"), ("LogNormal", "Exponential"),
                 ("LogNormal", "HalfNormal"), ("Gamma", "HalfNormal"), ("Weibull", "Gamma"),
                 ("LogNormal", "Weibull"), ("Normal", "Normal"), ("Beta", "Beta"),
                 ("Gamma", "Gamma"), ("LogNormal", "LogNormal")]:
        assert pair in DERIVED
    assert len(DERIVED) == 32  # Normal||Normal, 5 x 5 positive pairs, Beta || 5 positive + Beta
    with pytest.raises(NoClosedForm, match=r"log\(1 - x\*\*concentration1_p\)"):
        derive("Beta", "Kumaraswamy")
    with pytest.raises(NoClosedForm, match="not inside"):
        derive("Normal", "Gamma")


@pytest.mark.parametrize("q_name, p_name", DERIVED, ids=[f"{q}-{p}" for q, p in DERIVED])
def test_derived_kl_matches_quadrature_and_torch(q_name, p_name):
    q, p = make(q_name, PARAMS[q_name]), make(p_name, P_PARAMS[p_name])
    value = float(derive(q_name, p_name)(q, p))
    expected = quadrature_kl(q, p, FAMILIES[q_name].support)
    assert value == pytest.approx(expected, rel=1e-7, abs=1e-10)
    try:
        reference = float(tdist.kl_divergence(q, p))
    except NotImplementedError:
        return
    assert value == pytest.approx(reference, rel=1e-9, abs=1e-12)


def test_torch_has_the_pairs_compared():
    """The torch comparison above is not vacuous: these pairs are in its registry."""
    for q, p in [("Normal", "Normal"), ("Gamma", "Gamma"), ("Beta", "Beta"),
                 ("LogNormal", "LogNormal"), ("Exponential", "Gamma"), ("Beta", "Exponential")]:
        tdist.kl_divergence(make(q, PARAMS[q]), make(p, P_PARAMS[p]))


@pytest.mark.parametrize("q_name, p_name", [("LogNormal", "Gamma"), ("Gamma", "LogNormal"),
                                            ("Weibull", "Weibull"), ("HalfNormal", "Weibull"),
                                            ("Beta", "HalfNormal")])
def test_derived_kl_gradients_match_finite_differences(q_name, p_name):
    rule = derive(q_name, p_name)
    names = rule.q_params + rule.p_params
    values = [PARAMS[q_name][n] for n in rule.q_params] + \
        [P_PARAMS[p_name][n] for n in rule.p_params]
    # a batch of 2, to check broadcasting too
    inputs = tuple(torch.tensor([v, v * 1.1], dtype=D, requires_grad=True) for v in values)

    def kl(*args):
        q = getattr(tdist, q_name)(**dict(zip(rule.q_params, args[:len(rule.q_params)])))
        p = getattr(tdist, p_name)(**dict(zip(rule.p_params, args[len(rule.q_params):])))
        return rule(q, p)

    assert torch.autograd.gradcheck(kl, inputs), names


def test_derived_kl_broadcasts_and_keeps_dtype():
    q = tdist.LogNormal(torch.zeros(3, 1), torch.ones(3, 1))
    p = tdist.Gamma(torch.ones(4) * 2.0, torch.ones(4))
    out = derive("LogNormal", "Gamma")(q, p)
    assert out.shape == (3, 4) and out.dtype == torch.float32


def test_kl_rule_prefers_torch_and_refuses_generic_rules():
    assert kl_rule(dist.Normal, dist.Normal)[0] == "torch _kl_normal_normal"
    assert kl_rule(dist.LogNormal, dist.Gamma)[0] == "derived LogNormal||Gamma"
    # LogNormal/Weibull would hit torch's TransformedDistribution rule, which fails at run time
    assert kl_rule(dist.LogNormal, dist.Weibull)[0] == "derived LogNormal||Weibull"
    # Chi2 is a Gamma to the derivation
    assert kl_rule(dist.LogNormal, dist.Chi2)[0] == "derived LogNormal||Gamma"
    with pytest.raises(NoClosedForm, match="Cauchy"):
        kl_rule(dist.Normal, dist.Cauchy)
    # the exponential-family catch-all only for one family against itself
    with pytest.raises(NoClosedForm):
        kl_rule(tdist.Poisson, tdist.Geometric)


def test_signatures_unwrap_independent_and_masks():
    normal = ("dist", dist.Normal)
    ind = ("independent", 1, normal)
    assert match_signatures(ind, ("masked", ind)) == "torch _kl_normal_normal"
    assert match_signatures(("masked", normal), normal) == "torch _kl_normal_normal"
    with pytest.raises(NoClosedForm, match="different numbers of batch dims"):
        match_signatures(ind, ("independent", 2, normal))
    with pytest.raises(NoClosedForm):
        match_signatures(ind, normal)


# ---- the pass on traced graphs ------------------------------------------------------------

def trace_plan(model, guide, *args):
    return TraceMeanField_ELBO().compile(model, guide, *args)


def model_three(data):
    sg.sample("z", dist.Normal(0.0, 1.0))
    sg.sample("s", dist.Gamma(2.0, 2.0))
    c = sg.sample("c", dist.Cauchy(0.0, 1.0))
    sg.sample("x", dist.Normal(c, 1.0), obs=data)


def guide_three(data):
    m = sg.param("m", torch.tensor(0.0))
    sd = sg.param("sd", torch.tensor(1.0), constraint=positive)
    sg.sample("z", dist.Normal(m, sd))
    sg.sample("s", dist.LogNormal(m, sd))
    sg.sample("c", dist.Normal(m, sd))


def test_plan_reports_estimators_notes_and_objective():
    plan = trace_plan(model_three, guide_three, torch.tensor(0.5))
    assert plan.sites["z"].estimator == "analytic_kl"
    assert plan.sites["s"].estimator == "analytic_kl"
    assert plan.sites["c"].estimator == "pathwise"
    assert "derived LogNormal||Gamma" in plan.sites["s"].note
    assert plan.sites["c"].note.startswith("Monte Carlo: no closed form for KL(Normal || Cauchy)")
    assert [t.key for t in plan.kl_terms] == [("kl", "z"), ("kl", "s")]
    assert {t.key for t in plan.terms} == {("guide", "c"), ("model", "c"), ("model", "x")}
    text = str(plan)
    assert "%z : f32[] = analytic_kl" in text
    assert "%s : KL(LogNormal || Gamma) by derived LogNormal||Gamma" in text
    assert "%c : Monte Carlo: no closed form" in text
    assert "- KL(q_z||p_z) - KL(q_s||p_s)" in text
    kl = sp.Function("KL")
    assert plan.objective.coeff(kl(sp.Symbol("q_z"), sp.Symbol("p_z"))) == -1
    assert plan.objective.coeff(kl(sp.Symbol("q_s"), sp.Symbol("p_s"))) == -1
    assert r"\operatorname{KL}{\left(q_{z},p_{z} \right)}" in plan.latex()


def test_trace_graph_plan_is_unchanged_by_the_option():
    """Without ``analytic_kl`` the pipeline decides exactly as before."""
    plan = sg.infer.TraceGraph_ELBO().compile(model_three, guide_three, torch.tensor(0.5))
    assert not plan.kl_terms and all(s.note == "" for s in plan.sites.values())


def hierarchical_model():
    mu = sg.sample("mu", dist.Normal(0.0, 1.0))
    sg.sample("theta", dist.Normal(mu, 1.0))


def hierarchical_guide():
    sg.sample("mu", dist.Normal(sg.param("a", torch.tensor(0.0)), 1.0))
    sg.sample("theta", dist.Normal(sg.param("b", torch.tensor(0.0)), 1.0))


def test_refuses_a_model_that_is_not_mean_field():
    with pytest.raises(MeanFieldError) as err:
        trace_plan(hierarchical_model, hierarchical_guide)
    e = err.value
    assert e.site == "theta"
    assert "depends on latent 'mu'" in str(e)
    assert "Trace_ELBO or TraceGraph_ELBO" in e.fix
    assert isinstance(e, sg.errors.SvigraphError)


def nonmf_model():
    sg.sample("u", dist.Bernoulli(0.3))
    sg.sample("v", dist.Normal(0.0, 1.0))
    sg.sample("w", dist.Normal(0.0, 1.0))


def nonmf_guide():
    qu = sg.param("qu", torch.tensor(0.6), constraint=sg.constraints.unit_interval)
    u = sg.sample("u", dist.Bernoulli(qu))
    sg.sample("v", dist.Normal(sg.param("m", torch.tensor(0.0)) + u, 1.0))
    sg.sample("w", dist.Normal(sg.param("n", torch.tensor(0.0)), 1.0))


def test_kl_term_of_a_site_whose_guide_reads_a_score_site_is_in_its_cost():
    plan = trace_plan(nonmf_model, nonmf_guide)
    assert plan.sites["v"].estimator == "analytic_kl"
    # u's guide and model terms are Monte Carlo (Bernoulli || Bernoulli is analytic too,
    # but u's own KL does not depend on u's value, so it is not in u's cost)
    assert plan.sites["u"].estimator == "analytic_kl"
    assert plan.sites["u"].cost == (("kl", "v"),)
    text = str(plan)
    assert "%u <- KL(q_v||p_v)" in text
    assert ("surrogate = -KL(q_u||p_u) - KL(q_v||p_v) - KL(q_w||p_w)"
            " + guide:u * stop(-KL(q_v||p_v))") in text


def test_kl_cost_sets_follow_parents_only():
    """Unit test on the pass: w reads nothing sampled, so no score site is charged its KL."""
    traced = sg.infer.TraceGraph_ELBO()
    plan = traced.compile(nonmf_model, nonmf_guide)
    graph = plan.graph
    kl_terms = (("kl", "v"), ("kl", "w"))
    out = kl_cost_sets(graph, {"u": ()}, kl_terms, (("u", "guide"),), downstream_only=True)
    assert out["u"] == (("kl", "v"),)
    out = kl_cost_sets(graph, {"u": ()}, kl_terms, (("u", "guide"),), downstream_only=False)
    assert out["u"] == kl_terms


def test_choices_cover_every_latent_and_skip_data():
    plan = sg.infer.TraceGraph_ELBO().compile(model_three, guide_three, torch.tensor(0.5))
    graph = plan.graph
    normal = ("dist", dist.Normal)
    pairs = {"z": (normal, normal), "s": (("dist", dist.LogNormal), ("dist", dist.Gamma)),
             "c": (normal, ("dist", dist.Cauchy))}
    choices = choose_analytic_kl(graph, assign_estimators(graph), pairs)
    assert sorted(choices) == ["c", "s", "z"]
    assert [n for n in sample_sites(graph) if n not in choices] == ["x"]
    assert choices["z"].analytic and not choices["c"].analytic
