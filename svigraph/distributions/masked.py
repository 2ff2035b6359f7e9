"""``MaskedDistribution``: a distribution whose log_prob is zeroed where a mask is False."""

from __future__ import annotations

import torch

from svigraph.distributions.mixin import TorchDistribution, copy_mixin_state


def _as_bool_mask(mask):
    if isinstance(mask, bool):
        return torch.tensor(mask)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a bool or a bool tensor, got {type(mask).__name__}"
            + (f" of dtype {mask.dtype}; use mask.bool()" if isinstance(mask, torch.Tensor) else "")
        )
    return mask


def _broadcast_batch_shape(mask, base_dist):
    try:
        return torch.broadcast_shapes(mask.shape, base_dist.batch_shape)
    except RuntimeError as err:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast with batch_shape "
            f"{tuple(base_dist.batch_shape)} of {type(base_dist).__name__}"
        ) from err


class MaskedDistribution(TorchDistribution):
    """``base_dist`` with log_prob set to 0 wherever ``mask`` is False.

    The masking uses ``torch.where``, so a NaN or -inf in a masked-out entry of the base
    log_prob does not leak into the result. Sampling, support and enumeration are the
    base's; ``batch_shape`` is the broadcast of the mask's shape and the base's batch_shape.

    Args:
        base_dist: the distribution to mask.
        mask: a bool, or a bool tensor broadcastable to ``base_dist.batch_shape``.
    """

    arg_constraints = {}

    def __init__(self, base_dist, mask):
        mask = _as_bool_mask(mask)
        batch_shape = _broadcast_batch_shape(mask, base_dist)
        if base_dist.batch_shape != batch_shape:
            base_dist = base_dist.expand(batch_shape)
        self.base_dist = base_dist
        self._mask = mask
        super().__init__(batch_shape, base_dist.event_shape, validate_args=False)

    def _natural_has_rsample(self):
        return self.base_dist.has_rsample

    @property
    def has_enumerate_support(self):
        return self.base_dist.has_enumerate_support

    @property
    def support(self):
        return self.base_dist.support

    @property
    def mean(self):
        return self.base_dist.mean

    @property
    def variance(self):
        return self.base_dist.variance

    def sample(self, sample_shape=torch.Size()):
        return self.base_dist.sample(sample_shape)

    def rsample(self, sample_shape=torch.Size()):
        self._require_rsample()
        return self.base_dist.rsample(sample_shape)

    def log_prob(self, value):
        log_prob = self.base_dist.log_prob(value)
        return torch.where(self._mask, log_prob, log_prob.new_zeros(()))

    def enumerate_support(self, expand=True):
        return self.base_dist.enumerate_support(expand=expand)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MaskedDistribution, _instance)
        batch_shape = torch.Size(batch_shape)
        new.base_dist = self.base_dist.expand(batch_shape)
        new._mask = self._mask
        super(MaskedDistribution, new).__init__(batch_shape, self.event_shape, validate_args=False)
        return copy_mixin_state(self, new)

    def mask(self, mask):
        """Combine with another mask (logical and) rather than nesting a second wrapper."""
        if mask is True:
            return self
        new = MaskedDistribution(self.base_dist, self._mask & _as_bool_mask(mask))
        return copy_mixin_state(self, new)

    def __repr__(self):
        return f"MaskedDistribution({self.base_dist!r}, mask_shape={tuple(self._mask.shape)})"
