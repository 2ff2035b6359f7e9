"""Discrete families: torch's classes with the svigraph mixin.

Enumeration (``has_enumerate_support``, ``enumerate_support``) is torch's, unchanged.
"""

from __future__ import annotations

import torch.distributions as _torch_dists

from svigraph.distributions.mixin import TorchDistributionMixin

__all__ = [
    "Bernoulli",
    "Categorical",
    "OneHotCategorical",
    "Binomial",
    "Multinomial",
    "Poisson",
    "Geometric",
    "NegativeBinomial",
]


class Bernoulli(TorchDistributionMixin, _torch_dists.Bernoulli):
    """Torch's ``Bernoulli`` with :class:`TorchDistributionMixin` first."""


class Categorical(TorchDistributionMixin, _torch_dists.Categorical):
    """Torch's ``Categorical`` with :class:`TorchDistributionMixin` first."""


class OneHotCategorical(TorchDistributionMixin, _torch_dists.OneHotCategorical):
    """Torch's ``OneHotCategorical`` with :class:`TorchDistributionMixin` first."""


class Binomial(TorchDistributionMixin, _torch_dists.Binomial):
    """Torch's ``Binomial`` with :class:`TorchDistributionMixin` first."""


class Multinomial(TorchDistributionMixin, _torch_dists.Multinomial):
    """Torch's ``Multinomial`` with :class:`TorchDistributionMixin` first."""


class Poisson(TorchDistributionMixin, _torch_dists.Poisson):
    """Torch's ``Poisson`` with :class:`TorchDistributionMixin` first."""


class Geometric(TorchDistributionMixin, _torch_dists.Geometric):
    """Torch's ``Geometric`` with :class:`TorchDistributionMixin` first."""


class NegativeBinomial(TorchDistributionMixin, _torch_dists.NegativeBinomial):
    """Torch's ``NegativeBinomial`` with :class:`TorchDistributionMixin` first."""
