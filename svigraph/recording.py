"""The per-step recording handler: fills the runtime's records (see ``runtime.records``).

``record`` may run with torch's distribution argument checks off (``validate=False``): the
ELBO does so once a plan's first step has run with them on, and replays a step with them on
whenever something fails (see ``svigraph.infer.elbo``).
"""

from __future__ import annotations

from torch.distributions import Distribution

from compiler.errors import duplicate_site
from runtime.records import site_signature, structure_key
from svigraph.effects import Messenger


class Recorder(Messenger):
    """Record sample sites, params and plate subsamples of one run; optionally replay.

    Args:
        replay: a Recorder of an earlier run (the guide's) whose unobserved sample values and
            plate subsamples this run reuses.

    ``signatures`` holds each sample site's ``site_signature`` as it was recorded, while its
    message is at hand (read from the records after the run, they cost several times more:
    the run has pushed them out of the CPU's caches); None once a site was recorded through
    the general handler path, where inner handlers may still change its message.
    """

    __slots__ = ("fn", "sites", "params", "subsamples", "signatures", "_replay")

    def __init__(self, replay=None):
        self.fn = None
        self.sites = {}
        self.params = {}
        self.subsamples = {}
        self.signatures = []
        self._replay = replay

    def process_message(self, msg):
        replay = self._replay
        if replay is None or msg["value"] is not None:
            return
        kind = msg["type"]
        if kind == "sample":
            site = replay.sites.get(msg["name"])
            if site is not None:
                msg["value"] = site["value"]
        elif kind == "subsample":
            site = replay.subsamples.get(msg["name"])
            if site is not None:
                msg["value"] = site["value"]

    def postprocess_message(self, msg):
        kind = msg["type"]
        if kind == "sample":
            self._add_site(msg)
            self.signatures = None  # inner handlers' postprocessing comes after this
        elif kind == "param":
            self.params[msg["name"]] = msg["value"]
        elif kind == "subsample":
            self.subsamples[msg["name"]] = msg

    def record_final(self, msg):
        """Record a sample site whose message no handler changes any more (svigraph's own
        step: ``primitives._recorded`` calls this after every handler's postprocessing)."""
        self._add_site(msg)
        signatures = self.signatures
        if signatures is not None:
            signatures.append(site_signature(msg))

    def _add_site(self, msg):
        name = msg["name"]
        if name in self.sites:
            raise duplicate_site(name)
        self.sites[name] = msg

    def replay_trace(self):
        """The recorded values as a name -> site mapping, for ``handlers.replay``."""
        return {**self.subsamples, **self.sites}


class torch_checks:
    """Context manager: torch's default distribution validation on (``True``: left as the
    user set it) or off (``False``) inside, restored on exit.

    A distribution built without an explicit ``validate_args`` reads the default each time
    it checks, so its ``log_prob`` must run inside the same setting as its construction.
    """

    __slots__ = ("enabled", "saved")

    def __init__(self, enabled):
        self.enabled = enabled

    def __enter__(self):
        self.saved = Distribution._validate_args
        if not self.enabled:
            Distribution._validate_args = False
        return self

    def __exit__(self, *exc):
        Distribution._validate_args = self.saved


def recorded_structure_key(guide_rec, model_rec, args_key=()):
    """``runtime.records.structure_key`` of two Recorders' runs, from the signatures they
    took while recording when both have them."""
    guide_sigs, model_sigs = guide_rec.signatures, model_rec.signatures
    if guide_sigs is None or model_sigs is None:
        return structure_key(guide_rec.sites, model_rec.sites, args_key)
    return tuple(guide_sigs), tuple(model_sigs), args_key


def record(model, guide, args, kwargs, validate=True):
    """Run the guide, then the model replayed on it; return their two Recorders.

    Args:
        validate: False runs both with torch's distribution validation off (see
            ``torch_checks``; run their log-probs inside ``torch_checks(False)`` too).
    """
    with torch_checks(validate):
        guide_rec = Recorder()
        with guide_rec:
            guide(*args, **kwargs)
        model_rec = Recorder(replay=guide_rec)
        with model_rec:
            model(*args, **kwargs)
    return guide_rec, model_rec
