"""Plans cached by structure key, with an explanation of each miss."""

from __future__ import annotations

import hashlib
import logging

import torch

log = logging.getLogger("svigraph.compiler")


def key_hash(key):
    """A short, stable hex digest of a structure key, for printing."""
    return hashlib.sha1(repr(key).encode()).hexdigest()[:8]


class PlanCache:
    """key -> Plan. ``explain_miss(key)`` says how ``key`` differs from the nearest cached one."""

    def __init__(self):
        self._plans = {}
        self._last = None  # (key, plan) of the last hit

    def __len__(self):
        return len(self._plans)

    def __contains__(self, key):
        return key in self._plans

    def get(self, key):
        # A training loop asks for the same structure every step: comparing with the last
        # hit skips hashing a key that holds every site (thousands, in a long chain).
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        plan = self._plans.get(key)
        if plan is not None:
            self._last = (key, plan)
        return plan

    def put(self, key, plan):
        self._plans[key] = plan
        self._last = None

    def clear(self):
        self._plans.clear()
        self._last = None

    def explain_miss(self, key):
        if not self._plans:
            return "first compile"
        return min((describe_difference(old, key) for old in self._plans), key=len)


def describe_difference(old, new):
    """A short sentence on how two structure keys differ (sites added, removed, reshaped)."""
    notes = []
    for i, program in enumerate(("guide", "model")):
        before = {s[0]: s for s in old[i]}
        after = {s[0]: s for s in new[i]}
        added = [n for n in after if n not in before]
        removed = [n for n in before if n not in after]
        changed = [n for n in after if n in before and after[n] != before[n]]
        if added:
            notes.append(f"{program} sites added: {', '.join(added)}")
        if removed:
            notes.append(f"{program} sites removed: {', '.join(removed)}")
        for n in changed:
            notes.append(f"{program} site {n!r}: {_site_change(before[n], after[n])}")
    if old[2] != new[2]:
        notes.append("arguments changed")
    return "; ".join(notes) or "same structure"


def _site_change(a, b):
    labels = ("name", "observed", "shape", "reparameterized", "event dims", "plates", "enumerate")
    return ", ".join(f"{label} {_show(x)} -> {_show(y)}"
                     for label, x, y in zip(labels, a, b) if x != y)


def _show(value):
    """Plate frames as ``d[3]`` (subsample ``d[2/10]``), anything else as it prints."""
    if isinstance(value, tuple) and value and all(hasattr(f, "subsample_size") for f in value):
        return "(" + ", ".join(
            f"{f.name}[{f.subsample_size}]" if f.size == f.subsample_size
            else f"{f.name}[{f.subsample_size}/{f.size}]" for f in value) + ")"
    if isinstance(value, torch.Size):  # a shape prints as a tuple
        return str(tuple(value))
    return str(value)
