"""Benchmark harness: interleaved step timing and markdown tables.

Every contender is a zero-argument callable doing one full training step (loss, backward,
optimizer step). ``time_steps`` runs all contenders of a workload in this one process,
round-robin: repeat r times each contender for ``inner`` consecutive steps, then moves on
to the next one, so slow drift of the machine (frequency scaling, other load) hits every
contender alike. The starting contender rotates from one repeat to the next so no one
always runs first. Python's garbage collector stays enabled during the timed steps (its cost
is part of a step's cost); a ``gc.collect()`` runs before each timed block, outside it.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Timing:
    """Milliseconds per step of one contender over the repeats."""

    median: float
    q1: float
    q3: float
    samples: list = field(default_factory=list, repr=False)

    @property
    def iqr(self):
        return self.q3 - self.q1


def _quartiles(values):
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def time_steps(step_fns, warmup=50, repeats=21, inner=50):
    """Time each contender's step, interleaved; return ``{name: Timing}`` in ms per step.

    Args:
        step_fns: ``{name: callable}``, each call one training step.
        warmup: untimed steps per contender first (also interleaved, one step at a time).
        repeats: timed blocks per contender; median and IQR are over these.
        inner: consecutive steps in one timed block (ms/step = block time / inner).
    """
    torch.set_num_threads(1)
    names = list(step_fns)
    for _ in range(warmup):
        for name in names:
            step_fns[name]()
    samples = {name: [] for name in names}
    clock = time.perf_counter
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn = step_fns[name]
            gc.collect()
            start = clock()
            for _ in range(inner):
                fn()
            samples[name].append((clock() - start) * 1e3 / inner)
    out = {}
    for name in names:
        q1, med, q3 = _quartiles(samples[name])
        out[name] = Timing(median=med, q1=q1, q3=q3, samples=samples[name])
    return out


def format_table(rows, baseline_name):
    """A markdown table of ms/step (median, IQR) and the ratio of each median to
    ``baseline_name``'s (the hand-written torch contender). Returns the table as a string.

    Args:
        rows: ``{name: Timing}`` (as ``time_steps`` returns) or a list of ``(name, Timing)``.
        baseline_name: the row every ratio divides by.
    """
    items = list(rows.items()) if isinstance(rows, dict) else list(rows)
    base = dict(items)[baseline_name].median
    width = max(len("contender"), *(len(name) for name, _ in items))
    lines = [f"| {'contender':<{width}} | ms/step (median) | IQR (ms) | × hand-written torch |",
             f"| {'-' * width} | ---------------: | -------: | -------------------: |"]
    for name, t in items:
        lines.append(f"| {name:<{width}} | {t.median:16.4f} | {t.iqr:8.4f} | "
                     f"{t.median / base:19.2f}× |")
    return "\n".join(lines)


def print_table(rows, baseline_name, out=sys.stdout):
    """Print ``format_table(rows, baseline_name)``; return the string."""
    text = format_table(rows, baseline_name)
    print(text, file=out, flush=True)
    return text


def machine_info():
    """One line naming the machine, torch and the date."""
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
            f"(benchmarks use 1 thread), Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}; {date}")


def pyro_version():
    """Pyro's version, or None when it is not installed (it is optional)."""
    try:
        import pyro
    except ImportError:
        return None
    return getattr(pyro, "__version__", "?")
