"""Univariate continuous families: torch's classes with the svigraph mixin."""

from __future__ import annotations

import math

import torch
import torch.distributions as _torch_dists

from svigraph.distributions.mixin import TorchDistributionMixin
from svigraph.tensor_memo import SharedTensors

__all__ = [
    "Normal",
    "LogNormal",
    "Beta",
    "Gamma",
    "Uniform",
    "Exponential",
    "HalfCauchy",
    "HalfNormal",
    "Cauchy",
    "StudentT",
    "Laplace",
    "Gumbel",
    "Weibull",
    "Chi2",
    "Pareto",
    "VonMises",
    "ContinuousBernoulli",
    "RelaxedBernoulli",
]


class Normal(TorchDistributionMixin, _torch_dists.Normal):
    """Torch's ``Normal`` with :class:`TorchDistributionMixin` first.

    Built from a plain tensor and a Python number (``Normal(loc, 1.0)``), two plain tensors
    of one shape, or two Python numbers (a prior's ``Normal(0.0, 10.0)``), it skips torch's
    generic ``broadcast_all`` (several microseconds per site and step; the parameters need
    no broadcasting); other arguments take torch's path. The distribution is the same
    either way."""

    def __init__(self, loc, scale, validate_args=None):
        pair = _plain_pair(loc, scale)
        if pair is None:
            super().__init__(loc, scale, validate_args=validate_args)
            return
        self.loc, self.scale = pair
        _torch_dists.Distribution.__init__(self, self.loc.size(), validate_args=validate_args)


_NUMBER = (float, int)


def _plain_pair(a, b):
    """``broadcast_all(a, b)`` for a plain tensor and a Python number, two plain tensors of
    one shape, dtype and device (those need no broadcasting), or two Python numbers (0-dim
    tensors of the default dtype); None otherwise."""
    ta, tb = type(a), type(b)
    if ta in _NUMBER and tb in _NUMBER:
        dtype = torch.get_default_dtype()
        return _number(a, dtype), _number(b, dtype)
    if ta is torch.Tensor:
        if tb is torch.Tensor:
            same = a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            return (a, b) if same else None
        return (a, _constant(b, a).expand(a.shape)) if tb in _NUMBER else None
    if tb is torch.Tensor and ta in _NUMBER:
        return _constant(a, b).expand(b.shape), b
    return None


_CONSTANTS = SharedTensors(max_size=256)  # (number, dtype, device) -> 0-dim tensor


def _constant(number, like):
    """``like.new_full((), number)``, shared while nobody writes into it (``SharedTensors``):
    a model's ``Normal(loc, 1.0)`` at every site and step then broadcasts one tensor (and
    ``runtime.stacked_terms`` stacks thousands of such views as one)."""
    return _CONSTANTS.get((_key(number), like.dtype, like.device), like.new_full, (), number)


def _key(number):
    """``number`` as a cache key that tells -0.0 from 0.0 (equal, and hashed alike)."""
    return number if number or math.copysign(1.0, number) > 0 else "-0.0"


def _number(number, dtype):
    """``torch.tensor(number, dtype=dtype)``, shared like ``_constant`` (any default device
    is a torch function mode, under which ``SharedTensors`` builds a fresh one)."""
    return _CONSTANTS.get((_key(number), dtype), _scalar, number, dtype)


def _scalar(number, dtype):
    return torch.tensor(number, dtype=dtype)


class LogNormal(TorchDistributionMixin, _torch_dists.LogNormal):
    """Torch's ``LogNormal`` with :class:`TorchDistributionMixin` first.

    Its base is svigraph's :class:`Normal` (built without ``broadcast_all`` where that
    applies) and its transform one shared ``ExpTransform`` (stateless: no cache); torch's
    builds both afresh. The distribution is the same."""

    def __init__(self, loc, scale, validate_args=None):
        base = Normal(loc, scale, validate_args=validate_args)
        _torch_dists.TransformedDistribution.__init__(self, base, _EXP,
                                                      validate_args=validate_args)


_EXP = _torch_dists.ExpTransform()


class Beta(TorchDistributionMixin, _torch_dists.Beta):
    """Torch's ``Beta`` with :class:`TorchDistributionMixin` first."""


class Gamma(TorchDistributionMixin, _torch_dists.Gamma):
    """Torch's ``Gamma`` with :class:`TorchDistributionMixin` first."""


class Uniform(TorchDistributionMixin, _torch_dists.Uniform):
    """Torch's ``Uniform`` with :class:`TorchDistributionMixin` first."""


class Exponential(TorchDistributionMixin, _torch_dists.Exponential):
    """Torch's ``Exponential`` with :class:`TorchDistributionMixin` first."""


class HalfCauchy(TorchDistributionMixin, _torch_dists.HalfCauchy):
    """Torch's ``HalfCauchy`` with :class:`TorchDistributionMixin` first."""


class HalfNormal(TorchDistributionMixin, _torch_dists.HalfNormal):
    """Torch's ``HalfNormal`` with :class:`TorchDistributionMixin` first."""


class Cauchy(TorchDistributionMixin, _torch_dists.Cauchy):
    """Torch's ``Cauchy`` with :class:`TorchDistributionMixin` first."""


class StudentT(TorchDistributionMixin, _torch_dists.StudentT):
    """Torch's ``StudentT`` with :class:`TorchDistributionMixin` first."""


class Laplace(TorchDistributionMixin, _torch_dists.Laplace):
    """Torch's ``Laplace`` with :class:`TorchDistributionMixin` first."""


class Gumbel(TorchDistributionMixin, _torch_dists.Gumbel):
    """Torch's ``Gumbel`` with :class:`TorchDistributionMixin` first."""


class Weibull(TorchDistributionMixin, _torch_dists.Weibull):
    """Torch's ``Weibull`` with :class:`TorchDistributionMixin` first."""


class Chi2(TorchDistributionMixin, _torch_dists.Chi2):
    """Torch's ``Chi2`` with :class:`TorchDistributionMixin` first."""


class Pareto(TorchDistributionMixin, _torch_dists.Pareto):
    """Torch's ``Pareto`` with :class:`TorchDistributionMixin` first."""


class VonMises(TorchDistributionMixin, _torch_dists.VonMises):
    """Torch's ``VonMises`` with :class:`TorchDistributionMixin` first."""


class ContinuousBernoulli(TorchDistributionMixin, _torch_dists.ContinuousBernoulli):
    """Torch's ``ContinuousBernoulli`` with :class:`TorchDistributionMixin` first."""


class RelaxedBernoulli(TorchDistributionMixin, _torch_dists.RelaxedBernoulli):
    """Torch's ``RelaxedBernoulli`` with :class:`TorchDistributionMixin` first."""
