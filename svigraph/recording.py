"""The per-step recording handler: fills the runtime's records (see ``runtime.records``)."""

from __future__ import annotations

from compiler.errors import duplicate_site
from svigraph.effects import Messenger


class Recorder(Messenger):
    """Record sample sites, params and plate subsamples of one run; optionally replay.

    Args:
        replay: a Recorder of an earlier run (the guide's) whose unobserved sample values and
            plate subsamples this run reuses.
    """

    __slots__ = ("fn", "sites", "params", "subsamples", "_replay")

    def __init__(self, replay=None):
        self.fn = None
        self.sites = {}
        self.params = {}
        self.subsamples = {}
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
            name = msg["name"]
            if name in self.sites:
                raise duplicate_site(name)
            self.sites[name] = msg
        elif kind == "param":
            self.params[msg["name"]] = msg["value"]
        elif kind == "subsample":
            self.subsamples[msg["name"]] = msg

    def replay_trace(self):
        """The recorded values as a name -> site mapping, for ``handlers.replay``."""
        return {**self.subsamples, **self.sites}


def record(model, guide, args, kwargs):
    """Run the guide, then the model replayed on it; return their two Recorders."""
    guide_rec = Recorder()
    with guide_rec:
        guide(*args, **kwargs)
    model_rec = Recorder(replay=guide_rec)
    with model_rec:
        model(*args, **kwargs)
    return guide_rec, model_rec
