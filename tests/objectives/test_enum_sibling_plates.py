"""TraceEnum_ELBO with sibling plates that share a dim (both at dim -1, one after the other),
enumerated sites in each: the loss and its gradients equal exact formulas.

Regression: the log-prob tensors were labelled by one plate-name -> dim table for the whole
model, inverted by dim, so every dim -1 was read as whichever plate came last. With plates of
different sizes the contraction failed on a shape mismatch; with equal sizes it silently
summed the wrong thing (a factor of the first plate was taken to vary along the second,
nested inside the first's plates: a loss of 159 where the exact one is 74). A factor's dims
are now labelled only by the plates its own site lives in (model-side contraction and the
guide-side expectation alike).
"""

import math

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.infer import TraceEnum_ELBO

ENUM = {"enumerate": "parallel"}
P_A = torch.tensor([0.35, 0.65])
P_C = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])   # c | a
P_D = torch.tensor([[0.7, 0.3], [0.25, 0.75]])            # d | a


def normal_lp(x, loc, scale=1.0):
    return torch.distributions.Normal(loc, scale).log_prob(x)


def model(x, y, nested=None):
    """Global a; plate p1 (dim -1): c | a, x | c, a; sibling plate p2 (dim -1): d | a, y | d, a.
    With ``nested`` (a (G, len(x)) tensor): plate g (dim -2) around p1 with b | a per group."""
    locs = sg.param("locs", torch.tensor([[-1.5, 0.5], [2.0, -0.3], [0.8, 1.7]]))
    a = sg.sample("a", dist.Categorical(P_A), infer=ENUM)
    if nested is None:
        with sg.plate("p1", len(x), dim=-1):
            c = sg.sample("c", dist.Categorical(P_C[a]), infer=ENUM)
            sg.sample("x", dist.Normal(locs[c, a], 1.0), obs=x)
    else:
        with sg.plate("g", nested.shape[0], dim=-2):
            b = sg.sample("b", dist.Bernoulli(0.3 + 0.4 * a), infer=ENUM)
            with sg.plate("p1", nested.shape[1], dim=-1):
                c = sg.sample("c", dist.Categorical(P_C[a]), infer=ENUM)
                sg.sample("x", dist.Normal(locs[c, a] + b, 1.0), obs=nested)
    with sg.plate("p2", len(y), dim=-1):
        d = sg.sample("d", dist.Categorical(P_D[a]), infer=ENUM)
        sg.sample("y", dist.Normal(locs[d, a], 1.5), obs=y)


def per_a(x, y, locs, nested=None):
    """log p(x, y | a) for each value of a, every local variable summed out by hand."""
    out = []
    for a in range(2):
        lp_d = P_D[a].log()[:, None] + normal_lp(y, locs[:2, a, None], 1.5)   # (d, j)
        total = torch.logsumexp(lp_d, 0).sum()
        lp_c_prior = P_C[a].log()
        if nested is None:
            lp_c = lp_c_prior[:, None] + normal_lp(x, locs[:, a, None])       # (c, i)
            total = total + torch.logsumexp(lp_c, 0).sum()
        else:
            p_b = 0.3 + 0.4 * a
            for row in nested:
                per_b = []
                for b, lp_b in ((0, math.log(1 - p_b)), (1, math.log(p_b))):
                    lp_c = lp_c_prior[:, None] + normal_lp(row, locs[:, a, None] + b)
                    per_b.append(lp_b + torch.logsumexp(lp_c, 0).sum())
                total = total + torch.logsumexp(torch.stack(per_b), 0)
        out.append(total)
    return torch.stack(out)


def check(loss, expected):
    leaf = sg.param("locs").unconstrained()
    assert torch.allclose(loss, expected, rtol=1e-6), (float(loss), float(expected))
    got, = torch.autograd.grad(loss, leaf, retain_graph=True)
    want, = torch.autograd.grad(expected, leaf, retain_graph=True)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)


X3 = torch.tensor([-2.0, 0.4, 1.9])
Y5 = torch.tensor([0.3, -1.1, 2.2, 0.7, -0.4])
Y3 = torch.tensor([0.3, -1.1, 2.2])


@pytest.mark.parametrize("y", [Y5, Y3], ids=["sizes 3 and 5", "equal sizes"])
def test_model_enumeration_in_sibling_plates_sharing_a_dim(y):
    sg.clear_param_store()
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, lambda *a: None, X3, y)
    locs = sg.param("locs")
    expected = -torch.logsumexp(P_A.log() + per_a(X3, y, locs), 0)
    check(loss, expected)


@pytest.mark.parametrize("y", [Y5, torch.tensor([0.3, -1.1, 2.2, 0.7])],
                         ids=["sizes 4 and 5", "equal sizes"])
def test_sibling_plate_beside_nested_plates(y):
    """p1 inside g (dims -2, -1) beside p2 (dim -1): the case the crosscheck found (a loss of
    159 instead of 74 when p1 and p2 had the same size)."""
    grid = torch.tensor([[0.5, -1.0, 2.5, 0.1], [1.2, 0.3, -0.7, 2.0]])
    sg.clear_param_store()
    loss = TraceEnum_ELBO(max_plate_nesting=2).differentiable_loss(
        model, lambda *a, **k: None, X3, y, nested=grid)
    locs = sg.param("locs")
    expected = -torch.logsumexp(P_A.log() + per_a(X3, y, locs, nested=grid), 0)
    check(loss, expected)


def guide(x, y):
    q = sg.param("q", torch.tensor([0.45, 0.55]), constraint=sg.constraints.simplex)
    sg.sample("a", dist.Categorical(q), infer=ENUM)


@pytest.mark.parametrize("y", [Y5, Y3], ids=["sizes 3 and 5", "equal sizes"])
def test_guide_enumerated_global_over_sibling_plates(y):
    """The guide enumerates a; the model sums c and d out per plate: ELBO = E_q(a)[...]."""
    sg.clear_param_store()
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, X3, y)
    locs, q = sg.param("locs"), sg.param("q")
    expected = -(q * (P_A.log() - q.log() + per_a(X3, y, locs))).sum()
    check(loss, expected)
    got, = torch.autograd.grad(loss, q.unconstrained())
    want, = torch.autograd.grad(expected, q.unconstrained())
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)


def local_model(x, y):
    locs = sg.param("locs", torch.tensor([-1.0, 2.0]))
    with sg.plate("p1", len(x), dim=-1):
        a = sg.sample("a", dist.Categorical(P_A))
        sg.sample("x", dist.Normal(locs[a], 1.0), obs=x)
    with sg.plate("p2", len(y), dim=-1):
        b = sg.sample("b", dist.Categorical(P_A.flip(0)))
        sg.sample("y", dist.Normal(locs[b], 1.5), obs=y)


def local_guide(x, y):
    qa = sg.param("qa", torch.linspace(0.2, 0.8, len(x)))
    qb = sg.param("qb", torch.linspace(0.9, 0.1, len(y)))
    with sg.plate("p1", len(x), dim=-1):
        sg.sample("a", dist.Categorical(torch.stack([1 - qa, qa], -1)), infer=ENUM)
    with sg.plate("p2", len(y), dim=-1):
        sg.sample("b", dist.Categorical(torch.stack([1 - qb, qb], -1)), infer=ENUM)


@pytest.mark.parametrize("y", [Y5, Y3], ids=["sizes 3 and 5", "equal sizes"])
def test_guide_enumerated_locals_in_sibling_plates(y):
    """Each plate's guide weights meet only that plate's costs (the expectation's labels)."""
    sg.clear_param_store()
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(local_model, local_guide,
                                                                   X3, y)
    locs = sg.param("locs")
    qa, qb = sg.param("qa"), sg.param("qb")
    expected = 0.0
    for data, q1, prior, scale in ((X3, qa, P_A, 1.0), (y, qb, P_A.flip(0), 1.5)):
        q = torch.stack([1 - q1, q1], -1)                                    # (i, k)
        inner = prior.log() - q.log() + normal_lp(data[:, None], locs, scale)
        expected = expected - (q * inner).sum()
    leaves = [locs.unconstrained(), qa.unconstrained(), qb.unconstrained()]
    assert torch.allclose(loss, expected, rtol=1e-6), (float(loss), float(expected))
    for got, want in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(expected, leaves)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)


def mixed_model(x, y):
    """Guide-enumerated a and model-enumerated c | a in plate p1, then a sibling plate p2 at
    the same dim: the contraction's result over (a, p1) meets the weights q(a) over (a, p1)."""
    locs = sg.param("locs", torch.tensor([[-1.5, 0.5], [2.0, -0.3], [0.8, 1.7]]))
    with sg.plate("p1", len(x), dim=-1):
        a = sg.sample("a", dist.Categorical(P_A))
        c = sg.sample("c", dist.Categorical(P_C[a]), infer=ENUM)
        sg.sample("x", dist.Normal(locs[c, a], 1.0), obs=x)
    with sg.plate("p2", len(y), dim=-1):
        sg.sample("y", dist.Normal(locs[0, 1], 1.5), obs=y)


def mixed_guide(x, y):
    qa = sg.param("qa", torch.linspace(0.2, 0.8, len(x)))
    with sg.plate("p1", len(x), dim=-1):
        sg.sample("a", dist.Categorical(torch.stack([1 - qa, qa], -1)), infer=ENUM)


@pytest.mark.parametrize("y", [Y5, Y3], ids=["sizes 3 and 5", "equal sizes"])
def test_guide_and_model_enumeration_in_a_plate_beside_a_sibling(y):
    sg.clear_param_store()
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(mixed_model, mixed_guide,
                                                                   X3, y)
    locs, qa = sg.param("locs"), sg.param("qa")
    q = torch.stack([1 - qa, qa], -1)                                          # (i, a)
    lp_x = torch.stack([torch.logsumexp(P_C[a].log()[:, None]
                                        + normal_lp(X3, locs[:, a, None]), 0)
                        for a in range(2)], -1)                                # (i, a)
    expected = -((q * (P_A.log() - q.log() + lp_x)).sum() + normal_lp(y, locs[0, 1], 1.5).sum())
    leaves = [locs.unconstrained(), qa.unconstrained()]
    assert torch.allclose(loss, expected, rtol=1e-6), (float(loss), float(expected))
    for got, want in zip(torch.autograd.grad(loss, leaves), torch.autograd.grad(expected, leaves)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-8)
