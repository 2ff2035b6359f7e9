"""TraceEnum_ELBO with subsampled plates and scales: the loss equals explicit formulas.

A subsampled plate of size N with n slices drawn scales the product over the plate by
N / n where the contraction reduces the plate: inside the logsumexp of every enumerated
variable outside the plate, outside those of the variables inside it. So for variables local
to the plate the loss is an unbiased estimate of the full-data loss (checked exactly, by
averaging over every subsample), and for a global variable it is the scaled estimate
``logsumexp_z(log p(z) + N/n * sum_{i in S} log p(x_i | z))``. A scale no plate explains
(``handlers.scale``) multiplies the log of the whole sum.
"""

import itertools
import math

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.errors import EnumerationError
from svigraph.infer import TraceEnum_ELBO

ENUM = {"enumerate": "parallel"}
X = torch.tensor([-2.0, 0.1, 3.0, 2.5, -0.7])
WEIGHTS = torch.tensor([0.2, 0.3, 0.5])
LOCS = torch.tensor([-2.0, 0.0, 3.0])


def no_guide(*args):
    pass


def loss_of(model, *args, nesting=1):
    return TraceEnum_ELBO(max_plate_nesting=nesting).differentiable_loss(model, no_guide, *args)


def value_of(model, *args, nesting=1):
    """The log marginal estimate (-loss) as a float."""
    return -float(loss_of(model, *args, nesting=nesting).detach())


def normal_lp(x, loc):
    return torch.distributions.Normal(loc, 1.0).log_prob(x)


def mixture(idx):
    locs = sg.param("locs", LOCS.clone())
    with sg.plate("data", len(X), subsample=idx) as i:
        k = sg.sample("k", dist.Categorical(WEIGHTS), infer=ENUM)
        sg.sample("obs", dist.Normal(locs[k], 1.0), obs=X[i])


def mixture_formula(idx, locs):
    per_point = torch.logsumexp(WEIGHTS.log()[:, None] + normal_lp(X[idx], locs[:, None]), 0)
    return len(X) / len(idx) * per_point.sum()


@pytest.mark.parametrize("idx", [[1, 3], [4], [0, 2, 4], [0, 1, 2, 3, 4]])
def test_local_variable_in_a_subsampled_plate(idx):
    """Each point's k is summed out per slice, then the slice sum is scaled by N/n."""
    idx = torch.tensor(idx)
    loss = loss_of(mixture, idx)
    locs = sg.param("locs")
    expected = mixture_formula(idx, locs)
    assert torch.allclose(-loss, expected, rtol=1e-6)
    leaf = locs.unconstrained()
    got, = torch.autograd.grad(-loss, leaf)
    want, = torch.autograd.grad(expected, leaf)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


def test_local_variables_give_an_unbiased_estimate():
    """Averaged over every subsample of size 2, the loss is the full-data loss exactly."""
    full = value_of(mixture, torch.arange(len(X)))
    losses = [value_of(mixture, torch.tensor(s))
              for s in itertools.combinations(range(len(X)), 2)]
    assert sum(losses) / len(losses) == pytest.approx(full, rel=1e-6)
    assert min(losses) < full - 1.0 < full + 1.0 < max(losses)  # the subsamples do differ


def global_and_local(idx):
    p = sg.param("p", torch.tensor(0.3), constraint=sg.constraints.unit_interval)
    z = sg.sample("z", dist.Bernoulli(p), infer=ENUM)
    with sg.plate("data", len(X), subsample=idx) as i:
        w = sg.sample("w", dist.Bernoulli(0.2 + 0.6 * z), infer=ENUM)
        sg.sample("obs", dist.Normal(2.0 * w - z, 1.0), obs=X[i])


def test_global_variable_over_a_subsampled_plate():
    """logsumexp_z(log p(z) + N/n * sum_{i in S} logsumexp_w log p(w | z) p(x_i | w, z))."""
    idx = torch.tensor([0, 3])
    got = value_of(global_and_local, idx)
    p = float(sg.param("p").detach())
    terms = []
    for z in (0.0, 1.0):
        pw = 0.2 + 0.6 * z
        per_point = [math.log(sum((pw if w else 1 - pw) * math.exp(float(normal_lp(X[i], 2 * w - z)))
                                  for w in (0, 1))) for i in idx.tolist()]
        terms.append(math.log(p if z else 1 - p) + len(X) / len(idx) * sum(per_point))
    expected = max(terms) + math.log(sum(math.exp(t - max(terms)) for t in terms))
    assert got == pytest.approx(expected, rel=1e-6)


def nested(idx_outer, idx_inner, data):
    """groups (dim -2, subsampled) hold g; items (dim -1, subsampled) inside hold h."""
    with sg.plate("groups", data.shape[0], subsample=idx_outer, dim=-2) as gi:
        g = sg.sample("g", dist.Bernoulli(0.4), infer=ENUM)
        with sg.plate("items", data.shape[1], subsample=idx_inner, dim=-1) as ii:
            h = sg.sample("h", dist.Bernoulli(0.3 + 0.4 * g), infer=ENUM)
            sg.sample("obs", dist.Normal(2.0 * h + g, 1.0), obs=data[gi][:, ii])


def test_nested_subsampled_plates_scale_at_each_level():
    data = torch.tensor([[0.1, -0.2, 0.3, 2.0], [2.1, 1.8, 2.4, -1.0], [0.5, 0.0, 1.0, 3.0]])
    outer, inner = torch.tensor([0, 2]), torch.tensor([1, 2, 3])
    got = value_of(nested, outer, inner, data, nesting=2)
    s_outer, s_inner = 3 / 2, 4 / 3
    total = 0.0
    for gi in outer.tolist():
        per_g = []
        for g in (0, 1):
            inside = 0.0
            for ii in inner.tolist():
                ph = 0.3 + 0.4 * g
                inside += math.log(sum((ph if h else 1 - ph)
                                       * math.exp(float(normal_lp(data[gi, ii], 2 * h + g)))
                                       for h in (0, 1)))
            per_g.append(math.log(0.6 if g == 0 else 0.4) + s_inner * inside)
        total += math.log(sum(math.exp(v) for v in per_g))
    assert got == pytest.approx(s_outer * total, rel=1e-6)


K = 3


def hmm(xs, idx):
    trans = sg.param("trans", torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]),
                     constraint=sg.constraints.simplex)
    locs = sg.param("locs", torch.tensor([-2.0, 0.0, 2.0]))
    with sg.plate("seqs", xs.shape[1], subsample=idx, dim=-1) as s:
        z = 0
        for t in sg.markov(range(xs.shape[0])):
            z = sg.sample(f"z{t}", dist.Categorical(trans[z]), infer=ENUM)
            sg.sample(f"x{t}", dist.Normal(locs[z], 1.0), obs=xs[t, s])


def forward_algorithm(xs, trans, locs):
    """log p(x) per sequence by the hand-written log-space forward recursion."""
    log_trans = trans.log()
    emit = normal_lp(xs, locs[:, None, None])            # (K, T, S)
    alpha = log_trans[0][:, None] + emit[:, 0]
    for t in range(1, xs.shape[0]):
        alpha = torch.logsumexp(alpha[:, None] + log_trans[:, :, None], 0) + emit[:, t]
    return torch.logsumexp(alpha, 0)


@pytest.mark.parametrize("steps", [3, 40])  # 40 steps: the chain is contracted by a scan
def test_hmm_with_subsampled_sequences(steps):
    """N/n times the forward log-likelihood of the chosen sequences; gradients too."""
    gen = torch.Generator().manual_seed(3)
    xs = torch.randn(steps, 6, generator=gen) * 2
    idx = torch.tensor([1, 4])
    loss = loss_of(hmm, xs, idx)
    trans, locs = sg.param("trans"), sg.param("locs")
    expected = 6 / 2 * forward_algorithm(xs[:, idx], trans, locs).sum()
    assert torch.allclose(-loss, expected, rtol=1e-5)
    leaves = [trans.unconstrained(), locs.unconstrained()]
    for g, w in zip(torch.autograd.grad(-loss, leaves), torch.autograd.grad(expected, leaves)):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5)


def test_handlers_scale_multiplies_the_log_marginal():
    """A common scale (no plate explains it) multiplies the log of the sum: 0.1 log p(x)."""
    idx = torch.arange(len(X))
    scaled = sg.handlers.scale(mixture, scale=0.1)
    assert value_of(scaled, idx) == pytest.approx(0.1 * float(mixture_formula(idx, LOCS)),
                                                  rel=1e-6)
    both = sg.handlers.scale(mixture, scale=0.5)   # with a subsampled plate inside
    sub = torch.tensor([0, 2])
    assert value_of(both, sub) == pytest.approx(0.5 * float(mixture_formula(sub, LOCS)),
                                                rel=1e-6)


def test_different_scales_on_one_sum_are_refused():
    def model(idx):
        with sg.plate("data", len(X)):
            k = sg.sample("k", dist.Categorical(WEIGHTS), infer=ENUM)
            with sg.handlers.scale(scale=0.5):
                sg.sample("obs", dist.Normal(LOCS[k], 1.0), obs=X)

    with pytest.raises(EnumerationError, match="different scales") as info:
        loss_of(model, None)
    message = str(info.value)
    assert "model:obs (scale 0.5)" in message and "fix:" in message


def test_masks_act_inside_the_sum():
    """A masked observation's factor is 0 inside the logsumexp (its point then contributes
    logsumexp_k log w_k = 0), and the plate's scale still multiplies the slice sum."""
    keep = torch.tensor([True, False, True])

    def model(idx):
        with sg.plate("data", len(X), subsample=idx) as i:
            k = sg.sample("k", dist.Categorical(WEIGHTS), infer=ENUM)
            with sg.handlers.mask(mask=keep):
                sg.sample("obs", dist.Normal(LOCS[k], 1.0), obs=X[i])

    idx = torch.tensor([0, 1, 4])
    expected = len(X) / len(idx) * float(
        torch.logsumexp(WEIGHTS.log()[:, None] + normal_lp(X[idx[keep]], LOCS[:, None]), 0).sum())
    assert value_of(model, idx) == pytest.approx(expected, rel=1e-6)
