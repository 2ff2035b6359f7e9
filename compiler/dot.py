"""Graphviz DOT for a plan's dependency graph: plates as clusters, sites coloured by estimator,
observed sites shaded. Written by hand: no pydot dependency."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

COLOURS = {"pathwise": "#cfe8ff", "score_function": "#ffd9b3", "enumerate": "#d9f2d9",
           "analytic_kl": "#eadcf7", "observed": "#bbbbbb", "prior": "#fff2b3"}


def _q(text):
    return '"' + str(text).replace('"', '\\"') + '"'


def to_dot(plan):
    graph = plan.graph
    lines = ["digraph plan {", "  rankdir=TB;", '  node [fontname="Helvetica", style=filled];']
    by_plate = {}
    for name in graph.nodes:
        plates = graph.nodes[name]["plates"] or graph.nodes[name]["guide_plates"]
        by_plate.setdefault(plates[-1] if plates else None, []).append(name)
    for plate, names in sorted(by_plate.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        indent = "  "
        if plate is not None:
            size = plan.plates[plate]["subsample_size"]
            lines.append(f"  subgraph {_q('cluster_' + plate)} {{")
            lines.append(f"    label={_q(f'{plate}[{size}]')};")
            indent = "    "
        for name in names:
            lines.append(indent + _node(graph, plan, name))
        if plate is not None:
            lines.append("  }")
    for u, v, data in sorted(graph.edges(data=True)):
        style = "dashed" if data["kind"] == "control" else "solid"
        label = "+".join(sorted(data["via"]))
        lines.append(f"  {_q(u)} -> {_q(v)} [style={style}, label={_q(label)}];")
    lines.append("}")
    return "\n".join(lines)


def _node(graph, plan, name):
    attrs = graph.nodes[name]
    if attrs["type"] == "param":
        return f"{_q(name)} [shape=box, fillcolor=white, label={_q(name)}];"
    site = plan.sites.get(name)
    estimator = site.estimator if site else attrs["type"]
    fn = attrs["model_fn"] or attrs["guide_fn"]
    label = "\\n".join([name, fn, estimator])  # DOT's own line break escape
    shade = "#bbbbbb" if attrs["type"] in ("observe", "factor") else COLOURS.get(estimator, "white")
    return f"{_q(name)} [shape=ellipse, fillcolor={_q(shade)}, label={_q(label)}];"


def render(plan, path):
    """Write ``path`` (.svg, .png, .pdf) with the ``dot`` program; say how to get it if absent."""
    path = Path(path)
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("rendering needs Graphviz's `dot` program, which is not installed; "
                           "install it (e.g. `apt-get install graphviz` or `conda install "
                           "graphviz`), or write plan.to_dot() to a .dot file yourself")
    fmt = path.suffix.lstrip(".") or "svg"
    subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=to_dot(plan).encode(), check=True)
    return path
