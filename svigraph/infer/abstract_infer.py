"""Monte Carlo posteriors as bags of weighted traces, and their marginals.

A ``TracePosterior`` holds model traces (``svigraph.trace_struct.Trace``, each with the
model's return value as the site ``"_RETURN"``) and one log weight per trace.
``EmpiricalMarginal`` views one site (or several of one shape) of those traces as a weighted
``Empirical`` distribution; ``TracePredictive`` runs the model forward on traces drawn from a
posterior, giving the posterior predictive distribution.
"""

from __future__ import annotations

import torch

from compiler.errors import ShapeMismatchError, SvigraphError, close_matches
from svigraph.distributions.empirical import Empirical
from svigraph.handlers import block, replay, trace
from svigraph.trace_struct import Trace

RETURN_SITE = "_RETURN"


class PosteriorError(SvigraphError, ValueError):
    """A posterior (or predictive) was asked for something its traces or samples cannot give:
    a site they do not hold, values of different shapes, or inconsistent sample counts."""


def return_site(value):
    """The trace site that holds a model's return value (type "return", as in Pyro)."""
    return {"name": RETURN_SITE, "type": "return", "fn": None, "value": value,
            "is_observed": False, "infer": {}, "scale": 1.0, "mask": None,
            "cond_indep_stack": ()}


def traced_run(fn, *args, **kwargs):
    """Run ``fn`` under ``trace`` and return the Trace with its ``"_RETURN"`` site added."""
    tracer = trace(fn)
    value = tracer(*args, **kwargs)
    tr = tracer.trace
    tr[RETURN_SITE] = return_site(value)
    return tr


def _weighted_mean(x, log_weights):
    probs = torch.softmax(log_weights, 0)
    return (x * probs.reshape((-1,) + (1,) * (x.dim() - 1))).sum(0)


class TracePosterior:
    """Base of the Monte Carlo posteriors: ``run`` fills a bag of weighted execution traces.

    Subclasses implement ``_traces(*args, **kwargs)``, a generator of ``(trace, log_weight)``
    or ``(trace, log_weight, chain_id)``.

    Attributes:
        exec_traces: the model traces, one per sample.
        log_weights: their log weights (0-dim tensors, detached).
        chain_ids: the chain each trace came from (0 unless a subclass runs chains).
    """

    def __init__(self, num_chains=1):
        self.num_chains = num_chains
        self._reset()

    def _reset(self):
        self.exec_traces = []
        self.log_weights = []
        self.chain_ids = []
        self._idx_by_chain = [[] for _ in range(self.num_chains)]
        self._categorical = None

    def _traces(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement _traces(*args, **kwargs)")

    def run(self, *args, **kwargs):
        """Collect the traces for these model arguments (replacing earlier ones); returns self.

        The sites are hidden from handlers outside (as if run under ``block()``).
        """
        self._reset()
        with block():
            for i, item in enumerate(self._traces(*args, **kwargs)):
                tr, log_weight, chain_id = item if len(item) == 3 else (*item, 0)
                if not 0 <= chain_id < self.num_chains:
                    raise ValueError(f"chain id {chain_id} outside 0..{self.num_chains - 1}")
                self.exec_traces.append(tr)
                self.log_weights.append(torch.as_tensor(log_weight).detach())
                self.chain_ids.append(chain_id)
                self._idx_by_chain[chain_id].append(i)
        if self.exec_traces:
            self._categorical = torch.distributions.Categorical(
                logits=torch.stack(self.log_weights))
        return self

    def _require_traces(self, what):
        if not self.exec_traces:
            raise PosteriorError(
                f"{type(self).__name__}.{what}: the posterior holds no traces yet",
                fix=f"call .run(*model_args) first, e.g. {type(self).__name__}(...).run(data)")

    def __call__(self, *args, **kwargs):
        """One trace drawn with probability proportional to its weight, observed sites removed
        (a sample from the posterior over the latents, ready for ``replay``)."""
        self._require_traces("__call__")
        idx = int(self._categorical.sample())
        return Trace({name: site for name, site in self.exec_traces[idx].items()
                      if not (site["type"] == "sample" and site["is_observed"])})

    def marginal(self, sites=None):
        """A ``Marginals`` over ``sites`` (default the return value, ``"_RETURN"``)."""
        return Marginals(self, sites)

    def information_criterion(self, pointwise=False):
        """WAIC (widely applicable information criterion) and its effective number of
        parameters ``p_waic``, from the log likelihood of the one observed site.

        Uses the weighted log pointwise predictive density
        ``lpd = log sum_s w_s p(y | z_s)`` (normalized weights) and the weighted variance of
        ``log p(y | z_s)`` over samples (with the ``S / (S - 1)`` correction) as ``p_waic``;
        ``waic = -2 (lpd - p_waic)``. Summed over data points unless ``pointwise``.

        Reference: Vehtari, Gelman, Gabry (2017), "Practical Bayesian model evaluation using
        leave-one-out cross-validation and WAIC".
        """
        if not self.exec_traces:
            return {}
        obs_name, log_liks = None, []
        for tr in self.exec_traces:
            observed = tr.observation_nodes
            if len(observed) != 1 or (obs_name is not None and observed[0] != obs_name):
                raise PosteriorError(
                    "information_criterion needs exactly one observed site, the same in every "
                    f"trace; found {observed}",
                    fix="observe the data in one vectorized site, e.g. inside sg.plate(...)",
                    site=observed[0] if observed else None)
            obs_name = observed[0]
            site = tr[obs_name]
            log_liks.append(site["fn"].log_prob(site["value"]))
        ll = torch.stack(log_liks)
        log_w = torch.stack(self.log_weights).to(ll.dtype)
        log_w = log_w.reshape((-1,) + (1,) * (ll.dim() - 1))
        lpd = torch.logsumexp(ll + log_w, 0) - torch.logsumexp(log_w, 0)
        n = ll.shape[0]
        w = log_w.reshape(-1)
        p_waic = _weighted_mean((ll - _weighted_mean(ll, w)).pow(2), w) * (n / (n - 1.0))
        waic = -2.0 * (lpd - p_waic)
        if not pointwise:
            waic, p_waic = waic.sum(), p_waic.sum()
        return {"waic": waic, "p_waic": p_waic}


class EmpiricalMarginal(Empirical):
    """The weighted empirical distribution of a posterior's traces at one or more sites.

    Args:
        trace_posterior: a ``TracePosterior`` that has been ``run``.
        sites: a site name, or a list of names whose values have the same shape (stacked
            along dim 0 of each sample, so ``event_shape = (len(sites),) + value shape``);
            ``None`` means the model's return value, ``"_RETURN"``.

    With several chains, ``batch_shape`` is ``(num_chains,)``.
    """

    def __init__(self, trace_posterior, sites=None, validate_args=None):
        if not isinstance(trace_posterior, TracePosterior):
            raise TypeError(f"EmpiricalMarginal needs a TracePosterior (e.g. Importance(...)"
                            f".run(data)), got {type(trace_posterior).__name__}")
        trace_posterior._require_traces("EmpiricalMarginal")
        if sites is None:
            sites = RETURN_SITE
        if not isinstance(sites, (str, list, tuple)):
            raise TypeError(f"sites must be a site name or a list of names, got {sites!r}")
        values = [[] for _ in range(trace_posterior.num_chains)]
        weights = [[] for _ in range(trace_posterior.num_chains)]
        for tr, log_w, chain in zip(trace_posterior.exec_traces, trace_posterior.log_weights,
                                    trace_posterior.chain_ids):
            if isinstance(sites, str):
                value = _site_value(tr, sites)
            else:
                value = _stack_sites(tr, list(sites))
            values[chain].append(value)
            weights[chain].append(log_w)
        samples = [_stack_values(v, sites) for v in values if v]
        log_weights = [torch.stack(w).to(_weight_dtype(s)) for w, s in
                       zip([w for w in weights if w], samples)]
        if len(samples) == 1:
            samples, log_weights = samples[0], log_weights[0]
        else:
            if len({len(s) for s in samples}) != 1:
                raise PosteriorError("chains hold different numbers of samples",
                                     [f"per chain: {[len(s) for s in samples]}"],
                                     "draw the same number of samples in every chain")
            samples, log_weights = torch.stack(samples), torch.stack(log_weights)
        self.sites = sites
        super().__init__(samples, log_weights, validate_args=validate_args)


def _weight_dtype(samples):
    return samples.dtype if samples.is_floating_point() else torch.get_default_dtype()


def _site_value(tr, name):
    site = tr.get(name)
    if site is None:
        names = [n for n, s in tr.items() if s["type"] in ("sample", "return")]
        raise PosteriorError(
            f"site {name!r} is not in the posterior's traces{close_matches(name, names)}",
            [f"trace sites: {', '.join(names)}"],
            "pass the name of a sample site of the model, or sites=None for its return value",
            site=name)
    value = site["value"]
    if not isinstance(value, torch.Tensor):
        raise PosteriorError(
            f"site {name!r} holds a {type(value).__name__}, not a tensor",
            fix="return a tensor from the model (or name a sample site) for an empirical "
                "marginal", site=name)
    return value


def _stack_sites(tr, names):
    values = [_site_value(tr, name) for name in names]
    shapes = {name: tuple(v.shape) for name, v in zip(names, values)}
    if len(set(shapes.values())) > 1:
        raise ShapeMismatchError(
            f"EmpiricalMarginal over sites {names}: their values have different shapes",
            [f"{name}: {shape}" for name, shape in shapes.items()],
            "list only sites of one shape, or build one EmpiricalMarginal per site "
            "(posterior.marginal(sites) does that)", site=names[0], shapes=shapes)
    return torch.stack(values)


def _stack_values(values, sites):
    shapes = sorted({tuple(v.shape) for v in values})
    if len(shapes) > 1:
        raise ShapeMismatchError(
            f"site {sites!r} has values of different shapes across the posterior's traces",
            [f"shapes seen: {shapes}"],
            "an empirical marginal needs one shape per site; fix the site's shape (e.g. the "
            "size of the plate it is in)", site=sites if isinstance(sites, str) else None,
            shapes={"values": shapes})
    return torch.stack(values)


class Marginals:
    """One ``EmpiricalMarginal`` per site: ``.empirical[name]``, and ``support()``."""

    def __init__(self, trace_posterior, sites=None, validate_args=None):
        if sites is None:
            sites = [RETURN_SITE]
        elif isinstance(sites, str):
            sites = [sites]
        self.sites = list(sites)
        self._trace_posterior = trace_posterior
        self.empirical = {site: EmpiricalMarginal(trace_posterior, site, validate_args)
                          for site in self.sites}

    def support(self, flatten=False):
        """Site -> the stored samples; ``flatten`` merges the chain dim into the sample dim."""
        out = {}
        for site, marginal in self.empirical.items():
            samples = marginal.enumerate_support()
            if flatten and self._trace_posterior.num_chains > 1:
                samples = samples.reshape((-1,) + samples.shape[2:])
            out[site] = samples
        return out


class TracePredictive(TracePosterior):
    """The posterior predictive: the model run forward on latents drawn from a posterior.

    Each of ``num_samples`` draws picks one of the posterior's traces in proportion to its
    weight, replays its latent values in the model, and samples everything else (new
    observations included, when the model is called without data) afresh. A latent inside a
    plate whose size differs from the posterior's (prediction on new data points) takes the
    values of randomly chosen posterior slices.

    Args:
        model: the model.
        posterior: a ``TracePosterior``; run on the same arguments first if it holds no traces.
        num_samples: how many predictive traces to draw.
        keep_sites: if given, only these latent sites are replayed from the posterior.
    """

    def __init__(self, model, posterior, num_samples, keep_sites=None):
        if not isinstance(posterior, TracePosterior):
            raise TypeError("TracePredictive needs a TracePosterior (e.g. Importance(...)), got "
                            f"{type(posterior).__name__}")
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
        self.model = model
        self.posterior = posterior
        self.num_samples = int(num_samples)
        self.keep_sites = keep_sites
        super().__init__()

    def _traces(self, *args, **kwargs):
        if not self.posterior.exec_traces:
            self.posterior.run(*args, **kwargs)
        data_trace = trace(self.model).get_trace(*args, **kwargs)
        for _ in range(self.num_samples):
            latents = self.posterior()
            if self.keep_sites is not None:
                latents = Trace({n: s for n, s in latents.items() if n in self.keep_sites})
            latents = _adjust_to_data(latents, data_trace)
            yield traced_run(replay(self.model, trace=latents), *args, **kwargs), 0.0, 0


def _adjust_to_data(latents, data_trace):
    """Resample the plate slices of latents whose plates changed size for the new data."""
    adjusted, chosen = Trace(), {}
    for name, site in latents.items():
        new = data_trace.get(name)
        if site["type"] != "sample" or new is None or new["type"] != "sample":
            adjusted[name] = site
            continue
        value = site["value"]
        old_frames = {f.name: f for f in site["cond_indep_stack"] if f.dim is not None}
        event_dim = len(site["fn"].event_shape)
        for frame in new["cond_indep_stack"]:
            old = old_frames.get(frame.name)
            if frame.dim is None or old is None or old.subsample_size == frame.subsample_size:
                continue
            idx = chosen.setdefault(frame.name, torch.randint(0, old.subsample_size,
                                                              (frame.subsample_size,)))
            dim = frame.dim - event_dim
            if value.dim() >= -dim and value.shape[dim] != 1:
                value = value.index_select(dim, idx)
        adjusted[name] = {**site, "value": value}
    return adjusted
