"""``infer_discrete``: sample enumerated sites from their exact posterior, or take the MAP.

Given a model whose discrete sites are marked for parallel enumeration (``config_enumerate``),
``infer_discrete(model, first_available_dim=-2)(*args)`` runs the model three ways:

1. once with every enumerated site holding its whole support along a dim of its own (the
   ``enum`` handler, dims left of ``first_available_dim``; ``markov`` reuses them), hidden
   from the handlers outside (as Pyro does), recording each site's log density and which
   enumerated variables its tensor varies along;
2. the plated sum-product of those log densities is planned (``compiler.enumeration``) and
   run forward in the sum-product (temperature 1) or max-product (temperature 0) semiring,
   then backward, choosing each variable given those chosen after it (``runtime.discrete``);
3. once more with the chosen values replayed into the enumerated sites (and every other
   latent at its value from run 1), which gives the return value and what an outer
   ``handlers.trace`` records.

Which variable a tensor dim stands for is read from the enumeration dims: a dim holds the
variable most recently enumerated on it when the site was sampled (under ``markov`` a dim
is reused only once the older variable can no longer be read).
"""

from __future__ import annotations

import functools
import warnings

import torch

from compiler.enumeration import factor_from_shape, plan_contraction
from compiler.errors import EnumerationError, EnumerationWarning, duplicate_site
from runtime.discrete import choose
from runtime.terms import scale_and_mask, site_log_prob
from svigraph.effects import Messenger
from svigraph.handlers import block, enum

__all__ = ["infer_discrete"]


def infer_discrete(fn=None, first_available_dim=None, temperature=1, *,
                   strict_enumeration_warning=True):
    """Sample a model's enumerated sites from their posterior given everything else, or
    take their jointly most likely values (MAP, "Viterbi").

    Args:
        fn: the model; its sites marked ``infer={"enumerate": "parallel"}`` (for instance by
            ``config_enumerate``) are inferred. Other latent sites keep whatever value the
            model draws (condition or replay them, e.g. ``handlers.replay(model, guide_tr)``);
            observed sites stay observed.
        first_available_dim: the negative dim left of every plate dim, where enumeration
            starts (``-max_plate_nesting - 1``).
        temperature: 1 draws from the exact posterior (forward filtering, backward sampling);
            0 gives the MAP assignment (max-product, then backtracking).
        strict_enumeration_warning: warn when the model has no enumerated site.

    Returns:
        A function with the model's signature returning the model's return value from a run
        with the enumerated sites at the chosen values, each with the plate batch shape it
        would be sampled with. Without ``fn``, a decorator.

    Example:
        >>> decoder = infer_discrete(config_enumerate(hmm), first_available_dim=-2,
        ...                          temperature=0)
        >>> tr = handlers.trace(decoder).get_trace(data)   # tr["z_3"]["value"]: MAP states
    """
    if fn is None:
        return functools.partial(infer_discrete, first_available_dim=first_available_dim,
                                 temperature=temperature,
                                 strict_enumeration_warning=strict_enumeration_warning)
    if not callable(fn):
        raise TypeError(f"infer_discrete expected a callable model, got {type(fn).__name__}")
    if (first_available_dim is None or isinstance(first_available_dim, bool)
            or int(first_available_dim) != first_available_dim or first_available_dim >= 0):
        raise EnumerationError(
            f"infer_discrete needs a negative integer first_available_dim, got "
            f"{first_available_dim!r}",
            ["enumerated values are laid along dims left of every plate dim"],
            "pass first_available_dim=-(max_plate_nesting + 1), e.g. -2 for a model whose "
            "sites are in at most one plate")
    if temperature not in (0, 1):
        raise ValueError(f"infer_discrete: temperature must be 0 (MAP) or 1 (sample from the "
                         f"posterior), got {temperature!r}")

    @functools.wraps(fn, updated=())  # fn may be a handler: keep its state its own
    def posterior_run(*args, **kwargs):
        return _posterior_run(fn, int(first_available_dim), temperature,
                              strict_enumeration_warning, args, kwargs)

    return posterior_run


def _posterior_run(fn, first_dim, temperature, strict, args, kwargs):
    recorder = _EnumRecorder(first_dim)
    with block(), enum(first_available_dim=first_dim), recorder:
        fn(*args, **kwargs)
    values = {name: site["value"] for name, site in recorder.sites.items()
              if not site["is_observed"]}
    if recorder.enumerated:
        values.update(_choose_values(recorder, temperature))
    elif strict:
        warnings.warn("infer_discrete found no site marked for parallel enumeration: nothing "
                      "to infer (mark discrete sites with config_enumerate(model) or "
                      'infer={"enumerate": "parallel"})', EnumerationWarning, stacklevel=3)
    with _Replay(values, recorder.subsamples):
        return fn(*args, **kwargs)


# ---- run 1: record the enumerated run -----------------------------------------------------------

class _EnumRecorder(Messenger):
    """Record the sites of the enumerated run and, for each, the variable on each enum dim."""

    def __init__(self, first_dim):
        super().__init__(None)
        self.first_dim = first_dim
        self.sites, self.subsamples, self.reads = {}, {}, {}
        self.enumerated = []   # names, in program order
        self._latest = {}      # enum dim -> the variable enumerated on it most recently

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        for frame in msg["cond_indep_stack"]:
            if frame.dim is not None and frame.dim <= self.first_dim:
                raise _plate_collision(msg["name"], frame, self.first_dim)
        if msg["infer"].get("enumerate") == "sequential" and msg["value"] is None \
                and not msg["is_observed"]:
            raise EnumerationError(
                f"site {msg['name']!r} is marked for sequential enumeration, which "
                "infer_discrete does not do", ['infer={"enumerate": "sequential"}'],
                f'mark {msg["name"]!r} infer={{"enumerate": "parallel"}} (config_enumerate\'s '
                "default)", site=msg["name"])

    def postprocess_message(self, msg):
        kind, name = msg["type"], msg["name"]
        if kind == "subsample":
            self.subsamples[name] = msg
        if kind != "sample":
            return
        if name in self.sites:
            raise duplicate_site(name)
        if "enum_dim" in msg:
            self._latest[msg["enum_dim"]] = name
            self.enumerated.append(name)
        elif not msg["is_observed"]:
            self._check_not_enumerated(msg)
        self.sites[name] = msg
        self.reads[name] = {var: dim for dim, var in self._latest.items()}

    def _check_not_enumerated(self, msg):
        """A latent drawn (not enumerated) from a distribution that reads enumerated values
        holds one draw per enumerated value: it cannot be replayed as one value."""
        value = msg["value"]
        if not isinstance(value, torch.Tensor):
            return
        batch = value.shape[:value.dim() - len(msg["fn"].event_shape)]
        enum_part = batch[:max(len(batch) + self.first_dim + 1, 0)]
        if any(n > 1 for n in enum_part):
            readers = ", ".join(repr(v) for v in self._latest.values()) or "none"
            raise EnumerationError(
                f"latent site {msg['name']!r} is drawn (not enumerated) from a distribution "
                "that reads enumerated values",
                [f"value shape {tuple(value.shape)}: dims left of first_available_dim="
                 f"{self.first_dim} are enumeration dims; enumerated so far: {readers}"],
                f"enumerate {msg['name']!r} too (if discrete), observe it, or fix its value "
                "from a guide:\ninfer_discrete(handlers.replay(model, trace=guide_trace), ...)",
                site=msg["name"], shapes={"value": tuple(value.shape)})


def _plate_collision(name, frame, first_dim):
    return EnumerationError(
        f"site {name!r}: plate {frame.name!r} uses dim {frame.dim}, but enumeration starts at "
        f"first_available_dim={first_dim}",
        [f"plate {frame.name!r}: size {frame.subsample_size}, dim {frame.dim}; enumerated "
         f"values go to dims {first_dim}, {first_dim - 1}, ..."],
        f"pass first_available_dim={frame.dim - 1} or less (left of every plate dim: "
        "-(max_plate_nesting + 1))", site=name, plate=frame.name)


# ---- step 2: plan, filter forward, choose backward ------------------------------------------

def _choose_values(recorder, temperature):
    """Enumerated site name -> its chosen value, shaped as the site samples in its plates."""
    factors, tensors, plate_sizes, var_sizes, supports = _factors(recorder)
    plan = _plan(tuple(factors), tuple(recorder.enumerated), tuple(sorted(plate_sizes.items())),
                 tuple(sorted(var_sizes.items())))
    choices, _ = choose(plan, tensors, temperature)
    return {name: _site_value(choices[name], supports[name], recorder.sites[name])
            for name in recorder.enumerated}


def _factors(recorder):
    """The log-density factors that vary along an enumeration dim, laid out for planning."""
    factors, tensors, plate_sizes, var_sizes, supports = [], {}, {}, {}, {}
    for name in recorder.enumerated:
        site = recorder.sites[name]
        value, event = site["value"], tuple(site["fn"].event_shape)
        var_sizes[name] = value.shape[0]
        supports[name] = value.reshape((value.shape[0],) + event)
    for name, site in recorder.sites.items():
        log_p = scale_and_mask(site_log_prob(site), site["scale"], site["mask"])
        reads = {var: dim for var, dim in recorder.reads[name].items()
                 if -dim <= log_p.dim() and log_p.shape[dim] > 1}
        if not reads:
            continue  # a constant as far as the enumerated variables go
        frames = [f for f in site["cond_indep_stack"] if f.dim is not None]
        for f in frames:
            plate_sizes[f.name] = f.subsample_size
        factors.append(factor_from_shape(name, tuple(log_p.shape), var_dims=reads,
                                         plate_dims={f.name: f.dim for f in frames},
                                         plates=tuple(f.name for f in frames)))
        tensors[name] = log_p
    return factors, tensors, plate_sizes, var_sizes, supports


@functools.lru_cache(maxsize=64)
def _plan(factors, sum_vars, plate_sizes, var_sizes):
    """The contraction for this structure, planned once per structure (sequential
    elimination: the backward pass needs each step's operands)."""
    options = {"scan": False} if _PLANNER_SCANS else {}
    plate_sizes = dict(plate_sizes)
    return plan_contraction(factors, sum_vars, tuple(plate_sizes), plate_sizes=plate_sizes,
                            var_sizes=dict(var_sizes), **options)


def _planner_scans():
    import inspect
    return "scan" in inspect.signature(plan_contraction).parameters


_PLANNER_SCANS = _planner_scans()


def _site_value(choice, support, site):
    """The support element chosen in each slice, laid out at the site's plate dims (size 1
    between them) and expanded over the site's plates the choice does not vary along."""
    frames = {f.name: f for f in site["cond_indep_stack"] if f.dim is not None}
    rank = max((-f.dim for f in frames.values()), default=0)
    order = sorted(choice.plates, key=lambda p: frames[p].dim)  # leftmost dim first
    index = choice.index.permute(tuple(choice.plates.index(p) for p in order))
    shape, full = [1] * rank, [1] * rank
    for p in order:
        shape[rank + frames[p].dim] = frames[p].subsample_size
    for f in frames.values():
        full[rank + f.dim] = f.subsample_size
    return support[index.reshape(shape).expand(full)]


# ---- run 3: replay the chosen values -----------------------------------------------------------

class _Replay(Messenger):
    """Set every unobserved sample site (and plate subsample) to the given value."""

    def __init__(self, values, subsamples):
        super().__init__(None)
        self.values, self.subsamples = values, subsamples

    def process_message(self, msg):
        kind = msg["type"]
        if kind == "sample" and not msg["is_observed"] and msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
        elif kind == "subsample" and msg["name"] in self.subsamples:
            msg["value"] = self.subsamples[msg["name"]]["value"]
