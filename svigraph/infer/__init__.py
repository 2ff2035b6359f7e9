"""Inference: SVI and the ELBO family."""

from svigraph.infer.elbo import ELBO
from svigraph.infer.svi import SVI
from svigraph.handlers import config_enumerate
from svigraph.infer.trace_elbo import Trace_ELBO, TraceGraph_ELBO
from svigraph.infer.traceenum_elbo import TraceEnum_ELBO

__all__ = ["ELBO", "SVI", "Trace_ELBO", "TraceEnum_ELBO", "TraceGraph_ELBO", "config_enumerate"]
