"""Distributions built from other distributions: torch's classes with the svigraph mixin."""

from __future__ import annotations

import torch.distributions as _torch_dists

from svigraph.distributions.mixin import TorchDistributionMixin

__all__ = [
    "MixtureSameFamily",
    "TransformedDistribution",
]


class MixtureSameFamily(TorchDistributionMixin, _torch_dists.MixtureSameFamily):
    """Torch's ``MixtureSameFamily`` with :class:`TorchDistributionMixin` first."""


class TransformedDistribution(TorchDistributionMixin, _torch_dists.TransformedDistribution):
    """Torch's ``TransformedDistribution`` with :class:`TorchDistributionMixin` first."""
