"""``Delta``: a point mass, the distribution of a site whose value is fixed."""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints

from svigraph.distributions.mixin import TorchDistribution, copy_mixin_state


def _log_density_tensor(log_density, v, batch_shape):
    dtype = v.dtype if v.is_floating_point() else torch.get_default_dtype()
    log_density = torch.as_tensor(log_density, dtype=dtype, device=v.device)
    try:
        return log_density.expand(batch_shape)
    except RuntimeError as err:
        raise ValueError(
            f"Delta: log_density of shape {tuple(log_density.shape)} does not broadcast "
            f"to batch_shape {tuple(batch_shape)}"
        ) from err


class Delta(TorchDistribution):
    """Point mass at ``v``.

    ``support`` is real-valued (``constraints.real``, made independent over the event
    dims), not ``constraints.dependent``, so that ``biject_to(support)`` and sample
    validation work. ``log_prob(x)`` is ``log_density`` where ``x`` equals ``v`` over all
    event dims and ``-inf`` elsewhere; ``rsample`` returns ``v`` with its gradient.

    Args:
        v: the location of the mass; its rightmost ``event_dim`` dims are the event.
        log_density: added to log_prob at ``v`` (a float or a tensor of batch_shape).
        event_dim: how many rightmost dims of ``v`` form one event.
        validate_args: as for torch distributions.
    """

    arg_constraints = {"v": constraints.dependent, "log_density": constraints.real}
    has_enumerate_support = False

    def __init__(self, v, log_density=0.0, event_dim=0, validate_args=None):
        v = torch.as_tensor(v)
        if not 0 <= event_dim <= v.dim():
            raise ValueError(
                f"Delta: event_dim={event_dim} must lie in 0..{v.dim()} for v of shape "
                f"{tuple(v.shape)}"
            )
        split = v.dim() - event_dim
        batch_shape, event_shape = v.shape[:split], v.shape[split:]
        self.v = v
        self.log_density = _log_density_tensor(log_density, v, batch_shape)
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    def _natural_has_rsample(self):
        return True

    @property
    def support(self):
        if self.event_dim == 0:
            return constraints.real
        return constraints.independent(constraints.real, self.event_dim)

    @property
    def mean(self):
        return self.v

    @property
    def variance(self):
        return torch.zeros_like(self.v)

    def rsample(self, sample_shape=torch.Size()):
        self._require_rsample()
        return self.v.expand(self._extended_shape(sample_shape))

    def sample(self, sample_shape=torch.Size()):
        return self.v.detach().expand(self._extended_shape(sample_shape))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        equal = value == self.v
        if self.event_dim:
            equal = equal.flatten(-self.event_dim).all(-1)
        minus_inf = self.log_density.new_tensor(-math.inf)
        return torch.where(equal, self.log_density, minus_inf)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Delta, _instance)
        batch_shape = torch.Size(batch_shape)
        new.v = self.v.expand(batch_shape + self.event_shape)
        new.log_density = self.log_density.expand(batch_shape)
        super(Delta, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return copy_mixin_state(self, new)
