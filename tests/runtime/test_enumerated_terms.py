"""An enumerated Categorical's log density is read off its logits (runtime.terms), with
the values and gradients of torch's ``log_prob``, which gathers."""

import pytest
import torch

import svigraph as sg
from runtime.support import enumerated_support
from runtime.terms import enumerated_categorical_log_prob
from svigraph import distributions as dist
from svigraph.infer import TraceEnum_ELBO


@pytest.mark.parametrize("batch, dim", [((), -1), ((), -2), ((), -4), ((3,), -2), ((4, 1, 3), -2),
                                        ((4, 1, 3), -4), ((2, 1, 1, 3), -3)])
def test_equals_torch_log_prob(batch, dim):
    logits = torch.randn(batch + (5,), dtype=torch.float64, requires_grad=True)
    fn = dist.Categorical(logits=logits)
    site = {"fn": fn, "value": enumerated_support(fn, dim), "enum_dim": dim, "name": "z"}
    got = enumerated_categorical_log_prob(site, fn)
    expected = fn.log_prob(site["value"])
    assert got is not None and got.shape == expected.shape
    assert torch.equal(got, expected)
    weights = torch.randn(expected.shape, dtype=torch.float64)
    g_got, = torch.autograd.grad((got * weights).sum(), logits, retain_graph=True)
    g_exp, = torch.autograd.grad((expected * weights).sum(), logits)
    assert torch.allclose(g_got, g_exp, rtol=1e-12)


def test_other_sites_take_torchs_path():
    fn = dist.Categorical(logits=torch.randn(3, 5))
    value = torch.arange(5).reshape(5, 1)
    assert enumerated_categorical_log_prob({"fn": fn, "value": value, "enum_dim": -2}, fn) \
        is None  # not the enumeration's own support tensor
    assert enumerated_categorical_log_prob({"fn": fn, "value": value}, fn) is None
    bern = dist.Bernoulli(logits=torch.randn(3))
    site = {"fn": bern, "value": enumerated_support(bern, -2), "enum_dim": -2}
    assert enumerated_categorical_log_prob(site, bern) is None


def test_plated_mixture_loss_equals_torchs_path(monkeypatch):
    """Through a plate (the site's distribution expanded) and a contraction: the loss and
    gradients equal those of torch's gather."""
    import runtime.terms as terms

    def model(x):
        w = sg.param("w", torch.tensor([0.2, 0.3, 0.5]), constraint=sg.constraints.simplex)
        locs = sg.param("locs", torch.tensor([-1.0, 0.0, 2.0]))
        with sg.plate("data", len(x)):
            z = sg.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
            sg.sample("x", dist.Normal(locs[z], 1.0), obs=x)

    x = torch.tensor([0.1, -1.3, 2.2, 0.4])

    def loss_and_grads():
        sg.clear_param_store()
        elbo = TraceEnum_ELBO(max_plate_nesting=1)
        for _ in range(2):  # the second step runs unchecked
            loss = elbo.differentiable_loss(model, lambda x: None, x)
        leaves = elbo.param_leaves()
        return loss.detach(), torch.autograd.grad(loss, leaves)

    calls = []
    real = terms.enumerated_categorical_log_prob

    def counting(site, fn):
        out = real(site, fn)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(terms, "enumerated_categorical_log_prob", counting)
    fast = loss_and_grads()
    assert any(calls)
    monkeypatch.setattr(terms, "enumerated_categorical_log_prob", lambda site, fn: None)
    slow = loss_and_grads()
    assert torch.equal(fast[0], slow[0])
    for a, b in zip(fast[1], slow[1]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
