"""``Empirical``: a weighted bag of samples, viewed as a distribution.

Importance sampling and other Monte Carlo posteriors end up with samples ``x_i`` and log
weights ``w_i``; ``Empirical`` puts mass ``softmax(w)_i`` on each ``x_i``, so posterior
summaries (``mean``, ``variance``, ``log_prob``, ``sample``) read like any distribution's.
"""

from __future__ import annotations

import torch
from torch.distributions import constraints

from compiler.errors import ShapeMismatchError
from svigraph.distributions.mixin import TorchDistribution


class Empirical(TorchDistribution):
    """Mass ``softmax(log_weights)`` on each of ``samples``.

    The samples are stacked along the rightmost dim of ``log_weights`` (the aggregation dim):
    ``samples.shape = log_weights.shape + event_shape`` and ``batch_shape`` is
    ``log_weights.shape[:-1]`` (one empirical distribution per batch entry, e.g. per chain).

    Args:
        samples: the sampled values, stacked.
        log_weights: unnormalized log weights, the leftmost shape of ``samples``.

    Example:
        >>> d = Empirical(torch.tensor([0.0, 1.0, 1.0]), torch.zeros(3))
        >>> d.mean, d.log_prob(torch.tensor(1.0)).exp()
        (tensor(0.6667), tensor(0.6667))
    """

    arg_constraints = {}
    support = constraints.real
    has_enumerate_support = True

    def __init__(self, samples, log_weights, validate_args=None):
        samples, log_weights = torch.as_tensor(samples), torch.as_tensor(log_weights)
        n = log_weights.dim()
        if n == 0 or samples.shape[:n] != log_weights.shape:
            raise ShapeMismatchError(
                f"Empirical: log_weights of shape {tuple(log_weights.shape)} must be the leftmost "
                f"shape of samples {tuple(samples.shape)}",
                ["one log weight per sample, aligned on the leftmost dims"],
                "stack the samples along dim 0 and pass a log weight vector of that length",
                shapes={"samples": tuple(samples.shape), "log_weights": tuple(log_weights.shape)})
        self._samples = samples
        self._log_weights = log_weights
        self._aggregation_dim = n - 1
        super().__init__(log_weights.shape[:-1], samples.shape[n:], validate_args=False)

    def _natural_has_rsample(self):
        return False

    @property
    def sample_size(self):
        """int: how many samples make up the distribution."""
        return self._log_weights.numel()

    @property
    def log_weights(self):
        """The unnormalized log weights, as given."""
        return self._log_weights

    def _probs(self):
        """Normalized weights along the aggregation dim."""
        return torch.softmax(self._log_weights, dim=-1)

    def sample(self, sample_shape=torch.Size()):
        """Draw stored samples with probability proportional to their weights."""
        sample_shape = torch.Size(sample_shape)
        probs = self._probs().reshape(-1, self._log_weights.shape[-1])
        count = max(1, sample_shape.numel())
        idx = torch.multinomial(probs, count, replacement=True)          # batch x count
        idx = idx.reshape(self.batch_shape + (count,))
        gather_idx = idx.reshape(idx.shape + (1,) * len(self.event_shape)).expand(
            self.batch_shape + (count,) + self.event_shape)
        drawn = self._samples.gather(self._aggregation_dim, gather_idx)  # batch x count x event
        drawn = drawn.movedim(self._aggregation_dim, 0)
        return drawn.reshape(sample_shape + self.batch_shape + self.event_shape)

    def log_prob(self, value):
        """Log of the total weight of the stored samples equal to ``value`` (``-inf`` if none).

        ``value`` has shape ``batch_shape + event_shape`` (no sample dims).
        """
        value = torch.as_tensor(value, dtype=self._samples.dtype, device=self._samples.device)
        expected = self.batch_shape + self.event_shape
        if value.shape != expected:
            raise ShapeMismatchError(
                f"Empirical.log_prob: value of shape {tuple(value.shape)}, expected "
                f"{tuple(expected)} (batch_shape + event_shape)",
                [f"batch_shape {tuple(self.batch_shape)}, event_shape {tuple(self.event_shape)}"],
                "score one value at a time; loop (or vmap) over sample dims",
                shapes={"value": tuple(value.shape), "expected": tuple(expected)})
        equal = self._samples == value.unsqueeze(self._aggregation_dim)
        equal = equal.reshape(equal.shape[:self._aggregation_dim + 1] + (-1,)).all(-1)
        log_probs = torch.log_softmax(self._log_weights, dim=-1)
        return torch.where(equal, log_probs, log_probs.new_full((), -float("inf"))).logsumexp(-1)

    def _weighted_mean(self, value):
        probs = self._probs()
        probs = probs.reshape(probs.shape + (1,) * (value.dim() - probs.dim()))
        return (value * probs).sum(self._aggregation_dim)

    def _check_floating(self, what):
        if not self._samples.is_floating_point():
            raise TypeError(
                f"Empirical.{what}: samples have dtype {self._samples.dtype}, whose {what} is "
                "undefined; convert them with .float() (or use a one-hot encoding for "
                "categories)")

    @property
    def mean(self):
        """The weighted mean of the samples."""
        self._check_floating("mean")
        return self._weighted_mean(self._samples)

    @property
    def variance(self):
        """The weighted (plug-in, not bias-corrected) variance of the samples."""
        self._check_floating("variance")
        mean = self.mean.unsqueeze(self._aggregation_dim)
        return self._weighted_mean((self._samples - mean).pow(2))

    def enumerate_support(self, expand=True):
        """The stored samples (with repeats), stacked along the aggregation dim."""
        return self._samples
