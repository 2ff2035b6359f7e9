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
                "(enumeration, TraceEnum_ELBO, is not implemented yet)",
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
                    "sample the site in the guide (enumeration, TraceEnum_ELBO, is not "
                    "implemented yet)",
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
