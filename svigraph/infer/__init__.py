"""Inference: SVI and the ELBO family."""

from svigraph.infer.elbo import ELBO
from svigraph.infer.svi import SVI
from svigraph.infer.trace_elbo import Trace_ELBO, TraceGraph_ELBO

__all__ = ["ELBO", "SVI", "Trace_ELBO", "TraceGraph_ELBO"]
