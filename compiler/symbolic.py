"""The objective and surrogate as sympy expressions, and their compact ASCII form. Pure.

One symbol per log-prob term (``model:obs``, ``guide:z``); a plated term is an indexed
symbol summed over its plate with a sympy ``Sum``; ``stop(.)`` marks a stop-gradient. The
surrogate is the "magic box" form (Foerster et al. 2018): it has the objective's value, and
each score site adds ``score * stop(cost)`` whose value is subtracted back at run time.
"""

from __future__ import annotations

import sympy as sp

stop = sp.Function("stop")
KL = sp.Function("KL")


def term_plates(graph, term):
    attrs = graph.nodes[term[1]]
    return attrs["guide_plates"] if term[0] == "guide" else attrs["plates"]


def _index(plate):
    return sp.Symbol(f"i_{plate}", integer=True, nonnegative=True)


def term_name(term):
    """``model:obs``, ``guide:z``, or ``KL(q_z||p_z)`` for an analytic KL term."""
    return f"KL(q_{term[1]}||p_{term[1]})" if term[0] == "kl" else f"{term[0]}:{term[1]}"


def _symbol(graph, term):
    plates = term_plates(graph, term)
    if term[0] == "kl":  # KL(q_z, p_z): a function of the two distributions, per plate index
        q, p = f"q_{term[1]}", f"p_{term[1]}"
        if not plates:
            return KL(sp.Symbol(q), sp.Symbol(p))
        index = tuple(_index(pl) for pl in plates)
        return KL(sp.IndexedBase(q)[index], sp.IndexedBase(p)[index])
    name = term_name(term)
    if not plates:
        return sp.Symbol(name)
    return sp.IndexedBase(name)[tuple(_index(p) for p in plates)]


def _sum_over(graph, expr, plates):
    for plate in reversed(plates):
        size = graph.graph["plates"][plate]["subsample_size"]
        expr = sp.Sum(expr, (_index(plate), 0, size - 1))
    return expr


def _scale(graph, plates):
    factor = sp.Integer(1)
    for p in plates:
        info = graph.graph["plates"][p]
        if info["size"] != info["subsample_size"]:
            factor *= sp.Rational(info["size"], info["subsample_size"])
    return factor


def term_expr(graph, term, keep=()):
    """A term summed over its plates except ``keep``, scaled for subsampling."""
    plates = term_plates(graph, term)
    summed = [p for p in plates if p not in keep]
    return _scale(graph, plates) * _sum_over(graph, _symbol(graph, term), summed)


def build_objective(graph, terms, scores, costs, baselines=(), stopped=frozenset(),
                    enum_terms=()):
    """(objective, surrogate) sympy expressions of a plan.

    Args:
        baselines: sites that have a baseline.
        stopped: terms that enter the surrogate without gradient (score sites' log q).
    """
    # n-ary Add: summing pairwise re-canonicalizes ever longer sums (quadratic or worse)
    signed = [(term_expr(graph, t), 1 if t[0] == "model" else -1, t) for t in terms]
    marginal = ([sp.Function("logsumexp")(*(sp.Symbol(f"{p}:{n}") for p, n in enum_terms))]
                if enum_terms else [])
    elbo = sp.Add(*(e * sign for e, sign, _ in signed), *marginal)
    pieces = marginal + [(stop(e) if t in stopped else e) * sign for e, sign, t in signed]
    for site, program in scores:
        own = term_plates(graph, (program, site))
        cost = [term_expr(graph, t, keep=own) * (1 if t[0] == "model" else -1)
                for t in costs[site]]
        if site in baselines:
            cost.append(-sp.Symbol(f"baseline:{site}"))
        pieces.append(_sum_over(graph, _symbol(graph, (program, site)) * stop(sp.Add(*cost)), own))
    return elbo, sp.Add(*pieces)


# ---- compact ASCII: "sum[data](model:obs)" ----------------------------------------------

def format_term(graph, term, keep=()):
    plates = [p for p in term_plates(graph, term) if p not in keep]
    text = term_name(term)
    for plate in reversed(plates):
        text = f"sum[{plate}]({text})"
    return text


def format_sum(graph, terms, keep=(), stopped=()):
    out = ""
    for t in terms:
        piece = format_term(graph, t, keep)
        if t in stopped:
            piece = f"stop({piece})"
        if not out:
            out = piece if t[0] == "model" else f"-{piece}"
        else:
            out += f" + {piece}" if t[0] == "model" else f" - {piece}"
    return out or "0"
