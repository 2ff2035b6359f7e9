"""Model/guide agreement checks on the graph: which sites exist on which side. Pure."""

from __future__ import annotations

from compiler.errors import EnumerationError, ModelGuideMismatchError, close_matches
from compiler.schema import infer_option, sample_sites


def validate_sites(graph, *, can_enumerate=False):
    """Raise on a guide site absent from the model, and on a model latent nobody samples.

    Args:
        can_enumerate: whether the objective sums out sites marked for enumeration.
    """
    names = sample_sites(graph)
    model_sites = [n for n in names if graph.nodes[n]["model_fn"] is not None]
    model_latents = [n for n in model_sites if graph.nodes[n]["type"] == "sample"]
    guide_sites = [n for n in names if graph.nodes[n]["guide_fn"] is not None]
    for name in guide_sites:
        attrs = graph.nodes[name]
        if attrs["model_fn"] is None and not infer_option(attrs, "is_auxiliary", False):
            raise ModelGuideMismatchError(
                f"guide site {name!r} has no model site of that name",
                [f"guide sites: {', '.join(guide_sites)}",
                 f"model latent sites: {', '.join(model_latents) or '(none)'}",
                 _where(attrs, "guide")],
                f"rename it to a model site{close_matches(name, model_latents)}, or mark it\n"
                'infer={"is_auxiliary": True} if it is an auxiliary variable',
                site=name)
    for name in guide_sites:
        attrs = graph.nodes[name]
        if attrs["enumerate"] is not None and not can_enumerate:
            raise EnumerationError(
                f"guide site {name!r} is marked for enumeration, which this objective does "
                "not do (its terms would silently drop out of the ELBO)",
                [f"infer={{'enumerate': {attrs['enumerate']!r}}}", _where(attrs, "guide")],
                "remove the enumerate flag: the site then gets a score-function estimator "
                "(guide-side enumeration is not implemented yet)",
                site=name)
    for name in model_sites:
        attrs = graph.nodes[name]
        if attrs["type"] != "sample" or attrs["guide_fn"] is not None:
            continue
        if attrs["enumerate"] is not None:
            if not can_enumerate:
                raise EnumerationError(
                    f"model site {name!r} is marked for enumeration, which this objective "
                    "does not do",
                    [f"infer={{'enumerate': {attrs['enumerate']!r}}}", _where(attrs, "model")],
                    "sum it out with TraceEnum_ELBO(max_plate_nesting=...), or sample the "
                    "site in the guide",
                    site=name)
            continue
        if infer_option(attrs, "sample_from_prior", False):
            continue
        raise ModelGuideMismatchError(
            f"model latent site {name!r} is neither sampled by the guide nor enumerated",
            [f"model: {attrs['model_fn']} batch {attrs['batch_shape']} plates "
             f"{attrs['plates']}", _where(attrs, "model"),
             f"guide sites: {', '.join(guide_sites) or '(none)'}"],
            f"add sg.sample({name!r}, ...) to the guide{close_matches(name, guide_sites)}; or, "
            "to draw it from the prior\n"
            'knowingly, mark the model site infer={"sample_from_prior": True}',
            site=name)


def _where(attrs, program):
    for prog, source in attrs["source"]:
        if prog == program:
            return f"{program} site at {source}"
    return None


def validate_enumeration(graph, estimators, factors, scores):
    """Refuse enumeration that cannot be computed exactly, naming the site and the fix.

    Args:
        estimators: site -> estimator (``assign_estimators``).
        factors: the contraction's factor terms; ``scores``: the score-function sites.
    """
    from compiler.estimators import enumerate_flag
    model_enum = []
    for name, est in estimators.items():
        if est != "enumerate":
            continue
        attrs = graph.nodes[name]
        mode, side = enumerate_flag(attrs), "guide" if attrs["guide_fn"] else "model"
        if mode not in ("parallel", "sequential"):
            raise EnumerationError(
                f"site {name!r}: enumerate={mode!r} is not a mode",
                [_where(attrs, side)], 'use infer={"enumerate": "parallel"} or "sequential"',
                site=name)
        if mode == "sequential":
            _check_sequential(name, attrs, side)
            continue
        if attrs["reads_value"]:
            raise EnumerationError(
                f"enumerated site {name!r} is read into Python (e.g. .item() or bool())",
                ["its value holds every support value at once, so Python sees one of them",
                 _where(attrs, side)],
                'compute with the tensor instead (torch.where, indexing with it), or use '
                'infer={"enumerate": "sequential"} in the guide', site=name)
        if side == "model":
            model_enum.append(name)
    _check_enumeration_nesting(graph, estimators, model_enum)


def _check_sequential(name, attrs, side):
    if side == "model":
        raise EnumerationError(
            f"model site {name!r} is marked for sequential enumeration, which is done in the "
            "guide only", [_where(attrs, "model")],
            'enumerate it in parallel (infer={"enumerate": "parallel"}), or sample it in the '
            'guide with infer={"enumerate": "sequential"}', site=name)
    plates = attrs["guide_plates"]
    batch = attrs["batch_shape"]
    if plates or any(n != 1 for n in batch):
        raise EnumerationError(
            f"guide site {name!r} is enumerated sequentially but is batched: one run per value "
            "would give every element the same value",
            [f"plates {plates or '()'}, batch shape {tuple(batch)}", _where(attrs, "guide")],
            'use infer={"enumerate": "parallel"} for a site in a plate (or iterate the plate '
            "sequentially: for i in sg.plate(...))", site=name, plate=plates[0] if plates else None,
            shapes={"batch": tuple(batch)})


def _check_enumeration_nesting(graph, estimators, model_enum):
    """Guide enumeration must be no more local than model enumeration: the contraction
    keeps the guide's enumerated values, so each must live outside every plate that a
    model-enumerated value's factors are multiplied over."""
    from compiler.estimators import enumerated_sites
    if not model_enum:
        return
    common = frozenset.intersection(*(frozenset(graph.nodes[m]["plates"]) for m in model_enum))
    for name in enumerated_sites(graph, estimators, "guide"):
        attrs = graph.nodes[name]
        outside = [p for p in attrs["guide_plates"] if p not in common]
        if outside:
            upstream = next(m for m in model_enum if outside[0] not in graph.nodes[m]["plates"])
            raise EnumerationError(
                f"guide site {name!r} is enumerated inside plate {outside[0]!r}, but model "
                f"site {upstream!r} is enumerated outside that plate (in an enclosing or a "
                "sibling context)",
                [f"guide {name!r}: plates {attrs['guide_plates']}; model {upstream!r}: plates "
                 f"{graph.nodes[upstream]['plates'] or '()'}",
                 "summing the model site out couples every slice of the guide site"],
                f"enumerate {upstream!r} in the guide too, or sample {name!r} without "
                "enumeration", site=name, plate=outside[0])
