"""What one step records per site, and the structure key a plan is cached under.

A record is the site's message dict as svigraph's recording handler leaves it: keys
``name``, ``type``, ``fn``, ``value``, ``is_observed``, ``infer``, ``scale``, ``mask`` and
``cond_indep_stack`` (plate frames with ``name``, ``size``, ``subsample_size``, ``dim``,
``counter``). The runtime reads nothing else, so records can come from any front end.
"""

from __future__ import annotations

import torch


def site_signature(site):
    """What about one site, if changed, may change the plan compiled for it."""
    fn = site["fn"]
    # whether a site can be reparameterized matters only where its value is drawn (not
    # observed, not enumerated); reading it costs a property call per site and step
    drawn = not site["is_observed"] and "enum_dim" not in site
    return (site["name"], site["is_observed"], site["value"].shape,
            fn.has_rsample if drawn else None, len(fn.event_shape), site["cond_indep_stack"],
            site["infer"].get("enumerate"))


def structure_key(guide_records, model_records, args_key=()):
    """The structure signature of one run: sites, shapes, plates and enumeration.

    Args:
        guide_records, model_records: name -> record mappings of the sample sites.
        args_key: a hashable summary of the non-tensor arguments (see ``args_signature``).
    """
    return (
        tuple(site_signature(s) for s in guide_records.values()),
        tuple(site_signature(s) for s in model_records.values()),
        args_key,
    )


def args_signature(args, kwargs):
    """Tensors by shape and dtype, plain Python values by value: what a plan may depend on."""
    return (tuple(_arg_sig(a) for a in args),
            tuple((k, _arg_sig(v)) for k, v in sorted(kwargs.items())))


def _arg_sig(x):
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), x.dtype)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(_arg_sig(v) for v in x))
    return type(x).__name__
