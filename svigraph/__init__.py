"""svigraph: a symbolic graph compiler for stochastic variational inference in PyTorch.

Write a model and a guide with ``sample`` / ``param`` / ``plate``; svigraph traces them once
into a dependency graph, compiles a Plan (estimators, Rao-Blackwellized costs, baselines),
and runs it every training step.
"""

from svigraph import constraints, distributions, errors, handlers, infer, optim, poutine  # noqa: F401
from svigraph import ops  # noqa: F401
from svigraph.compiling import compile
from svigraph.params import clear_param_store, get_param_store
from svigraph.primitives import factor, markov, module, param, plate, sample, set_rng_seed

__version__ = "0.1.0"

__all__ = ["clear_param_store", "compile", "constraints", "distributions", "errors", "factor",
           "get_param_store", "handlers", "infer", "markov", "module", "optim", "param",
           "plate", "poutine", "sample", "set_rng_seed"]
