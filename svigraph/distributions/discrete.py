"""Discrete families: torch's classes with the svigraph mixin.

Enumeration (``has_enumerate_support``, ``enumerate_support``) is torch's, unchanged.
"""

from __future__ import annotations

import torch
import torch.distributions as _torch_dists
from torch.distributions.utils import lazy_property, logits_to_probs, probs_to_logits

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
    """Torch's ``Bernoulli`` with :class:`TorchDistributionMixin` first.

    Built from one plain tensor (``probs`` or ``logits``), it keeps that tensor as it is:
    torch's ``broadcast_all`` of a single tensor returns a view of it of the same shape, at
    several microseconds per site and step. The distribution is the same."""

    def __init__(self, probs=None, logits=None, validate_args=None):
        if logits is None and type(probs) is torch.Tensor:
            self.probs = self._param = probs
        elif probs is None and type(logits) is torch.Tensor:
            self.logits = self._param = logits
        else:
            super().__init__(probs, logits, validate_args=validate_args)
            return
        _torch_dists.Distribution.__init__(self, self._param.size(), validate_args=validate_args)


class Categorical(TorchDistributionMixin, _torch_dists.Categorical):
    """Torch's ``Categorical`` with :class:`TorchDistributionMixin` first.

    Built from a constant table of ``probs`` (a tensor that needs no gradient, e.g. mixture
    weights a model passes every step), the normalized probs and their logits are computed
    once and reused while that tensor is unchanged; the distribution is the same.

    Built from trainable ``probs`` with argument checks off, the normalization is deferred
    to the first read of ``probs`` (or ``logits``, ``log_prob``, ``sample``...): an HMM's
    T transition rows are then normalized once, stacked (``runtime.stacked_terms``), instead
    of once per time step. The values are the same arithmetic; with checks on, torch
    normalizes at construction and validates."""

    def __init__(self, probs=None, logits=None, validate_args=None):
        if logits is None and probs is not None:
            normalized = _constant_table(probs)
            if normalized is not None:
                self.probs, self.__dict__["logits"] = normalized
                self._param = self.probs
                self._init_shapes(self.probs, validate_args)
                return
            if _deferrable(probs, validate_args):
                self._unnormalized = self._param = probs
                self._init_shapes(probs, validate_args)
                return
        super().__init__(probs, logits, validate_args=validate_args)

    def _init_shapes(self, table, validate_args):
        self._num_events = table.size()[-1]
        batch_shape = table.size()[:-1] if table.ndimension() > 1 else torch.Size()
        _torch_dists.Distribution.__init__(self, batch_shape, validate_args=validate_args)

    @lazy_property
    def probs(self):
        raw = self.__dict__.get("_unnormalized")
        if raw is None:
            return logits_to_probs(self.logits)
        return raw / raw.sum(-1, keepdim=True)

    def expand(self, batch_shape, _instance=None):
        self.probs  # noqa: B018 - torch's expand copies the normalized table: make it now
        return super().expand(batch_shape, _instance)

    def __repr__(self):
        self.probs  # noqa: B018 - torch's repr shows the parameters already computed
        return super().__repr__()


def _deferrable(probs, validate_args):
    """Whether normalizing ``probs`` can wait: a plain trainable tensor of at least one dim
    (constant tables are cached instead), built with gradients on (the lazy read computes
    under grad, as torch's lazy properties do) and argument checks off (torch's check reads
    the normalized table at construction)."""
    checks = _torch_dists.Distribution._validate_args if validate_args is None else validate_args
    return (type(probs) is torch.Tensor and probs.requires_grad and probs.dim() >= 1
            and not checks and torch.is_grad_enabled())


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
