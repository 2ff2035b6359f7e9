"""Distributions for svigraph models and guides.

Every family is a subclass of the torch class of the same name (``isinstance`` against
torch holds, constructors are torch's) with :class:`TorchDistributionMixin` first in its
bases. The mixin adds:

* ``expand`` that works for any subclass and returns the same subclass;
* ``to_event(n)``: reinterpret batch dims as event dims (an :class:`Independent`);
* ``mask(mask)``: a :class:`MaskedDistribution` whose log_prob is 0 where mask is False;
* ``with_rsample(flag)``: a copy that does (not) expose reparameterized sampling;
* ``event_dim``: ``len(event_shape)``.

:class:`Delta` (a point mass) and :class:`MaskedDistribution` are svigraph's own.
``constraints``, ``transforms``, ``kl_divergence``, ``register_kl`` and ``biject_to``
are torch's, re-exported.
"""

from torch.distributions import biject_to, constraints, kl_divergence, register_kl, transforms

from svigraph.distributions.compound import MixtureSameFamily, TransformedDistribution
from svigraph.distributions.continuous import (
    Beta,
    Cauchy,
    Chi2,
    ContinuousBernoulli,
    Exponential,
    Gamma,
    Gumbel,
    HalfCauchy,
    HalfNormal,
    Laplace,
    LogNormal,
    Normal,
    Pareto,
    RelaxedBernoulli,
    StudentT,
    Uniform,
    VonMises,
    Weibull,
)
from svigraph.distributions.delta import Delta
from svigraph.distributions.empirical import Empirical
from svigraph.distributions.discrete import (
    Bernoulli,
    Binomial,
    Categorical,
    Geometric,
    Multinomial,
    NegativeBinomial,
    OneHotCategorical,
    Poisson,
)
from svigraph.distributions.independent import Independent
from svigraph.distributions.masked import MaskedDistribution
from svigraph.distributions.mixin import TorchDistribution, TorchDistributionMixin
from svigraph.distributions.multivariate import (
    Dirichlet,
    LKJCholesky,
    LowRankMultivariateNormal,
    MultivariateNormal,
    RelaxedOneHotCategorical,
)

__all__ = [
    "Bernoulli",
    "Beta",
    "Binomial",
    "Categorical",
    "Cauchy",
    "Chi2",
    "ContinuousBernoulli",
    "Delta",
    "Dirichlet",
    "Empirical",
    "Exponential",
    "Gamma",
    "Geometric",
    "Gumbel",
    "HalfCauchy",
    "HalfNormal",
    "Independent",
    "LKJCholesky",
    "Laplace",
    "LogNormal",
    "LowRankMultivariateNormal",
    "MaskedDistribution",
    "MixtureSameFamily",
    "Multinomial",
    "MultivariateNormal",
    "NegativeBinomial",
    "Normal",
    "OneHotCategorical",
    "Pareto",
    "Poisson",
    "RelaxedBernoulli",
    "RelaxedOneHotCategorical",
    "StudentT",
    "TorchDistribution",
    "TorchDistributionMixin",
    "TransformedDistribution",
    "Uniform",
    "VonMises",
    "Weibull",
    "biject_to",
    "constraints",
    "kl_divergence",
    "register_kl",
    "transforms",
]
