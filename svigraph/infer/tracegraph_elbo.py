"""``TraceGraph_ELBO`` (defined in ``trace_elbo``) and ``TrackNonReparam``.

``TrackNonReparam`` tags the value of every non-reparameterized sample site with its own name
as provenance, on top of what it was computed from, so the provenance of a log-prob tells
which such sites it depends on. svigraph's compiler does this once when tracing; this handler
is the same idea for ad-hoc inspection.

Example:
    >>> with TrackNonReparam():
    ...     tr = trace(model).get_trace()
    >>> tr.compute_log_prob()
    >>> get_provenance(tr["c"]["log_prob"])   # the non-reparameterized sites c depends on
"""

from svigraph.effects import Messenger
from svigraph.infer.trace_elbo import TraceGraph_ELBO  # noqa: F401
from svigraph.ops.provenance import track_provenance


class TrackNonReparam(Messenger):
    def postprocess_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and not msg["fn"].has_rsample:
            msg["value"] = track_provenance(msg["value"], frozenset({msg["name"]}))
