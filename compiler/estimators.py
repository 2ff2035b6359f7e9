"""Choose each sample site's gradient estimator. Pure."""

from __future__ import annotations

from compiler.schema import infer_option, sample_sites


def assign_estimators(graph):
    """Map each sample/observe/factor site to its estimator.

    * observed data and factors: "observed";
    * guide sites: "enumerate" if marked, else "pathwise" when the guide's distribution
      has ``rsample`` (and ``with_rsample(False)`` was not asked), else "score_function";
    * model-only latents: "enumerate" if marked, else "prior" (drawn from the prior, by the
      explicit ``sample_from_prior`` opt-in that ``validate_sites`` enforces).
    """
    estimators = {}
    for name in sample_sites(graph):
        attrs = graph.nodes[name]
        if attrs["type"] in ("observe", "factor"):
            estimators[name] = "observed"
        elif attrs["enumerate"] is not None:
            estimators[name] = "enumerate"
        elif attrs["guide_fn"] is None and infer_option(attrs, "sample_from_prior", False):
            estimators[name] = "prior"
        else:
            estimators[name] = "pathwise" if attrs["reparameterized"] else "score_function"
    return estimators


def enum_factor_terms(graph, estimators):
    """The model terms that read an enumerated value (or are one): summed out exactly.

    Returns (enumerated sites in program order, {factor term: the enumerated sites it reads}).
    """
    enumerated = [n for n in sample_sites(graph) if estimators[n] == "enumerate"]
    factors = {}
    for name in sample_sites(graph):
        if graph.nodes[name]["model_fn"] is None:
            continue
        reads = sorted(u for u, _, d in graph.in_edges(name, data=True)
                       if u in enumerated and "model" in d["via"])
        if name in enumerated:
            reads.append(name)
        if reads:
            factors[("model", name)] = tuple(reads)
    return tuple(enumerated), factors


def elbo_terms(graph, estimators, exclude=()):
    """The ELBO's log-prob terms in program order: guide terms (log q), then model (log p).

    A site drawn from its prior contributes neither: its log p and log q cancel. Terms in
    ``exclude`` (the factors of an enumeration) are left to the contraction.
    """
    guide, model = [], []
    for name in sample_sites(graph):
        attrs, est = graph.nodes[name], estimators[name]
        if est in ("prior", "enumerate"):
            continue
        if attrs["guide_fn"] is not None:
            guide.append(("guide", name))
        if attrs["model_fn"] is not None and ("model", name) not in exclude:
            model.append(("model", name))
    return tuple(guide + model)


def score_sites(graph, estimators):
    """(site, program whose log-prob is the score) for every site needing a score term."""
    out = []
    for name in sample_sites(graph):
        est = estimators[name]
        if est == "score_function":
            out.append((name, "guide"))
        elif est == "prior" and not graph.nodes[name]["reparameterized"]:
            out.append((name, "model"))
    return tuple(out)
