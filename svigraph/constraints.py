"""torch's constraints, re-exported: ``from svigraph import constraints``."""

from torch.distributions.constraints import *  # noqa: F401,F403
from torch.distributions.constraints import __all__  # noqa: F401
