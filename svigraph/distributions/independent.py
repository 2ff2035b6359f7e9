"""svigraph's ``Independent``: torch's, plus the mixin; nested ``to_event`` calls flatten."""

from __future__ import annotations

import torch

from svigraph.distributions.mixin import TorchDistributionMixin, copy_mixin_state


class Independent(TorchDistributionMixin, torch.distributions.Independent):
    """Reinterpret batch dims of ``base_distribution`` as event dims (see torch's docs).

    ``has_rsample`` follows the base distribution, so a base made with
    ``with_rsample(False)`` stays non-reparameterized once wrapped.
    """

    def to_event(self, reinterpreted_batch_ndims=None):
        """Like the mixin's, but folds into this wrapper instead of nesting another."""
        n = self._check_to_event(reinterpreted_batch_ndims)
        if n == 0:
            return self
        new = Independent(self.base_dist, self.reinterpreted_batch_ndims + n)
        return copy_mixin_state(self, new)
