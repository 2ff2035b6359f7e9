"""The Plan: everything the compiler decided, as immutable data the runtime executes.

``CostTerm`` is a pair ``("model", site)`` for log p or ``("guide", site)`` for log q.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping, Optional

CostTerm = tuple  # ("model" | "guide", site name)


@dataclass(frozen=True)
class BaselineSpec:
    """How a score-function site's baseline is built (its state lives in the runtime)."""

    kind: str                      # "decaying_avg" | "nn" | "value" | "loo"
    beta: Optional[float] = None
    module_name: Optional[str] = None
    dim: Optional[int] = None      # the particle dim, for "loo"


@dataclass(frozen=True)
class SitePlan:
    """What the compiler decided for one sample site.

    Attributes:
        estimator: "pathwise", "score_function", "enumerate", "analytic_kl", "observed"
            or "prior" (a model latent drawn from its prior, by explicit opt-in).
        cost: the terms a score-function site is Rao-Blackwellized against.
        baseline: a BaselineSpec or None.
        note: a compiler remark for the printed plan (the analytic KL rule used, or why a
            site kept Monte Carlo terms).
    """

    name: str
    estimator: str
    plates: tuple = ()
    cost: tuple = ()
    baseline: Optional[BaselineSpec] = None
    enum_dim: Optional[int] = None
    source: tuple = ()
    note: str = ""


@dataclass(frozen=True)
class TermPlan:
    """One log-prob term of the ELBO: read ``site`` in ``program``, sign +1 (model) or -1.

    ``stop_gradient``: the term adds its value to the ELBO but no gradient. Set for the log q
    of a score-function site: its direct gradient has expectation zero (E_q[grad log q] = 0),
    so dropping it keeps the estimator unbiased and removes its variance.
    """

    key: CostTerm
    site: str
    program: str
    stop_gradient: bool = False
    reads: tuple = ()  # for an enumeration factor: the enumerated sites its tensor varies with


@dataclass(frozen=True)
class ScorePlan:
    """How to assemble one score-function surrogate term each step.

    ``score_dims``: dims of the site's log-prob to sum (keepdim) before the product, those not
    in its plates. ``costs``: (term, dims to sum keepdim) pairs for terms sharing a plate with
    the site, so slice n of a plate sees only slice n of its costs. ``whole_terms``: indices
    into ``Plan.terms`` of the cost terms summed whole (no shared plate); the runtime gets
    all of those sums at once as one matrix-vector product.
    """

    site: str
    program: str
    score_dims: tuple
    costs: tuple
    baseline: Optional[BaselineSpec] = None
    whole_terms: tuple = ()


@dataclass(frozen=True, eq=False)
class Plan:
    """A compiled variational objective for one model/guide structure.

    Inspect it with ``print(plan)``, ``plan.graph`` (networkx), ``plan.sites``,
    ``plan.objective`` / ``plan.surrogate`` (sympy) and ``plan.to_dot()``; execute it with
    ``plan.loss(*args)``, ``plan.differentiable_loss(*args)``, ``plan.loss_and_grads(*args)``.
    """

    graph: Any
    loss_name: str
    options: tuple
    plates: Mapping
    sites: Mapping
    params: tuple
    terms: tuple
    scores: tuple
    key: Any
    key_hash: str
    enum_terms: tuple = ()  # model terms summed out exactly by a plated contraction
    kl_terms: tuple = ()  # ("kl", site) terms: analytic KL(q || p), entering the ELBO negated
    guide_enum: tuple = ()  # guide sites enumerated in parallel: the ELBO is weighted by q
    # the ContractionPlan of enum_terms (steps, opt_einsum paths, peaks, scans), planned from
    # the first run's log-prob shapes when the plan is made; None when no model site is
    # summed out
    contraction: Any = field(default=None, compare=False, repr=False)
    symbolic: Any = field(default=None, compare=False, repr=False)  # () -> (objective, surrogate)
    runner: Any = field(default=None, compare=False, repr=False)

    # ---- symbolic forms: built on first use (sympy is slow on plans of thousands of sites)
    @cached_property
    def _symbolic_pair(self):
        return self.symbolic()

    @property
    def objective(self):
        """The ELBO as a sympy expression: one symbol per term, plate sums as ``Sum``."""
        return self._symbolic_pair[0]

    @property
    def surrogate(self):
        """The surrogate objective (sympy), with ``stop(.)`` for stop-gradient."""
        return self._symbolic_pair[1]

    def latex(self):
        """LaTeX of the objective and the surrogate."""
        import sympy
        return (f"\\mathcal{{L}} = {sympy.latex(self.objective)}\n"
                f"\\tilde{{\\mathcal{{L}}}} = {sympy.latex(self.surrogate)}")

    # ---- execution: delegated to the objective that compiled the plan -------------------
    def _require_runner(self):
        if self.runner is None:
            raise RuntimeError("this plan was compiled from a bare graph and cannot run; "
                               "build it with sg.compile(model, guide, *args) to execute it")
        return self.runner

    def loss(self, *args, **kwargs):
        """The −ELBO estimate, a float."""
        return self._require_runner().loss(*args, **kwargs)

    def differentiable_loss(self, *args, **kwargs):
        """A tensor: value −ELBO estimate, gradient an unbiased estimate of −∇ELBO."""
        return self._require_runner().differentiable_loss(*args, **kwargs)

    def loss_and_grads(self, *args, **kwargs):
        """The −ELBO estimate as a float, with ``backward()`` already done."""
        return self._require_runner().loss_and_grads(*args, **kwargs)

    # ---- inspection ---------------------------------------------------------------------
    def __str__(self):
        from compiler.printing import format_plan
        return format_plan(self)

    def __repr__(self):
        return f"<Plan {self.loss_name} key={self.key_hash} sites={len(self.sites)}>"

    def pretty(self, source=False, full=False):
        """The printed plan; ``source`` adds each site's file:line, ``full`` lists every site
        and term of a long plan (``str(plan)`` prints the ends of long sections)."""
        from compiler.printing import format_plan
        return format_plan(self, source=source, full=full)

    def to_dot(self):
        """Graphviz DOT text of the dependency graph (plates as clusters)."""
        from compiler.dot import to_dot
        return to_dot(self)

    def render(self, path):
        """Write the graph as SVG or PNG (by ``path``'s suffix) with Graphviz's ``dot``."""
        from compiler.dot import render
        return render(self, path)

    def score_function_sites(self):
        return [name for name, s in self.sites.items() if s.estimator == "score_function"]
