"""Errors raised by svigraph, shared by every layer.

Every message has the same shape: a headline naming the site and the problem, the facts
(both sides, shapes, plates), and a ``fix:`` line. Each error keeps its facts as attributes
(``site``, ``plate``, ``shapes``, ``fix``) so tests and tools can read them without parsing.

Subclasses also inherit the natural builtin (``ValueError``, ``FloatingPointError``...), so
existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations

import difflib


def format_message(headline, facts=(), fix=None):
    """Join a headline, indented fact lines and a ``fix:`` line into one message."""
    lines = [headline]
    lines += [f"  {fact}" for fact in facts if fact]
    if fix:
        fix_lines = fix.splitlines()
        lines.append(f"  fix: {fix_lines[0]}")
        lines += [f"       {line}" for line in fix_lines[1:]]
    return "\n".join(lines)


def close_matches(name, candidates):
    """A ``did you mean`` hint, or an empty string."""
    found = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {found[0]!r}?)" if found else ""


class SvigraphError(Exception):
    """Base class of svigraph's errors.

    Args:
        headline: the first line: the site and what is wrong.
        facts: further lines, the evidence (shapes, plates, both sides).
        fix: what to change, concretely.
        site, plate, shapes: structured facts, kept as attributes.
    """

    def __init__(self, headline, facts=(), fix=None, *, site=None, plate=None, shapes=None):
        self.headline = headline
        self.facts = tuple(facts)
        self.fix = fix
        self.site = site
        self.plate = plate
        self.shapes = shapes
        super().__init__(format_message(headline, self.facts, fix))


class ModelGuideMismatchError(SvigraphError, ValueError):
    """The model and guide do not describe the same latent variables.

    Causes: a guide site with no model site of that name (often a typo), an observed site in
    the guide, or a model latent site that neither the guide samples nor enumeration sums out.
    The last is an error because sampling it silently from the prior biases the ELBO; mark the
    model site ``infer={"sample_from_prior": True}`` to opt in to that estimator knowingly.
    """


class ShapeMismatchError(SvigraphError, ValueError):
    """A site's value, batch or event shape disagrees between model and guide, or with data."""


class PlateError(SvigraphError, ValueError):
    """A plate's size or dim clashes with another plate or with a site's batch shape."""


class SupportError(SvigraphError, ValueError):
    """A value lies outside the support of the distribution that scores it, or the guide's
    support cannot match the model's (a real-valued guide for a positive variable, say)."""


class EnumerationError(SvigraphError, ValueError):
    """A site cannot be enumerated as asked (no finite support, or the objective cannot)."""


class SvigraphWarning(UserWarning):
    """Base class of svigraph's warnings."""


class EnumerationWarning(SvigraphWarning):
    """An enumerating objective found nothing to enumerate."""


class TracingError(SvigraphError, RuntimeError):
    """Running the model or guide under the tracer failed, or they broke a tracing rule."""


class NonFiniteLossError(SvigraphError, FloatingPointError):
    """A loss term is NaN or infinite; the step that produced it updated no parameter."""


class DuplicateSiteError(SvigraphError, ValueError):
    """Two sample sites of one run have the same name; names identify sites across runs."""


def duplicate_site(name):
    return DuplicateSiteError(
        f"site {name!r} appears twice in one run; site names must be unique",
        [f"the second sample({name!r}, ...) repeats the first"],
        f'give each its own name; in a loop, e.g. sg.sample(f"{name}_{{i}}", ...)', site=name)


class ObservationError(SvigraphError, TypeError):
    """An observed value (``obs=``, or ``condition``'s data) that is not a tensor."""


def obs_not_a_tensor(name, obs, by_condition=False):
    shown = f"torch.tensor({obs!r})" if isinstance(obs, (int, float, bool)) else "torch.as_tensor(...)"
    given = "condition's value for it" if by_condition else "obs"
    fix = f"condition(data={{{name!r}: {shown}}})" if by_condition else f"obs={shown}"
    return ObservationError(
        f"site {name!r}: {given} must be a tensor, got {type(obs).__name__}",
        ["log densities, plates and shapes are computed on tensors"],
        f"pass {fix}", site=name)


class MeanFieldError(SvigraphError, ValueError):
    """An analytic KL term (TraceMeanField_ELBO) cannot stand in for log p - log q here.

    Causes: a latent's model distribution depends on another latent (the model is not
    mean-field: use Trace_ELBO or TraceGraph_ELBO), or a site's distribution families changed
    since its plan was compiled so that the compiled KL rule no longer applies.
    """


class ParamError(SvigraphError, ValueError):
    """A parameter is used in a way its store cannot honour (no init, constraint clash)."""


# The public home of these classes is svigraph.errors: print them under that name.
for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, (SvigraphError, SvigraphWarning)):
        _cls.__module__ = "svigraph.errors"
