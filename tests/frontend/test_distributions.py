"""Tests for svigraph.distributions: torch subclasses plus the mixin, Delta, masking."""

import math

import pytest
import torch
import torch.distributions as tdist

import svigraph.distributions as dist
from svigraph.distributions import TorchDistributionMixin

T = torch.tensor


def _mixture(d):
    return d.MixtureSameFamily(
        d.Categorical(T([[0.3, 0.7], [0.5, 0.5]])),
        d.Normal(T([[0.0, 2.0], [-1.0, 1.0]]), T([[1.0, 0.5], [1.0, 2.0]])),
    )


# name -> builder taking a module (svigraph.distributions or torch.distributions), so the
# same parameters build our distribution and its torch twin.
FAMILIES = {
    "Normal": lambda d: d.Normal(T([0.0, 1.0]), T([1.0, 2.0])),
    "LogNormal": lambda d: d.LogNormal(T([0.0, 1.0]), T([1.0, 0.5])),
    "Beta": lambda d: d.Beta(T([1.5, 2.0]), T([2.0, 3.0])),
    "Gamma": lambda d: d.Gamma(T([2.0, 3.0]), T([1.0, 2.0])),
    "Dirichlet": lambda d: d.Dirichlet(T([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])),
    "Bernoulli": lambda d: d.Bernoulli(T([0.3, 0.6])),
    "Categorical": lambda d: d.Categorical(T([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])),
    "OneHotCategorical": lambda d: d.OneHotCategorical(T([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])),
    "Binomial": lambda d: d.Binomial(5, T([0.3, 0.6])),
    "Multinomial": lambda d: d.Multinomial(4, T([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])),
    "Poisson": lambda d: d.Poisson(T([1.0, 3.0])),
    "Geometric": lambda d: d.Geometric(T([0.3, 0.6])),
    "NegativeBinomial": lambda d: d.NegativeBinomial(T([3.0, 4.0]), T([0.3, 0.6])),
    "Uniform": lambda d: d.Uniform(T([0.0, 1.0]), T([1.0, 3.0])),
    "Exponential": lambda d: d.Exponential(T([1.0, 2.0])),
    "HalfCauchy": lambda d: d.HalfCauchy(T([1.0, 2.0])),
    "HalfNormal": lambda d: d.HalfNormal(T([1.0, 2.0])),
    "Cauchy": lambda d: d.Cauchy(T([0.0, 1.0]), T([1.0, 2.0])),
    "StudentT": lambda d: d.StudentT(T([3.0, 5.0]), T([0.0, 1.0]), T([1.0, 2.0])),
    "Laplace": lambda d: d.Laplace(T([0.0, 1.0]), T([1.0, 2.0])),
    "Gumbel": lambda d: d.Gumbel(T([0.0, 1.0]), T([1.0, 2.0])),
    "Weibull": lambda d: d.Weibull(T([1.0, 2.0]), T([1.5, 2.0])),
    "Chi2": lambda d: d.Chi2(T([2.0, 3.0])),
    "Pareto": lambda d: d.Pareto(T([1.0, 2.0]), T([2.0, 3.0])),
    "VonMises": lambda d: d.VonMises(T([0.0, 1.0]), T([1.0, 2.0])),
    "MultivariateNormal": lambda d: d.MultivariateNormal(
        T([[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]]),
        scale_tril=T([[1.0, 0, 0], [0.5, 1.0, 0], [0, 0.3, 2.0]]),
    ),
    "LowRankMultivariateNormal": lambda d: d.LowRankMultivariateNormal(
        torch.zeros(2, 3), torch.ones(2, 3, 1), T([1.0, 2.0, 3.0])
    ),
    "LKJCholesky": lambda d: d.LKJCholesky(3, T([1.0, 2.0])),
    "RelaxedBernoulli": lambda d: d.RelaxedBernoulli(T(0.5), T([0.3, 0.6])),
    "RelaxedOneHotCategorical": lambda d: d.RelaxedOneHotCategorical(
        T(0.5), T([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    ),
    "ContinuousBernoulli": lambda d: d.ContinuousBernoulli(T([0.3, 0.6])),
    "MixtureSameFamily": _mixture,
    "TransformedDistribution": lambda d: d.TransformedDistribution(
        d.Normal(T([0.0, 1.0]), T([1.0, 2.0])), [d.transforms.ExpTransform()]
    ),
    "Independent": lambda d: d.Independent(d.Normal(torch.zeros(2, 3), torch.ones(2, 3)), 1),
}


def _build(name):
    torch.manual_seed(0)
    return FAMILIES[name](dist), FAMILIES[name](tdist)


def test_every_exported_family_is_covered():
    own = {"Delta", "Empirical", "MaskedDistribution", "TorchDistribution",
           "TorchDistributionMixin"}
    exported = {n for n in dist.__all__ if n[0].isupper()} - own
    assert exported == set(FAMILIES)


def test_reexports_are_torch_objects():
    assert dist.constraints is tdist.constraints
    assert dist.transforms is tdist.transforms
    assert dist.kl_divergence is tdist.kl_divergence
    assert dist.register_kl is tdist.register_kl
    assert dist.biject_to is tdist.biject_to


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_is_subclass_of_torch_class_with_mixin_first(name):
    ours, _ = _build(name)
    cls = type(ours)
    assert isinstance(ours, getattr(tdist, name))
    assert cls.__name__ == name
    assert cls.__mro__[1] is TorchDistributionMixin


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_sample_log_prob_matches_torch(name):
    ours, twin = _build(name)
    x = ours.sample((4,))
    assert x.shape == (4,) + ours.batch_shape + ours.event_shape
    lp = ours.log_prob(x)
    assert lp.shape == (4,) + ours.batch_shape
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(lp, twin.log_prob(x))
    assert ours.event_dim == len(twin.event_shape)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_expand_returns_same_subclass(name):
    ours, twin = _build(name)
    batch_shape = torch.Size((5,)) + ours.batch_shape
    big = ours.expand(batch_shape)
    assert type(big) is type(ours)
    assert big.batch_shape == batch_shape
    assert big.event_shape == ours.event_shape
    x = big.sample()
    torch.testing.assert_close(big.log_prob(x), twin.expand(batch_shape).log_prob(x))


class _StandardNormal(dist.Normal):
    """A subclass with its own __init__: torch's expand alone refuses these."""

    def __init__(self, shape):
        super().__init__(torch.zeros(shape), torch.ones(shape))


def test_expand_on_subclass_with_custom_init():
    big = _StandardNormal((3,)).with_rsample(False).expand((2, 3))
    assert type(big) is _StandardNormal
    assert big.batch_shape == (2, 3) and big.has_rsample is False
    expected = tdist.Normal(0.0, 1.0).log_prob(torch.zeros(2, 3))
    torch.testing.assert_close(big.log_prob(torch.zeros(2, 3)), expected)


REPARAMETERIZED = sorted(n for n in FAMILIES if FAMILIES[n](dist).has_rsample)


@pytest.mark.parametrize("name", REPARAMETERIZED)
def test_with_rsample_false_survives_expand_for_every_reparameterized_family(name):
    ours, _ = _build(name)
    off = ours.with_rsample(False).expand(torch.Size((3,)) + ours.batch_shape)
    assert type(off) is type(ours)
    assert off.has_rsample is False
    assert off.sample().shape == (3,) + ours.batch_shape + ours.event_shape
    with pytest.raises(NotImplementedError, match="with_rsample"):
        off.rsample()


# to_event ---------------------------------------------------------------------------------


def _normal_234():
    return dist.Normal(torch.randn(2, 3, 4), torch.rand(2, 3, 4) + 0.5)


def test_to_event_shapes_and_log_prob_match_torch_independent():
    base = _normal_234()
    ind = base.to_event(2)
    assert isinstance(ind, dist.Independent)
    assert (ind.batch_shape, ind.event_shape, ind.event_dim) == ((2,), (3, 4), 2)
    x = base.sample((5,))
    expected = tdist.Independent(tdist.Normal(base.loc, base.scale), 2).log_prob(x)
    torch.testing.assert_close(ind.log_prob(x), expected)


def test_to_event_none_takes_all_batch_dims_and_zero_returns_self():
    base = _normal_234()
    assert base.to_event().batch_shape == ()
    assert base.to_event().event_shape == (2, 3, 4)
    assert base.to_event(0) is base


def test_to_event_too_many_dims_raises_with_shapes_and_fix():
    with pytest.raises(ValueError, match=r"batch_shape \(2, 3, 4\).*expand"):
        _normal_234().to_event(4)


def test_nested_to_event_folds_into_one_independent():
    base = _normal_234()
    ind = base.to_event(1).to_event(1)
    assert ind.base_dist is base
    assert ind.reinterpreted_batch_ndims == 2
    assert ind.event_shape == (3, 4)


def test_to_event_on_event_bearing_family():
    mvn = dist.MultivariateNormal(torch.zeros(2, 3), torch.eye(3))
    ind = mvn.to_event(1)
    assert (ind.batch_shape, ind.event_shape) == ((), (2, 3))
    x = mvn.sample()
    torch.testing.assert_close(ind.log_prob(x), mvn.log_prob(x).sum())


# mask -------------------------------------------------------------------------------------


def test_mask_zeros_masked_minus_inf_and_keeps_others():
    base = dist.Uniform(torch.zeros(3), 2 * torch.ones(3), validate_args=False)
    x = T([0.5, 3.0, 5.0])
    assert torch.isinf(base.log_prob(x)[1:]).all()
    lp = base.mask(T([True, False, False])).log_prob(x)
    torch.testing.assert_close(lp, T([-math.log(2.0), 0.0, 0.0]))


def test_mask_zeros_nan_entries():
    masked = dist.Normal(T([0.0, float("nan")]), 1.0, validate_args=False).mask(T([True, False]))
    lp = masked.log_prob(T([1.0, 1.0]))
    torch.testing.assert_close(lp, T([-0.5 - 0.5 * math.log(2 * math.pi), 0.0]))


def test_mask_broadcasts_batch_shape():
    masked = dist.Normal(torch.zeros(3), 1.0).mask(T([[True], [False]]))
    assert isinstance(masked, dist.MaskedDistribution)
    assert masked.batch_shape == (2, 3)
    lp = masked.log_prob(torch.zeros(2, 3))
    assert (lp[0] != 0).all() and (lp[1] == 0).all()


def test_mask_true_is_self_and_false_zeros_everything():
    base = dist.Normal(torch.zeros(3), 1.0)
    assert base.mask(True) is base
    assert (base.mask(False).log_prob(torch.ones(3)) == 0).all()


def test_mask_rejects_non_bool_and_incompatible_shapes():
    base = dist.Normal(torch.zeros(3), 1.0)
    with pytest.raises(TypeError, match="bool"):
        base.mask(torch.ones(3))
    with pytest.raises(ValueError, match="broadcast"):
        base.mask(torch.ones(2, dtype=torch.bool))


def test_mask_delegates_sampling_support_and_expand():
    base = dist.Normal(torch.zeros(3), 1.0)
    masked = base.mask(T([True, False, True]))
    assert masked.has_rsample and masked.rsample((2,)).shape == (2, 3)
    assert masked.sample().shape == (3,)
    assert masked.support is base.support
    big = masked.expand((4, 3))
    assert isinstance(big, dist.MaskedDistribution) and big.batch_shape == (4, 3)
    assert (big.log_prob(torch.zeros(4, 3))[:, 1] == 0).all()


def test_mask_of_mask_combines():
    base = dist.Normal(torch.zeros(3), 1.0)
    masked = base.mask(T([True, True, False])).mask(T([False, True, True]))
    assert isinstance(masked.base_dist, dist.Normal)
    lp = masked.log_prob(torch.zeros(3))
    assert lp[0] == 0 and lp[1] != 0 and lp[2] == 0


# with_rsample -----------------------------------------------------------------------------


def test_with_rsample_false_blocks_rsample_keeps_sample():
    loc = torch.zeros(3, requires_grad=True)
    base = dist.Normal(loc, 1.0)
    off = base.with_rsample(False)
    assert off.has_rsample is False and base.has_rsample is True
    with pytest.raises(NotImplementedError, match="with_rsample"):
        off.rsample()
    x = off.sample((2,))
    assert x.shape == (2, 3) and not x.requires_grad
    assert base.rsample().requires_grad


def test_with_rsample_false_sample_of_rsample_only_family():
    # torch's Beta.sample is rsample under no_grad: the flag must not block it.
    off = dist.Beta(T([2.0, 3.0]), T([1.0, 1.0])).with_rsample(False)
    assert off.sample().shape == (2,)


def test_with_rsample_false_survives_expand_to_event_mask():
    off = dist.Normal(torch.zeros(2, 3), 1.0).with_rsample(False)
    derived = [
        off.expand((4, 2, 3)),
        off.to_event(1),
        off.to_event(1).to_event(1),
        off.mask(T([True, False, True])),
        off.to_event(1).expand((5, 2)),
    ]
    for d in derived:
        assert d.has_rsample is False, type(d)
        with pytest.raises(NotImplementedError, match="with_rsample"):
            d.rsample()
        assert d.sample().shape == d.batch_shape + d.event_shape


def test_with_rsample_on_wrappers():
    ind = dist.Normal(torch.zeros(2), 1.0).to_event(1).with_rsample(False)
    assert ind.has_rsample is False
    assert ind.to_event(0).has_rsample is False
    assert ind.expand((3,)).has_rsample is False
    assert ind.sample().shape == (2,)


def test_with_rsample_true_restores_and_refuses_non_reparameterized():
    off = dist.Normal(0.0, 1.0).with_rsample(False)
    assert off.with_rsample(True).has_rsample is True
    with pytest.raises(ValueError, match="Bernoulli"):
        dist.Bernoulli(0.3).with_rsample(True)
    with pytest.raises(ValueError, match="Bernoulli"):
        dist.Bernoulli(T([0.3])).to_event(1).with_rsample(True)


# Delta ------------------------------------------------------------------------------------


def test_delta_log_prob():
    d = dist.Delta(T([1.0, 2.0]), log_density=0.5)
    assert d.batch_shape == (2,) and d.event_shape == () and d.event_dim == 0
    torch.testing.assert_close(d.log_prob(T([1.0, 3.0])), T([0.5, -math.inf]))


def test_delta_event_dim_log_prob_all_equal_over_event():
    v = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    d = dist.Delta(v, event_dim=1)
    assert (d.batch_shape, d.event_shape, d.event_dim) == ((2,), (3,), 1)
    x = v.clone()
    x[1, 2] = 0.0
    torch.testing.assert_close(d.log_prob(x), T([0.0, -math.inf]))
    assert d.log_prob(v.expand(4, 2, 3)).shape == (4, 2)
    assert d.to_event().log_prob(v) == 0


def test_delta_rsample_keeps_gradient_sample_does_not():
    v = T([1.0, 2.0], requires_grad=True)
    d = dist.Delta(v)
    assert d.has_rsample is True
    x = d.rsample((4,))
    assert x.shape == (4, 2)
    x.sum().backward()
    torch.testing.assert_close(v.grad, T([4.0, 4.0]))
    assert not d.sample().requires_grad


def test_delta_moments_support_and_expand():
    v = torch.randn(2, 3)
    d = dist.Delta(v, log_density=T([0.1, 0.2]), event_dim=1)
    assert d.mean is v and (d.variance == 0).all()
    assert d.support.event_dim == 1
    assert dist.biject_to(d.support)(v).shape == v.shape
    big = d.expand((4, 2))
    assert type(big) is dist.Delta
    assert (big.batch_shape, big.event_shape) == ((4, 2), (3,))
    torch.testing.assert_close(big.log_prob(v), T([0.1, 0.2]).expand(4, 2))


def test_delta_with_rsample_false_and_bad_event_dim():
    d = dist.Delta(T([1.0])).with_rsample(False)
    with pytest.raises(NotImplementedError):
        d.rsample()
    assert d.expand((3, 1)).has_rsample is False
    with pytest.raises(ValueError, match="event_dim"):
        dist.Delta(T([1.0]), event_dim=2)


# enumeration -------------------------------------------------------------------------------

ENUM_CASES = [
    (lambda: dist.Bernoulli(T([0.3, 0.6])), (2, 2), (2, 1)),
    (lambda: dist.Categorical(torch.ones(2, 3) / 3), (3, 2), (3, 1)),
    (lambda: dist.OneHotCategorical(torch.ones(2, 3) / 3), (3, 2, 3), (3, 1, 3)),
    (lambda: dist.Binomial(4, T([0.3, 0.6])), (5, 2), (5, 1)),
]


@pytest.mark.parametrize("make, expanded, unexpanded", ENUM_CASES)
def test_enumerate_support_shapes(make, expanded, unexpanded):
    d = make()
    assert d.has_enumerate_support
    assert d.enumerate_support().shape == expanded
    assert d.enumerate_support(expand=False).shape == unexpanded


@pytest.mark.parametrize("make, expanded, unexpanded", ENUM_CASES)
def test_enumerate_support_after_expand_mask_with_rsample(make, expanded, unexpanded):
    d = make()
    k, event = expanded[0], expanded[2:]
    variants = {
        "expand": d.expand((4, 2)),
        "mask": d.mask(T([[True], [False], [True], [True]])),
        "with_rsample": d.with_rsample(False).expand((4, 2)),
    }
    for label, v in variants.items():
        assert v.has_enumerate_support, label
        assert v.enumerate_support().shape == (k, 4, 2) + event, label
        assert v.enumerate_support(expand=False).shape == (k, 1, 1) + event, label


def test_binomial_heterogeneous_total_count_cannot_enumerate():
    with pytest.raises(NotImplementedError):
        dist.Binomial(T([2.0, 3.0]), T([0.3, 0.6])).enumerate_support()


def test_kl_dispatches_on_subclasses():
    p, q = dist.Normal(0.0, 1.0), dist.Normal(1.0, 2.0)
    expected = tdist.kl_divergence(tdist.Normal(0.0, 1.0), tdist.Normal(1.0, 2.0))
    torch.testing.assert_close(dist.kl_divergence(p, q), expected)


# ---- Normal's fast construction: the same distribution as torch's ------------------------
@pytest.mark.parametrize("loc, scale", [
    (lambda: torch.randn(4, 1, requires_grad=True), lambda: 1.5),
    (lambda: 2.0, lambda: torch.rand(3, requires_grad=True) + 0.5),
    (lambda: torch.randn(()), lambda: 2),
    (lambda: torch.randn(2, 3, requires_grad=True), lambda: torch.rand(2, 3) + 0.1),
    (lambda: torch.randn(2, 3, dtype=torch.float64), lambda: 0.5),
    (lambda: torch.randn(2, 1), lambda: torch.rand(3) + 0.1),       # broadcasts: torch's path
    (lambda: 0.0, lambda: 1.0),
    (lambda: -0.0, lambda: 2),
], ids=["tensor-float", "float-tensor", "scalar-int", "same-shape", "float64", "broadcast",
        "numbers", "negative-zero-int"])
def test_normal_construction_equals_torch(loc, scale):
    """svigraph's Normal skips broadcast_all for a plain tensor with a number, two plain
    tensors of one shape, or two numbers: parameters (to the sign of a zero), batch shape,
    log densities and gradients equal torch's."""
    torch.manual_seed(0)
    a, b = loc(), scale()
    ours, ref = dist.Normal(a, b), torch.distributions.Normal(a, b)
    assert ours.batch_shape == ref.batch_shape and ours.event_shape == ref.event_shape
    for name in ("loc", "scale"):
        mine, theirs = getattr(ours, name), getattr(ref, name)
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
        assert torch.equal(mine, theirs) and torch.equal(mine.signbit(), theirs.signbit())
    value = ref.sample((2,))
    assert torch.equal(ours.log_prob(value), ref.log_prob(value))
    leaves = [t for t in (a, b) if isinstance(t, torch.Tensor) and t.requires_grad]
    if leaves:
        g = torch.autograd.grad(ours.log_prob(value).sum(), leaves)
        g_ref = torch.autograd.grad(ref.log_prob(value).sum(), leaves)
        assert all(torch.equal(x, y) for x, y in zip(g, g_ref))


def test_normal_fast_construction_still_validates():
    with pytest.raises(ValueError, match="scale"):
        dist.Normal(torch.zeros(2), -1.0, validate_args=True)
    with pytest.raises(ValueError, match="scale"):
        dist.Normal(torch.zeros(2), torch.tensor([1.0, -1.0]), validate_args=True)


def test_normal_number_scale_is_one_shared_constant_until_written():
    """``Normal(loc, 1.0)`` broadcasts one shared 0-dim tensor at every construction; a
    write into it (through any distribution's scale) makes the next construction use a
    fresh one, so no distribution ever sees another's write."""
    first, second = dist.Normal(torch.zeros(3), 1.0), dist.Normal(torch.zeros(2, 1), 1.0)
    assert first.scale._base is not None and first.scale._base is second.scale._base
    other = dist.Normal(torch.zeros(3), 2.0)
    assert other.scale._base is not first.scale._base and torch.equal(other.scale,
                                                                      torch.full((3,), 2.0))
    lone = dist.Normal(torch.zeros(()), 1.0)  # a single element: writable in place
    lone.scale.mul_(5.0)
    again = dist.Normal(torch.zeros(3), 1.0)
    assert torch.equal(again.scale, torch.ones(3)) and again.scale._base is not first.scale._base
    with torch.inference_mode():
        inside = dist.Normal(torch.zeros(3), 1.0)
    assert inside.scale._base is not again.scale._base


def test_normal_of_two_numbers_shares_its_constants_until_written():
    """``Normal(0.0, 10.0)`` (a prior) takes shared 0-dim tensors of the default dtype; a
    write into one makes the next construction use a fresh one."""
    first, second = dist.Normal(0.0, 10.0), dist.Normal(0.0, 10.0)
    assert first.loc is second.loc and first.scale is second.scale
    first.loc.add_(1.0)
    third = dist.Normal(0.0, 10.0)
    assert float(third.loc) == 0.0 and third.loc is not first.loc
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        wide = dist.Normal(0.0, 10.0)
    finally:
        torch.set_default_dtype(old)
    assert wide.loc.dtype == wide.scale.dtype == torch.float64


@pytest.mark.parametrize("loc, scale", [
    (lambda: 0.0, lambda: 1.0),
    (lambda: torch.randn(3, requires_grad=True), lambda: torch.rand(3).add(0.1).requires_grad_()),
    (lambda: torch.randn(2, 1), lambda: 0.5),
    (lambda: torch.randn(2, 1, dtype=torch.float64), lambda: torch.rand(3, dtype=torch.float64)),
], ids=["numbers", "same-shape", "tensor-number", "broadcast"])
def test_lognormal_equals_torch(loc, scale):
    """svigraph's LogNormal (its own Normal as base, one shared ExpTransform) is torch's
    distribution: parameters, shapes, draws, log densities, gradients, expand and KL."""
    torch.manual_seed(0)
    a, b = loc(), scale()
    ours, ref = dist.LogNormal(a, b), torch.distributions.LogNormal(a, b)
    assert ours.batch_shape == ref.batch_shape and ours.event_shape == ref.event_shape
    assert torch.equal(ours.loc, ref.loc) and torch.equal(ours.scale, ref.scale)
    assert ours.loc.dtype == ref.loc.dtype
    torch.manual_seed(1)
    x = ours.rsample((2,))
    torch.manual_seed(1)
    assert torch.equal(x, ref.rsample((2,)))
    assert torch.equal(ours.log_prob(x.detach()), ref.log_prob(x.detach()))
    leaves = [t for t in (a, b) if isinstance(t, torch.Tensor) and t.requires_grad]
    if leaves:
        g = torch.autograd.grad(ours.log_prob(x.detach()).sum(), leaves)
        g_ref = torch.autograd.grad(ref.log_prob(x.detach()).sum(), leaves)
        assert all(torch.equal(u, v) for u, v in zip(g, g_ref))
    big = (4,) + tuple(ours.batch_shape)
    assert torch.equal(ours.expand(big).log_prob(x[0].detach()),
                       ref.expand(big).log_prob(x[0].detach()))
    other = torch.distributions.LogNormal(torch.tensor(0.3), torch.tensor(2.0))
    assert torch.equal(dist.kl_divergence(ours, other), dist.kl_divergence(ref, other))
    assert not ours.with_rsample(False).has_rsample and ours.has_rsample


def test_bernoulli_construction_equals_torch():
    """svigraph's Bernoulli keeps a single plain tensor as given: the same parameters,
    shapes, log densities and gradients as torch's."""
    for kw in ({"probs": torch.tensor([0.2, 0.7], requires_grad=True)},
               {"logits": torch.tensor([[0.2], [-1.0]], requires_grad=True)},
               {"probs": torch.tensor(0.3)}, {"probs": 0.4}, {"logits": -1.0}):
        ours, ref = dist.Bernoulli(**kw), torch.distributions.Bernoulli(**kw)
        assert ours.batch_shape == ref.batch_shape and sorted(vars(ours)) == sorted(vars(ref))
        value = ref.sample((3,))
        assert torch.equal(ours.probs, ref.probs) and torch.equal(ours.logits, ref.logits)
        assert torch.equal(ours.log_prob(value), ref.log_prob(value))
        (leaf,) = kw.values()
        if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
            g, = torch.autograd.grad(ours.log_prob(value).sum(), leaf)
            g_ref, = torch.autograd.grad(ref.log_prob(value).sum(), leaf)
            assert torch.equal(g, g_ref)
    with pytest.raises(ValueError, match="probs"):
        dist.Bernoulli(torch.tensor([1.5]), validate_args=True)


# ---- Categorical from a constant table: normalized once, the same distribution ----------
def test_categorical_of_a_constant_table_equals_torch():
    """A table that needs no gradient is normalized once and reused while it is unchanged;
    probs, logits, shapes, log densities and draws equal torch's."""
    table = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.25, 0.25]])
    first, again = dist.Categorical(table), dist.Categorical(table)
    ref = torch.distributions.Categorical(table)
    assert again.probs is first.probs and again.logits is first.logits  # reused
    for d in (first, again):
        assert d.batch_shape == ref.batch_shape and d.event_shape == ref.event_shape
        assert torch.equal(d.probs, ref.probs) and torch.equal(d.logits, ref.logits)
        value = torch.tensor([2, 0])
        assert torch.equal(d.log_prob(value), ref.log_prob(value))
        torch.manual_seed(1)
        draw = d.sample((4,))
        torch.manual_seed(1)
        assert torch.equal(draw, ref.sample((4,)))
    assert dist.Categorical(table).expand((3, 2)).batch_shape == (3, 2)


@pytest.mark.parametrize("change", ["table", "normalized probs", "logits"])
def test_categorical_constant_table_changed_in_place_is_normalized_again(change):
    table = torch.tensor([1.0, 1.0, 2.0])
    d = dist.Categorical(table)
    {"table": table, "normalized probs": d.probs, "logits": d.logits}[change].mul_(3.0)
    fresh = dist.Categorical(table)
    ref = torch.distributions.Categorical(table)
    assert torch.equal(fresh.probs, ref.probs) and torch.equal(fresh.logits, ref.logits)


def test_categorical_of_a_trainable_table_keeps_its_gradient():
    table = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    d = dist.Categorical(table)
    (g,) = torch.autograd.grad(d.log_prob(torch.tensor(1)), table)
    (g_ref,) = torch.autograd.grad(torch.distributions.Categorical(table).log_prob(
        torch.tensor(1)), table)
    assert torch.equal(g, g_ref)
    with pytest.raises(ValueError):
        dist.Categorical(torch.tensor([1.0, -1.0]), validate_args=True)


# ---- Categorical from a trainable table, checks off: normalized when first read ---------
def _deferred(table):
    d = dist.Categorical(table, validate_args=False)
    assert "probs" not in d.__dict__ and "logits" not in d.__dict__  # not normalized yet
    return d


@pytest.mark.parametrize("read", ["log_prob", "probs", "logits", "sample", "entropy", "mode",
                                  "enumerate_support", "expand"])
def test_categorical_normalized_when_first_read_equals_torch(read):
    """With checks off, a trainable table is normalized on its first read; whatever is read
    first, values, shapes, draws and gradients equal torch's eager normalization."""
    raw = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.25, 0.25]])
    value = torch.tensor([2, 0])

    def use(d):
        torch.manual_seed(3)
        out = {"log_prob": lambda: d.log_prob(value), "probs": lambda: d.probs,
               "logits": lambda: d.logits, "sample": lambda: d.sample((5,)),
               "entropy": d.entropy, "mode": lambda: d.mode,
               "enumerate_support": d.enumerate_support,
               "expand": lambda: d.expand((4, 2)).log_prob(value)}[read]()
        return out, d.log_prob(value).sum()

    table = raw.clone().requires_grad_()
    got, lp = use(_deferred(table))
    (grad,) = torch.autograd.grad(lp, table)
    ref_table = raw.clone().requires_grad_()
    ref = torch.distributions.Categorical(ref_table, validate_args=False)
    want, lp_ref = use(ref)
    (grad_ref,) = torch.autograd.grad(lp_ref, ref_table)
    assert got.shape == want.shape and torch.equal(got, want)
    assert torch.equal(grad, grad_ref)
    d = _deferred(table)
    assert d.batch_shape == ref.batch_shape and d.param_shape == ref.param_shape
    assert d.support.upper_bound == ref.support.upper_bound
    fresh = torch.distributions.Categorical(table, validate_args=False)
    assert repr(_deferred(table)) == repr(fresh) == "Categorical(probs: torch.Size([2, 3]))"


def test_categorical_normalizes_at_once_with_checks_on_or_gradients_off():
    table = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    assert "probs" in dist.Categorical(table, validate_args=True).__dict__
    with torch.no_grad():
        assert "probs" in dist.Categorical(table, validate_args=False).__dict__
    with pytest.raises(ValueError):
        dist.Categorical(torch.tensor([1.0, -1.0], requires_grad=True), validate_args=True)


def test_categorical_table_is_not_cached_while_operations_are_recorded():
    """Under a dispatch mode (a JIT capture records operations) every Categorical takes
    torch's path: its normalization is recorded, not read from the cache."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recording(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.__name__)
            return func(*args, **(kwargs or {}))

    table = torch.tensor([1.0, 2.0, 3.0])
    dist.Categorical(table)  # cached outside the mode
    with Recording() as mode:
        inside = dist.Categorical(table)
        inside.logits
    assert any(name.startswith("div") for name in mode.ops)
    assert torch.equal(inside.logits, torch.distributions.Categorical(table).logits)
