"""KL divergences derived symbolically (sympy) for family pairs torch's registry lacks.

For q and p with densities written below, ``KL(q || p) = E_q[log q(x)] - E_q[log p(x)]``.
Both log densities are expanded into sums of ``coefficient * g(x)`` with ``g`` a product of
``x**k``, ``log(x)**n``, ``(1 - x)**j`` and ``log(1 - x)**m``; each ``E_q[g(x)]`` comes from
q's generating function ``M(t, s) = E_q[x**t (1 - x)**s]`` (positive and unit-interval
support) or its moment generating function ``E_q[exp(t x)]`` (real support), by
differentiation: ``E_q[x**k log(x)**n] = d^n M / dt^n at t = k``. A term of any other shape
(``log(1 - x**a)`` under a Beta, say) has no closed form here, and the pair is refused with
that reason, so the caller falls back to Monte Carlo.

The generating functions are the standard closed forms (Gamma and Beta integrals, the normal
MGF); ``tests/compiler/test_analytic_kl.py`` checks every derived KL against numerical
quadrature and against torch's registry where it has the pair. Derivations are cached; the
compiled callables take torch tensors (lgamma, digamma, polygamma) and broadcast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import sympy as sp

X = sp.Symbol("x")
_T, _S = sp.symbols("t s")


class NoClosedForm(Exception):
    """The pair's KL is not derivable in closed form by this module (the reason says why)."""


@dataclass(frozen=True)
class Family:
    """A distribution family as sympy sees it.

    Attributes:
        name: the torch class name.
        params: torch attribute names of its parameters, in the order ``log_density`` takes.
        support: "real", "positive" or "unit".
        log_density: ``(x, *params) -> sympy expression``.
        generating: ``(t, s, *params) -> E[x**t (1-x)**s]`` (positive/unit; ``s`` is used for
            "unit" only), ``(t, *params) -> E[exp(t x)]`` (real), or None if q cannot be this
            family (no closed-form entropy in this basis).
    """

    name: str
    params: tuple
    support: str
    log_density: Callable
    generating: Optional[Callable] = None


_LOG_2PI = sp.log(2 * sp.pi)

FAMILIES = {f.name: f for f in (
    Family("Normal", ("loc", "scale"), "real",
           lambda x, m, s: -sp.log(s) - _LOG_2PI / 2 - (x - m) ** 2 / (2 * s ** 2),
           lambda t, m, s: sp.exp(m * t + s ** 2 * t ** 2 / 2)),
    Family("LogNormal", ("loc", "scale"), "positive",
           lambda x, m, s: -sp.log(x) - sp.log(s) - _LOG_2PI / 2
           - (sp.log(x) - m) ** 2 / (2 * s ** 2),
           lambda t, _s, m, s: sp.exp(m * t + s ** 2 * t ** 2 / 2)),
    Family("Gamma", ("concentration", "rate"), "positive",
           lambda x, a, b: a * sp.log(b) - sp.loggamma(a) + (a - 1) * sp.log(x) - b * x,
           lambda t, _s, a, b: sp.gamma(a + t) / (sp.gamma(a) * b ** t)),
    Family("Exponential", ("rate",), "positive",
           lambda x, r: sp.log(r) - r * x,
           lambda t, _s, r: sp.gamma(1 + t) / r ** t),
    Family("HalfNormal", ("scale",), "positive",
           lambda x, s: sp.log(2) / 2 - sp.log(s) - sp.log(sp.pi) / 2 - x ** 2 / (2 * s ** 2),
           lambda t, _s, s: s ** t * 2 ** (t / 2) * sp.gamma((t + 1) / 2) / sp.sqrt(sp.pi)),
    Family("Weibull", ("scale", "concentration"), "positive",
           lambda x, lam, k: sp.log(k) - k * sp.log(lam) + (k - 1) * sp.log(x) - (x / lam) ** k,
           lambda t, _s, lam, k: lam ** t * sp.gamma(1 + t / k)),
    Family("Beta", ("concentration1", "concentration0"), "unit",
           lambda x, a, b: (a - 1) * sp.log(x) + (b - 1) * sp.log(1 - x)
           - sp.loggamma(a) - sp.loggamma(b) + sp.loggamma(a + b),
           lambda t, s, a, b: (sp.gamma(a + t) * sp.gamma(b + s) * sp.gamma(a + b)
                               / (sp.gamma(a) * sp.gamma(b) * sp.gamma(a + b + t + s)))),
    # As a prior only: E_q[log(1 - x**a)] has no closed form under these q (an infinite
    # series), which this module reports, so Beta || Kumaraswamy falls back to Monte Carlo.
    Family("Kumaraswamy", ("concentration1", "concentration0"), "unit",
           lambda x, a, b: sp.log(a) + sp.log(b) + (a - 1) * sp.log(x)
           + (b - 1) * sp.log(1 - x ** a)),
)}

_NESTED_SUPPORT = {("real", "real"), ("positive", "positive"), ("unit", "unit"),
                   ("unit", "positive")}


def _param_symbols(family, tag):
    # every parameter here is positive but a location (real)
    return tuple(sp.Symbol(f"{p}_{tag}", real=True, positive=p != "loc") for p in family.params)


def _split_factor(factor, one_minus_x):
    """A factor of g(x) as (k, n, j, m): x**k log(x)**n (1-x)**j log(1-x)**m, or None."""
    base, exp = factor.as_base_exp()
    if exp.has(X):
        return None
    if base == X:
        return (exp, 0, 0, 0)
    if base == one_minus_x:
        return (0, 0, exp, 0)
    if isinstance(base, sp.log) and exp.is_Integer and exp > 0:
        if base.args[0] == X:
            return (0, exp, 0, 0)
        if base.args[0] == one_minus_x:
            return (0, 0, 0, exp)
    return None


def _expect_term(g, q, q_syms):
    """E_q[g(x)] for one x-dependent factor ``g`` (a product), or raise NoClosedForm."""
    one_minus_x = 1 - X
    k = n = j = m = sp.Integer(0)
    for factor in sp.Mul.make_args(g):
        split = _split_factor(factor, one_minus_x)
        if split is None:
            raise NoClosedForm(f"E_q[{g}] under {q.name} has no closed form here")
        k, n, j, m = k + split[0], n + split[1], j + split[2], m + split[3]
    if q.generating is None:
        raise NoClosedForm(f"{q.name} has no generating function here (as q)")
    if q.support == "real":
        if n or j or m or not (k.is_Integer and k >= 0):
            raise NoClosedForm(f"E_q[{g}] under {q.name} (real support) has no closed form here")
        return sp.diff(q.generating(_T, *q_syms), _T, int(k)).subs(_T, 0)
    if (j or m) and q.support != "unit":
        raise NoClosedForm(f"E_q[{g}] needs x < 1, but {q.name} is positive")
    expr = q.generating(_T, _S, *q_syms)
    if n:
        expr = sp.diff(expr, _T, int(n))
    if m:
        expr = sp.diff(expr, _S, int(m))
    return expr.subs({_T: k, _S: j})


def expectation(log_density, q, q_syms):
    """E_q[log_density(x)] in closed form (sympy), or raise NoClosedForm."""
    expanded = sp.expand(sp.expand_log(log_density, force=True), power_base=True,
                         power_exp=True, log=True, force=True)
    total = []
    for term in sp.Add.make_args(expanded):
        coeff, g = term.as_independent(X, as_Add=False)
        total.append(coeff if g == 1 else coeff * _expect_term(g, q, q_syms))
    return sp.Add(*total)


@dataclass(frozen=True)
class DerivedKL:
    """A derived ``KL(q || p)``: the sympy expression and its compiled torch callable.

    ``fn(*q_params, *p_params)`` takes tensors named by ``q_params`` / ``p_params`` (torch
    attribute names) and returns the KL, broadcast over them.
    """

    q: str
    p: str
    q_params: tuple
    p_params: tuple
    q_symbols: tuple
    p_symbols: tuple
    expr: sp.Expr
    fn: Callable

    def __call__(self, q_dist, p_dist):
        """KL between two torch distributions of these families, over their batch shape."""
        import torch
        args = [getattr(q_dist, a) for a in self.q_params] + \
               [getattr(p_dist, a) for a in self.p_params]
        out = self.fn(*args)
        shape = torch.broadcast_shapes(q_dist.batch_shape, p_dist.batch_shape)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out, dtype=args[0].dtype, device=args[0].device)
        return out.expand(shape) if out.shape != shape else out


def _torch_namespace():
    import torch

    def polygamma(n, x):
        return torch.digamma(x) if int(n) == 0 else torch.polygamma(int(n), x)

    return {"loggamma": torch.lgamma, "polygamma": polygamma, "digamma": torch.digamma,
            "gamma": lambda x: torch.exp(torch.lgamma(x)), "log": torch.log, "exp": torch.exp,
            "sqrt": torch.sqrt}


@functools.lru_cache(maxsize=None)
def derive_expr(q_name, p_name):
    """The sympy expression of KL(q || p) and the parameter symbols (q's, p's).

    Raises:
        NoClosedForm: an unknown family, supports that do not nest, or a term of log p (or
            log q) whose expectation under q has no closed form here.
    """
    if q_name not in FAMILIES or p_name not in FAMILIES:
        unknown = q_name if q_name not in FAMILIES else p_name
        raise NoClosedForm(f"no symbolic density for {unknown}")
    q, p = FAMILIES[q_name], FAMILIES[p_name]
    if (q.support, p.support) not in _NESTED_SUPPORT:
        raise NoClosedForm(f"{q.name}'s support ({q.support}) is not inside {p.name}'s "
                           f"({p.support}): the KL is infinite")
    q_syms, p_syms = _param_symbols(q, "q"), _param_symbols(p, "p")
    kl = expectation(q.log_density(X, *q_syms), q, q_syms) - \
        expectation(p.log_density(X, *p_syms), q, q_syms)
    # gamma(z)/gamma(z) ratios cancelled on their own; the gamma functions left are put in
    # log space (exp(loggamma(a) - loggamma(b)) does not overflow where gamma(a) would)
    kl = sp.expand(sp.expand_func(kl)).replace(sp.gamma, lambda z: sp.exp(sp.loggamma(z)))
    kl = sp.Add(*(sp.powsimp(t, combine="exp") for t in sp.Add.make_args(kl)))
    return kl, q_syms, p_syms


@functools.lru_cache(maxsize=None)
def derive(q_name, p_name):
    """The compiled ``DerivedKL`` of KL(q || p) (cached), or raise NoClosedForm."""
    kl, q_syms, p_syms = derive_expr(q_name, p_name)
    # constants (log(pi)/2, EulerGamma...) as floats: torch.log takes tensors only
    fn = sp.lambdify(q_syms + p_syms, kl.evalf(17), modules=[_torch_namespace(), "math"])
    return DerivedKL(q_name, p_name, FAMILIES[q_name].params, FAMILIES[p_name].params,
                     q_syms, p_syms, kl, fn)
