"""Baseline specs from each score site's ``infer={"baseline": {...}}``. Pure."""

from __future__ import annotations

from compiler.errors import SvigraphError, close_matches
from compiler.plan import BaselineSpec
from compiler.schema import infer_option

KNOWN_KEYS = ("use_decaying_avg_baseline", "baseline_beta", "nn_baseline", "nn_baseline_input",
              "baseline_value", "use_loo_baseline")


class BaselineError(SvigraphError, ValueError):
    """A site's baseline options are contradictory or misspelled."""


PARTICLE_PLATE = "particles"  # the plate vectorize_particles=True runs particles in


def baseline_specs(graph, scores):
    """Map each score site that asks for a baseline to its ``BaselineSpec``."""
    specs = {}
    for site, _ in scores:
        options = dict(infer_option(graph.nodes[site], "baseline", ()) or ())
        if options:
            spec = _spec(site, options)
            if spec is not None and spec.kind == "loo":
                spec = _loo_spec(graph, site)
            if spec is not None:
                specs[site] = spec
    return specs


def _loo_spec(graph, site):
    info = graph.graph["plates"].get(PARTICLE_PLATE)
    if info is None or info["size"] < 2 or PARTICLE_PLATE not in graph.nodes[site]["guide_plates"]:
        raise BaselineError(
            f"site {site!r}: the leave-one-out baseline needs several vectorized particles",
            [f"particle plate: {info}"],
            "use e.g. TraceGraph_ELBO(num_particles=8, vectorize_particles=True, "
            "max_plate_nesting=1)", site=site)
    return BaselineSpec("loo", dim=info["dim"])


def _spec(site, options):
    for key in options:
        if key not in KNOWN_KEYS:
            raise BaselineError(f"site {site!r}: unknown baseline option {key!r}",
                                [f"known options: {', '.join(KNOWN_KEYS)}"],
                                f"spell it as one of those{close_matches(key, KNOWN_KEYS)}",
                                site=site)
    kinds = [k for k in ("use_decaying_avg_baseline", "nn_baseline", "baseline_value",
                         "use_loo_baseline") if options.get(k) not in (None, False)]
    if len(kinds) > 1:
        raise BaselineError(f"site {site!r}: asks for several baselines at once: "
                            f"{', '.join(kinds)}", fix="keep exactly one of them", site=site)
    if "nn_baseline" in kinds and "nn_baseline_input" not in options:
        raise BaselineError(f"site {site!r}: nn_baseline needs nn_baseline_input",
                            fix='pass the module\'s input: {"nn_baseline": net, '
                                '"nn_baseline_input": x.detach()}', site=site)
    beta = float(options.get("baseline_beta", 0.90))
    if not 0.0 <= beta < 1.0:
        raise BaselineError(f"site {site!r}: baseline_beta={beta} must lie in [0, 1)", site=site,
                            fix="use a decay such as 0.90 or 0.95")
    if not kinds:
        return None
    kind = {"use_decaying_avg_baseline": "decaying_avg", "nn_baseline": "nn",
            "baseline_value": "value", "use_loo_baseline": "loo"}[kinds[0]]
    return BaselineSpec(kind, beta=beta if kind == "decaying_avg" else None,
                        module_name=_module_label(options["nn_baseline"]) if kind == "nn" else None)


def _module_label(frozen):
    # the graph keeps objects by kind only ("<BaselineNet>"): the class name is the label
    return str(frozen).strip("<>")
