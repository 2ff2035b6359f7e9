"""Choose each sample site's gradient estimator, and lay out what enumeration sums. Pure."""

from __future__ import annotations

from compiler.schema import infer_option, sample_sites


def enumerate_flag(attrs):
    """The site's enumeration mode: the guide's flag for a guide site (the model's flag is
    then ignored, as the guide's value is replayed), else the model's."""
    if attrs["guide_fn"] is not None:
        return dict(attrs["guide_infer"]).get("enumerate")
    return attrs["enumerate"] if attrs["type"] == "sample" else None


def assign_estimators(graph):
    """Map each sample/observe/factor site to its estimator.

    * observed data and factors: "observed";
    * guide sites: "enumerate" if the guide marks them, else "pathwise" when the guide's
      distribution has ``rsample`` (and ``with_rsample(False)`` was not asked), else
      "score_function";
    * model-only latents: "enumerate" if marked, else "prior" (drawn from the prior, by the
      explicit ``sample_from_prior`` opt-in that ``validate_sites`` enforces).
    """
    estimators = {}
    for name in sample_sites(graph):
        attrs = graph.nodes[name]
        if attrs["type"] in ("observe", "factor"):
            estimators[name] = "observed"
        elif enumerate_flag(attrs) is not None:
            estimators[name] = "enumerate"
        elif attrs["guide_fn"] is None and infer_option(attrs, "sample_from_prior", False):
            estimators[name] = "prior"
        else:
            estimators[name] = "pathwise" if attrs["reparameterized"] else "score_function"
    return estimators


def enumerated_sites(graph, estimators, side, mode="parallel"):
    """Sites enumerated with ``mode`` whose value the ``side`` ("guide" | "model") draws."""
    out = []
    for name in sample_sites(graph):
        attrs = graph.nodes[name]
        if estimators[name] != "enumerate" or enumerate_flag(attrs) != mode:
            continue
        if (attrs["guide_fn"] is not None) == (side == "guide"):
            out.append(name)
    return tuple(out)


def term_reads(graph, enumerated):
    """(program, site) -> the parallel-enumerated sites its log-prob tensor varies with.

    An enumerated value varies with itself only (it is its support, whatever its parents);
    a sampled value with everything its distribution read (a guide site drawn below an
    enumerated one is drawn once per enumerated value); a term with its value and what its
    distribution read in that program. Time: O(V + E) set unions, in program order.
    """
    enumerated = frozenset(enumerated)
    varies = {}
    for name in sample_sites(graph):
        attrs = graph.nodes[name]
        if name in enumerated:
            varies[name] = frozenset({name})
        elif attrs["type"] != "sample":
            varies[name] = frozenset()
        else:
            producer = "guide" if attrs["guide_fn"] is not None else "model"
            varies[name] = _parents_vary(graph, name, producer, varies)
    reads = {}
    for name in sample_sites(graph):
        for program in ("guide", "model"):
            if graph.nodes[name][f"{program}_fn"] is None:
                continue
            found = varies[name] | _parents_vary(graph, name, program, varies)
            reads[(program, name)] = tuple(sorted(found, key=lambda n: graph.nodes[n]["order"]))
    return reads


def _parents_vary(graph, name, program, varies):
    out = frozenset()
    for u, _, data in graph.in_edges(name, data=True):
        if program in data["via"]:
            out |= varies.get(u, frozenset())
    return out


def enum_factor_terms(graph, estimators, reads=None):
    """The model terms that vary with a model-enumerated value: summed out exactly.

    Returns (model-enumerated sites in program order, {factor term: the enumerated sites,
    guide's and model's, its tensor varies with}).
    """
    enumerated = enumerated_sites(graph, estimators, "model")
    if reads is None:
        reads = term_reads(graph, enumerated)
    model_enum = frozenset(enumerated)
    factors = {term: r for term, r in reads.items()
               if term[0] == "model" and model_enum.intersection(r)}
    return enumerated, factors


def elbo_terms(graph, estimators, exclude=()):
    """The ELBO's log-prob terms in program order: guide terms (log q), then model (log p).

    A site drawn from its prior contributes neither: its log p and log q cancel; a
    model-only enumerated site's log p is a factor of the contraction. Terms in ``exclude``
    (the factors of an enumeration) are left to the contraction.
    """
    guide, model = [], []
    for name in sample_sites(graph):
        attrs, est = graph.nodes[name], estimators[name]
        if est == "prior" or (est == "enumerate" and attrs["guide_fn"] is None):
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
