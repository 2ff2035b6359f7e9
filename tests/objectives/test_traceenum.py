"""TraceEnum_ELBO (model-side parallel enumeration with plates): the loss equals the exact
log marginal by brute-force summation; gradients equal autograd of the brute force; what is
not supported yet is refused with a clear error. Guide-side, sequential and mixed
enumeration: test_traceenum_more.py; the error catalogue: test_traceenum_errors.py."""

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.constraints import positive
from svigraph.errors import EnumerationError
from svigraph.infer import TraceEnum_ELBO, config_enumerate
from tests.reference import brute_log_marginal

ENUM = {"enumerate": "parallel"}
x4 = torch.tensor([-2.0, 0.1, 3.0, 2.5])


def mixture(x):
    locs = sg.param("locs", torch.tensor([-2.0, 0.0, 3.0]))
    with sg.plate("data", len(x)):
        k = sg.sample("k", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])), infer=ENUM)
        sg.sample("obs", dist.Normal(locs[k], 1.0), obs=x)


def global_and_local(x):
    p = sg.param("p", torch.tensor(0.3), constraint=sg.constraints.unit_interval)
    z = sg.sample("z", dist.Bernoulli(p), infer=ENUM)
    with sg.plate("data", len(x)):
        w = sg.sample("w", dist.Bernoulli(0.2 + 0.6 * z), infer=ENUM)
        sg.sample("obs", dist.Normal(2.0 * w - z, 1.0), obs=x)


def chain(x):
    trans = sg.param("trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]]),
                     constraint=sg.constraints.simplex)
    z = sg.sample("z0", dist.Categorical(torch.tensor([0.5, 0.5])), infer=ENUM)
    sg.sample("x0", dist.Normal(3.0 * z, 1.0), obs=x[0])
    for t in range(1, len(x)):
        z = sg.sample(f"z{t}", dist.Categorical(trans[z]), infer=ENUM)
        sg.sample(f"x{t}", dist.Normal(3.0 * z, 1.0), obs=x[t])


def nested(x):
    with sg.plate("groups", 2, dim=-2):
        g = sg.sample("g", dist.Bernoulli(0.4), infer=ENUM)
        with sg.plate("items", 3, dim=-1):
            sg.sample("obs", dist.Normal(2.0 * g, 1.0), obs=x)


def no_guide(x):
    pass


CASES = [("mixture", mixture, x4), ("global_and_local", global_and_local, x4),
         ("chain", chain, torch.tensor([0.2, 2.9, 3.1, -0.3])),
         ("nested_plates", nested, torch.tensor([[0.1, -0.2, 0.3], [2.1, 1.8, 2.4]]))]


@pytest.mark.parametrize("name, model, data", CASES, ids=[c[0] for c in CASES])
def test_loss_and_gradient_equal_brute_force(name, model, data):
    elbo = TraceEnum_ELBO(max_plate_nesting=2)
    loss = elbo.differentiable_loss(model, no_guide, data)
    exact = brute_log_marginal(model, data)
    assert torch.allclose(-loss, exact, rtol=1e-5), (float(loss), float(exact))
    leaves = [leaf for _, leaf in sg.get_param_store().named_parameters()]
    if leaves:
        got = torch.autograd.grad(-loss, leaves)
        want = torch.autograd.grad(exact, leaves)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)


def test_pathwise_guide_with_enumeration_is_unbiased_given_the_draw():
    """A Normal latent from the guide plus an enumerated assignment: the loss equals the
    brute-force marginal of the discrete part, given the same draw, minus log q."""
    def model(x):
        loc = sg.sample("loc", dist.Normal(0.0, 3.0))
        with sg.plate("data", len(x)):
            k = sg.sample("k", dist.Bernoulli(0.5), infer=ENUM)
            sg.sample("obs", dist.Normal(loc + 3.0 * k, 1.0), obs=x)

    def guide(x):
        m = sg.param("m", torch.tensor(0.5))
        s = sg.param("s", torch.tensor(0.4), constraint=positive)
        sg.sample("loc", dist.Normal(m, s))

    sg.set_rng_seed(5)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x4)
    sg.set_rng_seed(5)
    guide_tr = sg.handlers.trace(guide).get_trace(x4)
    loc = guide_tr["loc"]["value"]
    conditioned = sg.handlers.condition(model, data={"loc": loc})
    exact = brute_log_marginal(conditioned, x4) - guide_tr["loc"]["fn"].log_prob(loc)
    assert torch.allclose(-loss, exact, rtol=1e-5)


def test_config_enumerate_and_printed_contraction():
    def model(x):
        with sg.plate("data", len(x)):
            k = sg.sample("k", dist.Categorical(torch.tensor([0.2, 0.8])))
            sg.sample("obs", dist.Normal(2.0 * k, 1.0), obs=x)

    enumerated = config_enumerate(model)
    plan = sg.compile(enumerated, no_guide, x4, loss=TraceEnum_ELBO(max_plate_nesting=1))
    text = str(plan)
    assert "%k   : i64[4] (data) = enumerate   model Categorical" in text
    assert "marg = sum_product[k](model:k, model:obs) over plates data" in text
    # the planned contraction itself: its step, opt_einsum equation, path and peak
    assert plan.contraction is not None
    assert "contraction: logsumexp k[2]; sum plates data[4] -> []" in text
    assert "= sum[data](logsumexp[k](model:k + model:obs))" in text
    assert f"peak {plan.contraction.peak_elements} elements" in text
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(enumerated, no_guide, x4)
    assert abs(-loss - float(brute_log_marginal(enumerated, x4))) < 1e-4


def _refused(model, guide, match, data=x4, **kwargs):
    with pytest.raises(EnumerationError, match=match) as info:
        TraceEnum_ELBO(max_plate_nesting=1, **kwargs).differentiable_loss(model, guide, data)
    assert "fix:" in str(info.value)


def test_refusals():
    def normal_enum(x):
        sg.sample("z", dist.Normal(0.0, 1.0), infer=ENUM)

    _refused(normal_enum, no_guide, "no finite support")

    def reads_value(x):
        z = sg.sample("z", dist.Bernoulli(0.5), infer=ENUM)
        if z.sum() > 0:
            pass
        sg.sample("obs", dist.Normal(z, 1.0), obs=x[0])

    _refused(reads_value, no_guide, "read into Python")

    # subsampled plates with enumeration: supported, tests/objectives/test_enum_subsample.py


def test_needs_max_plate_nesting():
    with pytest.raises(ValueError, match="max_plate_nesting"):
        TraceEnum_ELBO()


K = 3


def hmm(xs):
    """K hidden states, a plate of sequences, markov over time steps."""
    trans = sg.param("trans", torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]),
                     constraint=sg.constraints.simplex)
    locs = sg.param("locs", torch.tensor([-2.0, 0.0, 2.0]))
    with sg.plate("seqs", xs.shape[1], dim=-1):
        z = 0
        for t in sg.markov(range(xs.shape[0])):
            z = sg.sample(f"z{t}", dist.Categorical(trans[z]), infer=ENUM)
            sg.sample(f"x{t}", dist.Normal(locs[z], 1.0), obs=xs[t])


def forward_algorithm(xs):
    """Hand-written log-space forward recursion, summed over sequences."""
    trans, locs = sg.param("trans"), sg.param("locs")
    log_trans = trans.log()
    emit = torch.distributions.Normal(locs[:, None, None], 1.0).log_prob(xs)  # (K, T, S)
    alpha = log_trans[0][:, None] + emit[:, 0]                               # (K, S)
    for t in range(1, xs.shape[0]):
        alpha = torch.logsumexp(alpha[:, None] + log_trans[:, :, None], 0) + emit[:, t]
    return torch.logsumexp(alpha, 0).sum()


@pytest.mark.parametrize("steps", [1, 2, 50])
def test_hmm_equals_forward_algorithm(steps):
    xs = torch.randn(steps, 4) * 2
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(hmm, no_guide, xs)
    exact = forward_algorithm(xs)
    assert torch.allclose(-loss, exact, rtol=1e-5), (float(loss), float(exact))
    leaves = [leaf for _, leaf in sg.get_param_store().named_parameters()]
    for g, w in zip(torch.autograd.grad(-loss, leaves), torch.autograd.grad(exact, leaves)):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5)


def test_hmm_equals_brute_force():
    xs = torch.tensor([[0.3, -1.9], [2.2, 0.1], [1.8, -0.2]])
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(hmm, no_guide, xs)
    assert torch.allclose(-loss, brute_log_marginal(hmm, xs), rtol=1e-5)


def test_markov_reuses_enumeration_dims():
    """history=1: values alternate between two dims, so memory is linear in T."""
    xs = torch.randn(6, 2)
    tr = sg.handlers.trace(sg.handlers.enum(hmm, first_available_dim=-2)).get_trace(xs)
    shapes = [tuple(tr[f"z{t}"]["value"].shape) for t in range(6)]
    assert shapes == [(K, 1), (K, 1, 1)] * 3
    assert max(tr[f"x{t}"]["fn"].batch_shape.numel() for t in range(6)) <= K * 2
