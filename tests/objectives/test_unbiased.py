"""Unbiasedness: the mean of many single-sample gradients of ``differentiable_loss`` equals
the exact ELBO gradient (summing over every guide configuration, or analytic), within 4
standard errors. Seeds fixed by conftest; N chosen so each test runs in a few seconds."""

import math

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.constraints import positive, unit_interval
from svigraph.infer import Trace_ELBO, TraceGraph_ELBO
from tests.models import PLATED_DATA, plated_guide, plated_model
from tests.reference import exact_grads, mean_grads

ELBOS = [Trace_ELBO, TraceGraph_ELBO]
N = 3000


def assert_unbiased(model, guide, params, elbo, *args, n=N):
    exact_value, exact = exact_grads(model, guide, params, *args)
    estimates, (value, value_se) = mean_grads(elbo.differentiable_loss, model, guide, params, n,
                                              *args)
    for name in params:
        mean, se = estimates[name]
        err = (mean - exact[name]).abs()
        assert torch.all(err <= 4 * se + 1e-6), (name, mean, exact[name], se)
    assert abs(value - exact_value) <= 4 * value_se + 1e-6, (value, exact_value, value_se)


data = PLATED_DATA


@pytest.mark.parametrize("elbo", ELBOS)
def test_score_function_with_plate(elbo):
    """Discrete guide (all score function), a global site and a plate of local ones."""
    assert_unbiased(plated_model, plated_guide, ["qz", "qw"], elbo(), data)


def test_reference_matches_hand_enumeration():
    """The brute-force helper agrees with a fully hand-written sum for the plated model."""
    plated_guide(data)
    qz, qw = sg.param("qz"), sg.param("qw")
    total = 0.0
    for z in (0.0, 1.0):
        pz = 0.3 if z else 0.7
        qz_ = qz if z else 1 - qz
        for w0 in (0.0, 1.0):
            for w1 in (0.0, 1.0):
                for w2 in (0.0, 1.0):
                    w = torch.tensor([w0, w1, w2])
                    pw = torch.where(w > 0, 0.2 + 0.6 * z, 1 - (0.2 + 0.6 * z))
                    qwp = qw * (0.5 + 0.5 * z)
                    qw_ = torch.where(w > 0, qwp, 1 - qwp)
                    px = 0.15 + 0.7 * w
                    lx = torch.where(data > 0, px, 1 - px).log().sum()
                    log_p = math.log(pz) + pw.log().sum() + lx
                    log_q = qz_.log() + qw_.log().sum()
                    total = total + log_q.exp() * (log_p - log_q)
    from tests.reference import exact_elbo
    assert torch.allclose(exact_elbo(plated_model, plated_guide, data), total, atol=1e-5)


def gauss_model(data):
    y = sg.sample("y", dist.Normal(0.0, 1.0))
    with sg.plate("data", len(data)):
        sg.sample("x", dist.Normal(y, 1.0), obs=data)


def gauss_guide(data):
    m = sg.param("m", torch.tensor(0.3))
    s = sg.param("s", torch.tensor(0.8), constraint=positive)
    sg.sample("y", dist.Normal(m, s))


def _expected_log_normal(m, s, mu, sigma):
    """E[log N(y; mu, sigma^2)] for y ~ N(m, s^2)."""
    return -0.5 * math.log(2 * math.pi) - torch.log(torch.as_tensor(sigma)) \
        - ((m - mu) ** 2 + s ** 2) / (2 * torch.as_tensor(sigma) ** 2)


@pytest.mark.parametrize("elbo", ELBOS)
@pytest.mark.parametrize("rsample", [True, False], ids=["pathwise", "score_function"])
def test_gaussian_pathwise_and_score_function(elbo, rsample):
    """Continuous guide: exact ELBO in closed form; both estimators are unbiased."""
    xs = torch.tensor([0.5, 1.5])

    def guide(data):
        m = sg.param("m", torch.tensor(0.3))
        s = sg.param("s", torch.tensor(0.8), constraint=positive)
        sg.sample("y", dist.Normal(m, s).with_rsample(rsample))

    guide(xs)
    m, s = sg.param("m"), sg.param("s")
    exact = (_expected_log_normal(m, s, 0.0, 1.0)
             + sum(_expected_log_normal(m, s, float(x), 1.0) for x in xs)
             + 0.5 * torch.log(2 * math.pi * math.e * s ** 2))
    leaves = [m.unconstrained(), s.unconstrained()]
    exact_g = torch.autograd.grad(exact, leaves)
    estimates, (value, se) = mean_grads(elbo().differentiable_loss, gauss_model, guide,
                                        ["m", "s"], 4000 if rsample else 8000, xs)
    for name, g in zip(["m", "s"], exact_g):
        mean, err = estimates[name]
        assert abs(float(mean - g)) <= 4 * float(err) + 1e-6, (name, mean, g, err)
    assert abs(value - float(exact.detach())) <= 4 * se


@pytest.mark.parametrize("elbo", ELBOS)
def test_mixed_guide(elbo):
    """A discrete score-function site and a pathwise site that depends on it."""
    x = torch.tensor(0.7)

    def model(x):
        z = sg.sample("z", dist.Bernoulli(0.4))
        y = sg.sample("y", dist.Normal(2 * z - 1, 1.0))
        sg.sample("x", dist.Normal(y, 0.5), obs=x)

    def guide(x):
        qz = sg.param("qz", torch.tensor(0.5), constraint=unit_interval)
        m = sg.param("m", torch.tensor([-0.5, 0.5]))
        s = sg.param("s", torch.tensor(0.7), constraint=positive)
        z = sg.sample("z", dist.Bernoulli(qz))
        sg.sample("y", dist.Normal(m[0] + (m[1] - m[0]) * z, s))

    guide(x)
    qz, m, s = sg.param("qz"), sg.param("m"), sg.param("s")
    exact = 0.0
    for z in (0.0, 1.0):
        q = qz if z else 1 - qz
        mz = m[0] + (m[1] - m[0]) * z
        inner = (math.log(0.4 if z else 0.6) - torch.log(q)
                 + _expected_log_normal(mz, s, 2 * z - 1, 1.0)
                 + _expected_log_normal(mz, s, float(x), 0.5)
                 + 0.5 * torch.log(2 * math.pi * math.e * s ** 2))
        exact = exact + q * inner
    names = ["qz", "m", "s"]
    leaves = [sg.param(n).unconstrained() for n in names]
    exact_g = dict(zip(names, torch.autograd.grad(exact, leaves)))
    estimates, _ = mean_grads(elbo().differentiable_loss, model, guide, names, 6000, x)
    for name in names:
        mean, se = estimates[name]
        assert torch.all((mean - exact_g[name]).abs() <= 4 * se + 1e-6), (name, mean,
                                                                          exact_g[name], se)


def branching_model(data):
    z = sg.sample("z", dist.Bernoulli(0.5))
    p = torch.tensor(0.5)
    if z.item() == 1:
        w = sg.sample("w", dist.Bernoulli(0.7))
        p = 0.1 + 0.8 * w
    sg.sample("x", dist.Bernoulli(p), obs=data)


def branching_guide(data):
    qz = sg.param("qz", torch.tensor(0.4), constraint=unit_interval)
    qw = sg.param("qw", torch.tensor(0.6), constraint=unit_interval)
    z = sg.sample("z", dist.Bernoulli(qz))
    if z.item() == 1:
        sg.sample("w", dist.Bernoulli(qw))


@pytest.mark.parametrize("elbo", ELBOS)
def test_site_set_depends_on_sampled_value(elbo):
    """Which sites exist depends on z: two structures, two plans, still unbiased."""
    loss = elbo()
    assert_unbiased(branching_model, branching_guide, ["qz", "qw"], loss, torch.tensor(1.0))
    assert len(loss._cache(branching_model, branching_guide)) == 2


def subsampled_model(data):
    with sg.plate("data", 4, subsample_size=2) as idx:
        w = sg.sample("w", dist.Bernoulli(0.3))
        sg.sample("x", dist.Bernoulli(0.2 + 0.6 * w), obs=data[idx])


def subsampled_guide(data):
    qw = sg.param("qw", torch.tensor([0.2, 0.4, 0.6, 0.8]), constraint=unit_interval)
    with sg.plate("data", 4, subsample_size=2) as idx:
        sg.sample("w", dist.Bernoulli(qw[idx]))


def full_model(data):
    with sg.plate("data", 4):
        w = sg.sample("w", dist.Bernoulli(0.3))
        sg.sample("x", dist.Bernoulli(0.2 + 0.6 * w), obs=data)


def full_guide(data):
    qw = sg.param("qw", torch.tensor([0.2, 0.4, 0.6, 0.8]), constraint=unit_interval)
    with sg.plate("data", 4):
        sg.sample("w", dist.Bernoulli(qw))


@pytest.mark.parametrize("elbo", ELBOS)
def test_subsampled_score_function_scaled_once(elbo):
    """Subsampling a plate with a non-reparameterized site: the expected gradient over
    subsamples equals the full-data exact gradient, so the scale size/subsample_size is
    applied once per term (applying it to the score too would double the score part)."""
    xs = torch.tensor([1.0, 0.0, 0.0, 1.0])
    exact_value, exact = exact_grads(full_model, full_guide, ["qw"], xs)
    estimates, (value, value_se) = mean_grads(elbo().differentiable_loss, subsampled_model,
                                              subsampled_guide, ["qw"], 6000, xs)
    mean, se = estimates["qw"]
    assert torch.all((mean - exact["qw"]).abs() <= 4 * se + 1e-6), (mean, exact["qw"], se)
    assert abs(value - exact_value) <= 4 * value_se
