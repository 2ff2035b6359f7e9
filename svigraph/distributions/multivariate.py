"""Multivariate families: torch's classes with the svigraph mixin."""

from __future__ import annotations

import torch.distributions as _torch_dists

from svigraph.distributions.mixin import TorchDistributionMixin

__all__ = [
    "Dirichlet",
    "MultivariateNormal",
    "LowRankMultivariateNormal",
    "LKJCholesky",
    "RelaxedOneHotCategorical",
]


class Dirichlet(TorchDistributionMixin, _torch_dists.Dirichlet):
    """Torch's ``Dirichlet`` with :class:`TorchDistributionMixin` first."""


class MultivariateNormal(TorchDistributionMixin, _torch_dists.MultivariateNormal):
    """Torch's ``MultivariateNormal`` with :class:`TorchDistributionMixin` first."""


class LowRankMultivariateNormal(TorchDistributionMixin, _torch_dists.LowRankMultivariateNormal):
    """Torch's ``LowRankMultivariateNormal`` with :class:`TorchDistributionMixin` first."""


class LKJCholesky(TorchDistributionMixin, _torch_dists.LKJCholesky):
    """Torch's ``LKJCholesky`` with :class:`TorchDistributionMixin` first."""


class RelaxedOneHotCategorical(TorchDistributionMixin, _torch_dists.RelaxedOneHotCategorical):
    """Torch's ``RelaxedOneHotCategorical`` with :class:`TorchDistributionMixin` first."""
