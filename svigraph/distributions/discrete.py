"""Discrete families: torch's classes with the svigraph mixin.

Enumeration (``has_enumerate_support``, ``enumerate_support``) is torch's, unchanged.
"""

from __future__ import annotations

import torch
import torch.distributions as _torch_dists
from torch.distributions.utils import probs_to_logits

from svigraph.distributions.mixin import TorchDistributionMixin
from svigraph.tensor_memo import UnchangedTensorMemo

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
    """Torch's ``Categorical`` with :class:`TorchDistributionMixin` first.

    Built from a constant table of ``probs`` (a tensor that needs no gradient, e.g. mixture
    weights a model passes every step), the normalized probs and their logits are computed
    once and reused while that tensor is unchanged; the distribution is the same."""

    def __init__(self, probs=None, logits=None, validate_args=None):
        normalized = _constant_table(probs) if logits is None else None
        if normalized is None:
            super().__init__(probs, logits, validate_args=validate_args)
            return
        self.probs, self.__dict__["logits"] = normalized
        self._param = self.probs
        self._num_events = self.probs.size()[-1]
        batch_shape = self.probs.size()[:-1] if self.probs.ndimension() > 1 else torch.Size()
        _torch_dists.Distribution.__init__(self, batch_shape, validate_args=validate_args)


# constant probs table -> (normalized probs, logits, and their _versions): normalized again
# when the table, or a result, was changed in place
_TABLES = UnchangedTensorMemo(max_size=64)


def _constant_table(probs):
    """(normalized probs, logits) of a constant probs tensor, computed once per unchanged
    tensor; None for anything else (tensors needing gradients, inference-mode tensors,
    scalars), which takes torch's path, as does everything while a dispatch mode records
    operations (a JIT capture, whose detached inputs need no gradient either)."""
    if (type(probs) is not torch.Tensor or probs.requires_grad or probs.dim() == 0
            or probs.is_inference() or torch.is_inference_mode_enabled()
            or torch._C._len_torch_dispatch_stack()):
        return None
    cached = _TABLES.get(probs)
    if cached is not None and cached[0]._version == cached[2] \
            and cached[1]._version == cached[3]:
        return cached[0], cached[1]
    with torch.no_grad():
        normalized = probs / probs.sum(-1, keepdim=True)
        logits = probs_to_logits(normalized)
    _TABLES.put(probs, (normalized, logits, normalized._version, logits._version))
    return normalized, logits


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
