"""Posterior predictive sampling: run the model forward on posterior samples of its latents.

``Predictive(model, posterior_samples)`` conditions the model on each posterior sample in
turn (or on all at once, ``parallel=True``, inside an outermost plate) and returns, for each
requested site, a tensor with a leading ``num_samples`` dim. With ``guide=...`` the latents
are drawn from the guide first. Shapes follow Pyro's ``Predictive``: a site's values have
shape ``(num_samples,) + (1,) * k + value_shape``, padded so that every site has at least
``max_plate_nesting`` dims right of the sample dim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from compiler.errors import SvigraphError, close_matches
from svigraph.handlers import block, condition
from svigraph.infer.abstract_infer import RETURN_SITE, PosteriorError, traced_run
from svigraph.primitives import plate

PREDICTIVE_PLATE = "_num_predictive_samples"


def max_plate_nesting(tr):
    """How many vectorized plate dims the run of ``tr`` used (the deepest ``-dim``)."""
    dims = [frame.dim for site in tr.sample_sites() for frame in site["cond_indep_stack"]
            if frame.dim is not None]
    return -min(dims) if dims else 0


class Predictive(torch.nn.Module):
    """Samples from the posterior predictive distribution (or the prior predictive).

    Args:
        model: the model; call the instance with the model's arguments.
        posterior_samples: ``{site: tensor}`` with a leading dim of ``num_samples`` posterior
            draws of the model's latents (from MCMC, importance resampling, a guide...).
            As in Pyro this is the second positional argument; a guide passed there
            (any callable) is taken as ``guide``.
        guide: draw the latents from this guide instead (not with ``posterior_samples``).
        num_samples: how many samples; must equal the leading dim of ``posterior_samples``
            when both are given. Needed without ``posterior_samples``.
        return_sites: sites to return. Default ``()``: every sample site not in
            ``posterior_samples`` (with a guide: every model site); ``None``: every sample
            site; ``"_RETURN"`` names the model's return value.
        parallel: draw all samples in one run of the model inside an outermost plate of size
            ``num_samples`` (left of the model's plates); the model must broadcast, i.e.
            every batch dim is declared with ``sg.plate``.

    Calling the instance, ``Predictive(...)(*args, **kwargs)``, returns ``{site: tensor}``.

    Example:
        >>> predictive = Predictive(model, guide=guide, num_samples=800)
        >>> samples = predictive(None)            # model(data=None) samples new data
        >>> samples["obs"].shape                  # (800, ...)
    """

    def __init__(self, model, posterior_samples=None, guide=None, num_samples=None,
                 return_sites=(), parallel=False):
        super().__init__()
        if callable(posterior_samples) and not isinstance(posterior_samples, Mapping):
            if guide is not None:
                raise PosteriorError("Predictive got two guides (the second argument and "
                                     "guide=...)", fix="pass the guide once, as guide=...")
            posterior_samples, guide = None, posterior_samples
        posterior_samples = dict(posterior_samples or {})
        if guide is not None and posterior_samples:
            raise PosteriorError(
                "Predictive takes posterior_samples or a guide, not both",
                [f"posterior_samples for: {', '.join(posterior_samples)}"],
                "drop the guide to predict from the samples, or drop posterior_samples to draw "
                "the latents from the guide")
        num_samples = _check_sample_counts(posterior_samples, num_samples)
        if return_sites is not None and not isinstance(return_sites, (list, tuple, set)):
            raise TypeError(f"return_sites must be a list, tuple or set of site names, or None; "
                            f"got {return_sites!r}")
        self.model = model
        self.guide = guide
        self.posterior_samples = posterior_samples
        self.num_samples = num_samples
        self.return_sites = return_sites
        self.parallel = parallel

    def forward(self, *args, **kwargs):
        """``{site: tensor of shape (num_samples, ...)}`` of posterior predictive samples."""
        samples, return_sites, check = self.posterior_samples, self.return_sites, True
        if self.guide is not None:
            samples = _predict(self.guide, {}, self.num_samples, None, self.parallel,
                               args, kwargs, check_names=False).samples
            return_sites = return_sites or None
            check = False  # guide sites the model lacks (auxiliary ones) are dropped
        return _predict(self.model, samples, self.num_samples, return_sites, self.parallel,
                        args, kwargs, check_names=check).samples

    def get_samples(self, *args, **kwargs):
        """The same as calling the instance."""
        return self.forward(*args, **kwargs)

    def get_vectorized_trace(self, *args, **kwargs):
        """One ``Trace`` of the model run on all samples at once (as with ``parallel=True``)."""
        samples, check = self.posterior_samples, True
        if self.guide is not None:
            samples = _predict(self.guide, {}, self.num_samples, None, self.parallel,
                               args, kwargs, check_names=False).samples
            check = False
        return _predict(self.model, samples, self.num_samples, (), True, args, kwargs,
                        check_names=check).trace


def _check_sample_counts(posterior_samples, num_samples):
    """The number of samples: every leading dim, and num_samples if given, must agree."""
    leading = {}
    for name, value in posterior_samples.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            got = "a 0-dim tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            raise PosteriorError(
                f"posterior_samples[{name!r}] must be a tensor with a leading sample dim, got "
                f"{got}",
                fix=f"stack the draws of {name!r} along dim 0, e.g. torch.stack(draws)",
                site=name)
        leading[name] = value.shape[0]
    if len(set(leading.values())) > 1:
        raise PosteriorError(
            "posterior_samples have different numbers of samples (leading dims)",
            [f"{name}: {n} samples, shape {tuple(posterior_samples[name].shape)}"
             for name, n in leading.items()],
            "give every site the same number of draws along dim 0 (the same posterior "
            "samples, not a mix of runs)", site=min(leading, key=leading.get),
            shapes={name: tuple(v.shape) for name, v in posterior_samples.items()})
    if leading:
        n = next(iter(leading.values()))
        if num_samples is not None and num_samples != n:
            raise PosteriorError(
                f"num_samples={num_samples} but posterior_samples hold {n} samples "
                f"(leading dim of {next(iter(leading))!r})",
                fix=f"drop num_samples (it is read from the samples), or pass num_samples={n}",
                site=next(iter(leading)))
        return n
    if num_samples is None:
        raise PosteriorError("Predictive needs num_samples when no posterior_samples are given",
                             fix="pass num_samples=..., e.g. Predictive(model, guide=guide, "
                                 "num_samples=1000)")
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    return int(num_samples)


class _Prediction:
    """What one predictive pass produced: ``samples`` (site -> tensor) and the trace(s)."""

    def __init__(self, samples, trace):
        self.samples, self.trace = samples, trace


def _predict(fn, samples, num_samples, return_sites, parallel, args, kwargs, check_names):
    with torch.no_grad():
        with block():  # a prototype run, hidden: it fixes site shapes and plate nesting
            prototype = traced_run(fn, *args, **kwargs)
        nesting = max_plate_nesting(prototype)
        if check_names:
            _check_names(samples, prototype)
        else:
            samples = {k: v for k, v in samples.items() if k in prototype}
        shapes = _return_shapes(prototype, samples, num_samples, return_sites, nesting)
        if parallel:
            return _predict_parallel(fn, samples, num_samples, shapes, nesting, args, kwargs)
        return _predict_sequential(fn, samples, num_samples, shapes, args, kwargs)


def _check_names(samples, prototype):
    sites = [s["name"] for s in prototype.sample_sites()]
    for name in samples:
        if name not in prototype or prototype[name]["type"] != "sample":
            raise PosteriorError(
                f"posterior_samples has site {name!r}, which the model does not sample"
                f"{close_matches(name, sites)}",
                [f"model sample sites: {', '.join(sites)}"],
                "rename the key to a model site, or drop it (it would be ignored and the site "
                "drawn from its prior)", site=name)


def _return_shapes(prototype, samples, num_samples, return_sites, nesting):
    """Site -> the shape of its returned samples (None: a non-tensor return value)."""
    if return_sites:
        known = [s["name"] for s in prototype.sample_sites()] + [RETURN_SITE]
        for name in return_sites:
            if name not in known:
                raise PosteriorError(
                    f"return_sites names {name!r}, which is not a sample site of the model"
                    f"{close_matches(name, known)}", [f"model sites: {', '.join(known)}"],
                    "name sample sites of the model, or '_RETURN' for its return value",
                    site=name)
    shapes = {}
    for site in prototype.sample_sites():
        name = site["name"]
        wanted = (name in return_sites if return_sites else
                  return_sites is None or name not in samples)
        if wanted:
            pad = max(0, nesting - len(site["fn"].batch_shape))
            shapes[name] = (num_samples,) + (1,) * pad + tuple(site["value"].shape)
    if return_sites and RETURN_SITE in return_sites:
        value = prototype[RETURN_SITE]["value"]
        shapes[RETURN_SITE] = ((num_samples,) + tuple(value.shape)
                               if isinstance(value, torch.Tensor) else None)
    return shapes


def _predict_sequential(fn, samples, num_samples, shapes, args, kwargs):
    traces, collected = [], {name: [] for name in shapes}
    for i in range(num_samples):
        tr = traced_run(condition(fn, data={k: v[i] for k, v in samples.items()}),
                        *args, **kwargs)
        traces.append(tr)
        for name in shapes:
            collected[name].append(tr[name]["value"])
    out = {}
    for name, shape in shapes.items():
        values = collected[name]
        out[name] = values if shape is None else _fit(torch.stack(values), shape, name)
    return _Prediction(out, traces)


def _predict_parallel(fn, samples, num_samples, shapes, nesting, args, kwargs):
    reshaped = {}
    for name, value in samples.items():
        event = value.shape[1:]
        reshaped[name] = value.reshape((num_samples,) + (1,) * max(0, nesting - len(event))
                                       + event)
    dim = -nesting - 1
    try:
        with plate(PREDICTIVE_PLATE, num_samples, dim=dim):
            tr = traced_run(condition(fn, data=reshaped), *args, **kwargs)
    except SvigraphError:
        raise
    except (RuntimeError, ValueError) as err:
        raise PosteriorError(
            f"Predictive(parallel=True) failed running the model inside plate "
            f"{PREDICTIVE_PLATE!r} (size {num_samples}, dim {dim})",
            [f"torch said: {str(err).splitlines()[0]}"],
            "declare every batch dim of the model with sg.plate so it broadcasts over a new "
            "leftmost dim, or use parallel=False", plate=PREDICTIVE_PLATE) from err
    out = {}
    for name, shape in shapes.items():
        value = tr[name]["value"]
        if shape is None:
            out[name] = value
        elif value.numel() < math.prod(shape):
            out[name] = value.expand(shape)  # e.g. observed data, the same in every sample
        else:
            out[name] = _fit(value, shape, name)
    return _Prediction(out, tr)


def _fit(value, shape, name):
    if value.numel() != math.prod(shape):
        raise PosteriorError(
            f"site {name!r}: predictive values of shape {tuple(value.shape)} do not fit the "
            f"expected {shape}", ["the site's shape differs from the model's first run"],
            "give the site a fixed shape (posterior samples of the shape the model draws)",
            site=name, shapes={"value": tuple(value.shape), "expected": shape})
    return value.reshape(shape)
