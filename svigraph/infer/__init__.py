"""Inference: SVI and the ELBO family."""

from svigraph.infer.elbo import ELBO
from svigraph.infer.svi import SVI
from svigraph.infer.abstract_infer import EmpiricalMarginal, TracePosterior, TracePredictive
from svigraph.infer.importance import Importance
from svigraph.infer.predictive import Predictive
from svigraph.handlers import config_enumerate
from svigraph.infer.discrete import infer_discrete
from svigraph.infer.trace_elbo import Trace_ELBO, TraceGraph_ELBO
from svigraph.infer.traceenum_elbo import TraceEnum_ELBO
from svigraph.infer.trace_mean_field_elbo import TraceMeanField_ELBO
from svigraph.infer.jit_elbo import JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO
from svigraph.infer.renyi_elbo import RenyiELBO

__all__ = ["ELBO", "SVI", "Trace_ELBO", "TraceEnum_ELBO", "TraceGraph_ELBO", "config_enumerate",
           "JitTrace_ELBO", "JitTraceEnum_ELBO", "JitTraceGraph_ELBO"]
__all__ += ["EmpiricalMarginal", "Importance", "Predictive", "TracePosterior", "TracePredictive"]
__all__ += ["RenyiELBO"]
__all__ += ["TraceMeanField_ELBO"]
__all__ += ["infer_discrete"]
