"""``sg.compile``: trace a model and guide once and return the Plan an objective would run."""

from __future__ import annotations


def compile(model, guide, *args, loss=None, **kwargs):
    """Compile ``model`` and ``guide`` for ``loss`` (default ``TraceGraph_ELBO()``).

    The returned Plan is the one ``loss`` caches and runs for this structure, so
    ``plan.loss(*args)`` and ``loss.loss(model, guide, *args)`` execute the same thing.

    Example:
        >>> plan = sg.compile(model, guide, data, loss=sg.infer.Trace_ELBO())
        >>> print(plan)            # estimators, costs, objective
        >>> plan.graph.edges       # the dependency graph (networkx)
    """
    if loss is None:
        from svigraph.infer import TraceGraph_ELBO
        loss = TraceGraph_ELBO()
    return loss.compile(model, guide, *args, **kwargs)
