"""Stand-ins that change one capability of a real family, for tests and tutorials."""

from svigraph.distributions import Beta, Gamma, Normal


class NonreparameterizedBeta(Beta):
    """Beta sampled without a pathwise gradient: its site gets a score-function estimator."""

    has_rsample = False


class NonreparameterizedGamma(Gamma):
    has_rsample = False


class NonreparameterizedNormal(Normal):
    has_rsample = False
