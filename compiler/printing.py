"""Printed forms of the graph and the plan, one line per site, in program order.

Deterministic (sorted sets, stable order, no tensor data), so tests can pin whole strings.
"""

from __future__ import annotations

import textwrap

from compiler.enumeration_print import format_contraction_plan
from compiler.schema import param_sites, sample_sites
from compiler.symbolic import format_sum, format_term, term_plates

WIDTH = 100
# a long plan (a chain of thousands of sites) prints its ends; plan.pretty(full=True) all
LISTED = 40          # sites, costs: more than this prints HEAD ... TAIL entries
HEAD, TAIL = 30, 5
FORMULA_LINES = 12   # a wrapped formula longer than this prints its first lines and last


def format_type(attrs, plates_info):
    """``f32[3,4]`` (batch | event with a bar when there are event dims) and its plates."""
    batch, event = attrs["batch_shape"], attrs["event_shape"]
    shape = ",".join(map(str, batch))
    if event:
        shape += "|" + ",".join(map(str, event))
    text = f"{attrs['dtype'] or '?'}[{shape}]"
    if attrs["plates"]:
        text += " (" + ", ".join(attrs["plates"]) + ")"
    return text


def _parents(graph, name, program):
    data = sorted((graph.nodes[u]["order"], u) for u, _, d in graph.in_edges(name, data=True)
                  if program in d["via"] and d["kind"] == "data")
    ctrl = sorted((graph.nodes[u]["order"], u) for u, _, d in graph.in_edges(name, data=True)
                  if program in d["via"] and d["kind"] == "control")
    text = ""
    if data:
        text += " <- " + ", ".join(f"%{u}" for _, u in data)
    if ctrl:
        text += " <~ " + ", ".join(f"%{u}" for _, u in ctrl)
    return text


def _site_rhs(graph, name, site_plan):
    attrs = graph.nodes[name]
    parts = [site_plan.estimator if site_plan else attrs["type"]]
    if attrs["guide_fn"]:
        parts.append(f"guide {attrs['guide_fn']}{_parents(graph, name, 'guide')}")
    if attrs["model_fn"]:
        parts.append(f"model {attrs['model_fn']}{_parents(graph, name, 'model')}")
    return "   ".join(parts)


def format_graph(graph):
    """The fx-style listing of a dependency graph."""
    lines = ["graph {"]
    for name in param_sites(graph) + sample_sites(graph):
        attrs = graph.nodes[name]
        lines.append(f"    %{name} : {format_type(attrs, graph.graph['plates'])} = "
                     f"{_site_rhs(graph, name, None)}")
    lines.append("}")
    return "\n".join(lines)


def _wrap(prefix, text, indent):
    return textwrap.wrap(text, WIDTH, initial_indent=prefix,
                         subsequent_indent=" " * indent, break_on_hyphens=False) or [prefix]


def _clip(lines, head, tail, what, full):
    """``lines`` with the middle left out (and said so) when there are many of them."""
    if full or len(lines) <= head + tail + 1:
        return lines
    return lines[:head] + [f"    ... {len(lines) - head - tail} more {what} "
                           "(plan.pretty(full=True) shows all)"] + lines[-tail:]


def format_plan(plan, source=False, full=False):
    """The plan as text. Long sections (more than ``LISTED`` sites or costs, formulas of
    more than ``FORMULA_LINES`` lines) print their ends unless ``full``."""
    graph = plan.graph
    options = ", ".join(f"{k}={v}" for k, v in plan.options)
    lines = [f"plan {plan.loss_name}({options}) {{{' ' * 8}# key {plan.key_hash}"]
    if plan.plates:
        lines += _wrap("  plates  ", "; ".join(
            f"{p}: size={i['size']}" + (f" subsample={i['subsample_size']}"
                                        if i["subsample_size"] != i["size"] else "")
            + (" sequential" if i["sequential"] else f" dim={i['dim']}")
            for p, i in sorted(plan.plates.items())), 10)
    if plan.params:
        lines += _clip(_wrap("  params  ", "; ".join(
            f"%{p}: {format_type(graph.nodes[p], plan.plates)}"
            + (f" {graph.nodes[p]['support']}" if graph.nodes[p]["support"] not in (None, "real")
               else "") for p in plan.params), 10), FORMULA_LINES, 1, "lines", full)
    lines.append("  sites")
    names = list(plan.sites)
    if not full and len(names) > LISTED:
        names = names[:HEAD] + names[-TAIL:]
    width = max((len(n) for n in names), default=0)
    listed = []
    for name in names:
        attrs = graph.nodes[name]
        line = (f"    %{name:<{width}} : {format_type(attrs, plan.plates)} = "
                f"{_site_rhs(graph, name, plan.sites[name])}")
        if source and attrs["source"]:
            line += "   # " + ", ".join(f"{prog} {src}" for prog, src in attrs["source"])
        listed.append(line)
    if len(names) < len(plan.sites):
        listed.insert(HEAD, f"    ... {len(plan.sites) - len(names)} more sites "
                            "(plan.pretty(full=True) shows all)")
    lines += listed
    scored = [(n, s) for n, s in plan.sites.items() if s.cost]
    if scored:
        lines.append("  costs")
        shown = scored if full or len(scored) <= LISTED else scored[:HEAD] + scored[-TAIL:]
        costs = []
        for name, site in shown:
            own = term_plates(graph, ("guide" if site.estimator != "prior" else "model", name))
            text = ", ".join(format_term(graph, t, keep=own) for t in site.cost)
            costs.append(_wrap(f"    %{name} <- ", text, 8))
        if len(shown) < len(scored):
            costs.insert(HEAD, [f"    ... {len(scored) - len(shown)} more costs "
                                "(plan.pretty(full=True) shows all)"])
        lines += [line for block in costs for line in block]
    baselines = [(n, s.baseline) for n, s in plan.sites.items() if s.baseline]
    if baselines:
        lines.append("  baselines")
        for name, spec in baselines:
            params = ", ".join(f"{k}={v}" for k, v in (("beta", spec.beta),
                                                      ("module", spec.module_name)) if v)
            lines.append(f"    %{name} : {spec.kind}" + (f"[{params}]" if params else ""))
    notes = [(n, s.note) for n, s in plan.sites.items() if s.note]
    if notes:
        lines.append("  notes")
        for name, note in notes:
            lines += _wrap(f"    %{name} : ", note, 8)
    marginal = ""
    if plan.enum_terms:
        enumerated = [n for n, site in plan.sites.items() if site.estimator == "enumerate"
                      and graph.nodes[n]["guide_fn"] is None]  # the guide's are kept
        factors = ", ".join(f"{t.key[0]}:{t.key[1]}" for t in plan.enum_terms)
        plates = sorted({p for t in plan.enum_terms for p in graph.nodes[t.site]["plates"]})
        marginal = (f"sum_product[{', '.join(enumerated)}]({factors})"
                    + (f" over plates {', '.join(plates)}" if plates else ""))
        lines.append("  contraction")
        lines += _clip(_wrap("    marg = ", marginal, 11), FORMULA_LINES, 1, "lines", full)
        if plan.contraction is not None:
            lines += ["    " + line for line in format_contraction_plan(plan.contraction)
                      .splitlines()]
    if plan.guide_enum:
        lines.append("  expectation")
        lines += _wrap("    ", f"E_q[{', '.join(plan.guide_enum)}]: each term (and marg) "
                       "weighted by q of the enumerated values it varies with", 4)
    lines.append("  objective")
    elbo = format_sum(graph, [t.key for t in plan.terms + plan.kl_terms])
    if marginal:
        elbo = "marg" if elbo == "0" else f"{elbo} + marg"
    lines += _clip(_wrap("    elbo      = ", elbo, 16), FORMULA_LINES, 1, "lines", full)
    if plan.scores:
        stopped = {t.key for t in plan.terms if t.stop_gradient}
        pieces = [format_sum(graph, [t.key for t in plan.terms + plan.kl_terms],
                             stopped=stopped)]
        for score in plan.scores:
            own = term_plates(graph, (score.program, score.site))
            cost = format_sum(graph, plan.sites[score.site].cost, keep=own)
            base = f" - baseline:{score.site}" if score.baseline else ""
            piece = f"{score.program}:{score.site} * stop({cost}{base})"
            for plate in reversed(own):
                piece = f"sum[{plate}]({piece})"
            pieces.append(piece)
        lines += _clip(_wrap("    surrogate = ", " + ".join(pieces), 16), FORMULA_LINES, 1,
                       "lines", full)
    lines.append("}")
    return "\n".join(lines)
