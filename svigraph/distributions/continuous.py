"""Univariate continuous families: torch's classes with the svigraph mixin."""

from __future__ import annotations

import torch.distributions as _torch_dists

from svigraph.distributions.mixin import TorchDistributionMixin

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
    """Torch's ``Normal`` with :class:`TorchDistributionMixin` first."""


class LogNormal(TorchDistributionMixin, _torch_dists.LogNormal):
    """Torch's ``LogNormal`` with :class:`TorchDistributionMixin` first."""


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
