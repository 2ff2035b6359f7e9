"""``Trace``: the record of one run of a model or guide, a mapping of site name to site dict.

Each site dict has the keys ``name``, ``type`` ("sample", "param" or "subsample"), ``fn``,
``value``, ``is_observed``, ``infer``, ``scale``, ``mask`` and ``cond_indep_stack`` (plate
frames, innermost first); ``compute_log_prob`` adds ``log_prob`` (scaled and masked, batch
shaped) and ``log_prob_sum``.
"""

from __future__ import annotations

from compiler.errors import duplicate_site
from runtime.terms import scale_and_mask, site_log_prob  # noqa: F401  (site_log_prob re-exported)


class Trace(dict):
    """An ordered mapping from site name to site dict (see the module docstring).

    ``trace.nodes`` is the mapping itself, for code written against that name.
    """

    @property
    def nodes(self):
        return self

    def add_site(self, msg):
        name = msg["name"]
        if name in self and msg["type"] != "param":
            raise duplicate_site(name)
        self[name] = msg

    def sample_sites(self):
        return [site for site in self.values() if site["type"] == "sample"]

    @property
    def stochastic_nodes(self):
        return [s["name"] for s in self.sample_sites() if not s["is_observed"]]

    @property
    def observation_nodes(self):
        return [s["name"] for s in self.sample_sites() if s["is_observed"]]

    @property
    def param_nodes(self):
        return [name for name, site in self.items() if site["type"] == "param"]

    def compute_log_prob(self, site_filter=lambda name, site: True):
        """Set ``log_prob`` (scaled, masked) and ``log_prob_sum`` on every sample site."""
        for site in self.sample_sites():
            if "log_prob" in site or not site_filter(site["name"], site):
                continue
            log_p = scale_and_mask(site_log_prob(site), site["scale"], site["mask"])
            site["log_prob"] = log_p
            site["log_prob_sum"] = log_p.sum()

    def log_prob_sum(self, site_filter=lambda name, site: True):
        """The sum of every sample site's scaled, masked log density."""
        total = 0.0
        for site in self.sample_sites():
            if not site_filter(site["name"], site):
                continue
            if "log_prob_sum" in site:
                total = total + site["log_prob_sum"]
            else:
                total = total + scale_and_mask(site_log_prob(site), site["scale"],
                                               site["mask"]).sum()
        return total

    def format_shapes(self):
        """A table of each sample site's distribution and value shapes (batch | event)."""
        rows = []
        for site in self.sample_sites():
            fn = site["fn"]
            batch, event = tuple(fn.batch_shape), tuple(fn.event_shape)
            rows.append((site["name"], "dist", " ".join(map(str, batch)) + " | "
                         + " ".join(map(str, event))))
            value = site["value"]
            rows.append(("", "value", " ".join(map(str, tuple(value.shape)))))
        width = max((len(r[0]) for r in rows), default=0)
        return "\n".join(["Trace Shapes:"] + [f"{a:>{width}} {b:5} {c}" for a, b, c in rows])
