"""Trace_ELBO and TraceGraph_ELBO: the same compiled estimator, with all costs or only the
costs downstream of each score-function site.

References: Ranganath et al. (2014) "Black box variational inference"; Schulman et al. (2015)
"Gradient estimation using stochastic computation graphs"; Mnih & Gregor (2014) "Neural
variational inference and learning in belief networks" (baselines).
"""

from __future__ import annotations

from svigraph.infer.elbo import ELBO


class Trace_ELBO(ELBO):
    """Monte Carlo ELBO: pathwise gradients where the guide can reparameterize, score
    function elsewhere. Each score-function site is weighted by every term, except that a
    site in slice n of a plate sees only slice n of the terms in that plate."""

    loss_name = "Trace_ELBO"
    downstream_only = False


class TraceGraph_ELBO(Trace_ELBO):
    """Trace_ELBO with Rao-Blackwellization from the dependency graph: each score-function
    site is weighted only by the terms downstream of it (through data and control
    dependence), which lowers variance and keeps the estimate unbiased."""

    loss_name = "TraceGraph_ELBO"
    downstream_only = True
