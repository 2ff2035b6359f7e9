"""``svigraph.poutine``: another name for ``svigraph.handlers``, for code written for Pyro."""

from svigraph.handlers import *  # noqa: F401,F403
from svigraph.handlers import block, condition, mask, replay, scale, seed, trace  # noqa: F401
from svigraph.trace_struct import Trace  # noqa: F401
