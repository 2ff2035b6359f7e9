"""``TorchDistributionMixin``: the methods svigraph adds on top of torch distributions."""

from __future__ import annotations

import contextvars
import copy

import torch

# Name of the instance attribute that holds a ``with_rsample`` override (absent: no override).
_RSAMPLE_FLAG = "_svigraph_rsample_flag"
# Instance attributes owned by the mixin, carried over by expand / to_event / mask.
_MIXIN_STATE = (_RSAMPLE_FLAG,)

# True while inside ``sample()``: torch implements many ``sample``s as ``rsample`` under
# ``no_grad``, which must keep working when reparameterized sampling is switched off.
_IN_SAMPLE = contextvars.ContextVar("svigraph_in_sample", default=False)


class _sampling:
    """Context manager: ``_IN_SAMPLE`` true inside (a class, not a generator: it runs for
    every guide sample)."""

    __slots__ = ("token",)

    def __enter__(self):
        self.token = _IN_SAMPLE.set(True)

    def __exit__(self, *exc):
        _IN_SAMPLE.reset(self.token)


def copy_mixin_state(src, dst):
    """Copy the mixin-owned instance attributes (e.g. the rsample flag) from ``src`` to ``dst``."""
    for key in _MIXIN_STATE:
        if key in src.__dict__:
            dst.__dict__[key] = src.__dict__[key]
    return dst


def _describe(d):
    """Class names down a chain of wrappers, e.g. ``Independent(Bernoulli)``."""
    base = getattr(d, "base_dist", None)
    name = type(d).__name__
    return name if base is None else f"{name}({_describe(base)})"


def _rsample_disabled(d):
    """Whether ``d`` or a distribution it wraps was made with ``with_rsample(False)``."""
    while d is not None:
        if d.__dict__.get(_RSAMPLE_FLAG) is False:
            return True
        d = getattr(d, "base_dist", None)
    return False


class TorchDistributionMixin:
    """Adds ``expand`` for subclasses, ``to_event``, ``mask``, ``with_rsample``, ``event_dim``.

    Place it first in the bases, before the torch distribution class, so that its
    ``expand``, ``has_rsample``, ``rsample`` and ``sample`` take precedence.
    """

    @property
    def event_dim(self):
        """int: the number of event dimensions, ``len(event_shape)``."""
        return len(self.event_shape)

    @property
    def has_rsample(self):
        """bool: whether ``rsample`` is available, honouring any ``with_rsample`` override."""
        flag = self.__dict__.get(_RSAMPLE_FLAG)
        return self._natural_has_rsample() if flag is None else flag

    def _natural_has_rsample(self):
        """Whether the underlying class can rsample; overridden by non-torch subclasses."""
        return super().has_rsample

    def _require_rsample(self):
        """Raise ``NotImplementedError`` unless reparameterized sampling is allowed here."""
        if _IN_SAMPLE.get() or self.has_rsample:
            return
        if _rsample_disabled(self):
            raise NotImplementedError(
                f"rsample() on {_describe(self)} is disabled by .with_rsample(False); use "
                ".sample(), or .with_rsample(True) on that distribution to restore gradients"
            )
        raise NotImplementedError(
            f"{_describe(self)} has no reparameterized sampler; use .sample() instead"
        )

    def rsample(self, sample_shape=torch.Size()):
        """Reparameterized sample; raises ``NotImplementedError`` when ``has_rsample`` is False."""
        self._require_rsample()
        return super().rsample(sample_shape)

    def sample(self, sample_shape=torch.Size()):
        """Sample without a gradient path, whatever ``has_rsample`` says."""
        if _IN_SAMPLE.get():  # inside a wrapper's sample already
            return super().sample(sample_shape)
        with _sampling():
            return super().sample(sample_shape)

    def expand(self, batch_shape, _instance=None):
        """Return a new instance of the same class with batch shape ``batch_shape``.

        Torch's ``expand`` refuses a subclass that defines its own ``__init__`` unless given
        an instance to fill in; the mixin always supplies one of ``type(self)``, so every
        subclass expands without writing its own ``expand``.
        """
        new = self.__new__(type(self)) if _instance is None else _instance
        new = super().expand(batch_shape, _instance=new)
        return copy_mixin_state(self, new)

    def to_event(self, reinterpreted_batch_ndims=None):
        """Reinterpret the rightmost batch dims as event dims.

        Args:
            reinterpreted_batch_ndims: how many batch dims to move into the event;
                ``None`` means all of them.

        Returns:
            ``self`` when the count is 0, else an :class:`~svigraph.distributions.Independent`.

        Raises:
            ValueError: when asked for more dims than the batch has.
        """
        # Imported here because independent.py imports this module.
        from svigraph.distributions.independent import Independent

        n = self._check_to_event(reinterpreted_batch_ndims)
        if n == 0:
            return self
        return Independent(self, n)

    def _check_to_event(self, n):
        batch_rank = len(self.batch_shape)
        if n is None:
            return batch_rank
        if not 0 <= n <= batch_rank:
            raise ValueError(
                f".to_event({n}) on {type(self).__name__} with batch_shape "
                f"{tuple(self.batch_shape)} and event_shape {tuple(self.event_shape)}: "
                f"can reinterpret 0..{batch_rank} batch dims; pass n <= {batch_rank}, or "
                f".expand(...) the distribution to a larger batch_shape first"
            )
        return n

    def mask(self, mask):
        """Return a :class:`MaskedDistribution` whose log_prob is 0 where ``mask`` is False.

        Args:
            mask: a bool, or a bool tensor broadcastable to ``batch_shape``.
        """
        # Imported here because masked.py imports this module.
        from svigraph.distributions.masked import MaskedDistribution

        if mask is True:
            return self
        return MaskedDistribution(self, mask)

    def with_rsample(self, flag=False):
        """Return a shallow copy whose ``has_rsample`` is ``flag``.

        With ``flag=False`` the copy's ``rsample`` raises and ``sample`` still works, so
        inference treats the site as non-reparameterized.

        Raises:
            ValueError: ``flag=True`` on a distribution that cannot rsample.
        """
        if flag and not self._natural_has_rsample():
            raise ValueError(
                f"with_rsample(True): {_describe(self)} has no reparameterized sampler"
            )
        new = copy.copy(self)
        new.__dict__[_RSAMPLE_FLAG] = bool(flag)
        return new


class TorchDistribution(TorchDistributionMixin, torch.distributions.Distribution):
    """Base class for svigraph's own distributions (not wrappers of a torch family)."""
