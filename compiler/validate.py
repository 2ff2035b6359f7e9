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


def validate_enumeration(graph, enumerated, factors, scores):
    """Refuse what model-side enumeration cannot do yet, naming the site and the fix."""
    for name in enumerated:
        attrs = graph.nodes[name]
        if attrs["enumerate"] != "parallel":
            raise EnumerationError(
                f"site {name!r}: enumerate={attrs['enumerate']!r} is not supported yet",
                [_where(attrs, "model")], 'use infer={"enumerate": "parallel"}', site=name)
        if attrs["reads_value"]:
            raise EnumerationError(
                f"enumerated site {name!r} is read into Python (e.g. .item() or bool())",
                ["its value holds every support value at once, so Python sees one of them",
                 _where(attrs, "model")],
                "compute with the tensor instead (torch.where, indexing with it), or sample "
                "the site in the guide", site=name)
    for name in sample_sites(graph):
        attrs = graph.nodes[name]
        if attrs["guide_fn"] is not None and attrs["enumerate"] is not None:
            raise EnumerationError(
                f"guide site {name!r} is marked for enumeration; guide-side enumeration is not "
                "implemented yet", [_where(attrs, "guide")],
                "enumerate the site in the model instead (drop it from the guide), or remove "
                "the flag", site=name)
    if factors and scores:
        site = scores[0][0]
        raise EnumerationError(
            f"score-function site {site!r} together with model enumeration is not implemented "
            "yet", [f"enumerated: {', '.join(enumerated)}"],
            "use reparameterizable guide sites with TraceEnum_ELBO, or enumerate the discrete "
            "guide sites in the model", site=site)
