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

# The clock timed blocks are read with. Wall time by default; SVIGRAPH_BENCH_CLOCK=cpu reads
# this thread's CPU time instead, which a loaded (shared) machine disturbs much less: waiting
# for a core is not counted, only the work itself (cache sharing still shows).
CLOCK_NAME = os.environ.get("SVIGRAPH_BENCH_CLOCK", "wall")
CLOCK = time.thread_time if CLOCK_NAME == "cpu" else time.perf_counter


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
    clock = CLOCK
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
    clock = "thread CPU time" if CLOCK_NAME == "cpu" else "wall clock"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
            f"(benchmarks use 1 thread), Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}; {date}; "
            f"{clock}")


def optional_pyro():
    """``(pyro, pyro.distributions)`` with ``pyro.infer`` and ``pyro.optim`` loaded, or
    ``(None, None)`` when Pyro is not installed (its rows are then skipped)."""
    try:
        import pyro
        import pyro.distributions as pdist
        import pyro.infer  # noqa: F401
        import pyro.optim  # noqa: F401
    except ImportError:
        return None, None
    return pyro, pdist


def pyro_version():
    """Pyro's version, or None when it is not installed (it is optional)."""
    try:
        import pyro
    except ImportError:
        return None
    return getattr(pyro, "__version__", "?")


TORCH = "hand-written torch"
# The same hand-written step with torch's default argument checks on. The ratio column's
# baseline runs with them off, as svigraph's steps do once a plan has been validated (it
# checks on the first step of a structure and every 100th; see the README), so that the
# ratios compare the same work.
TORCH_CHECKED = "hand-written torch, torch's checks on"
SVIGRAPH = "svigraph"
SVIGRAPH_JIT = "svigraph JIT"

# (workload, {contender: ratio to hand-written torch}, hand-written ms/step) for every table
# printed by ``run_workload`` in this process: run_all's summary table reads it.
SUMMARY = []


def jit_loss(name, **kwargs):
    """An instance of ``svigraph.infer.<name>`` (a JIT objective), or None when this svigraph
    has no such class yet: the JIT row is then skipped."""
    import svigraph as sg
    cls = getattr(sg.infer, name, None)
    return None if cls is None else cls(**kwargs)


def pyro_row_name():
    return f"pyro {pyro_version()}"


def checked(step, name, out=sys.stdout):
    """``step`` after one trial call, or None (with a note) when the contender fails: a
    missing feature in one contender must not stop the others' timings."""
    try:
        step()
    except Exception as err:  # noqa: BLE001 - reported, the row is skipped
        print(f"  ({name} skipped: {type(err).__name__}: {str(err).splitlines()[0][:160]})",
              file=out, flush=True)
        return None
    return step


def checks_off(step):
    """``step`` run with torch's distribution argument checks off (restored after)."""
    from svigraph.recording import torch_checks

    def unchecked():
        with torch_checks(False):
            return step()

    return unchecked


def with_checked_torch(steps):
    """``steps`` with the hand-written contender run with torch's checks off, and the same
    step with torch's default checks added after it as ``TORCH_CHECKED``."""
    out = {}
    for name, step in steps.items():
        if name == TORCH and step is not None:
            out[TORCH] = checks_off(step)
            out[TORCH_CHECKED] = step
        else:
            out[name] = step
    return out


def run_workload(title, steps, *, warmup, repeats, inner, out=sys.stdout, note=""):
    """Time ``steps`` ({name: step}) interleaved; print and return the markdown section.

    Contenders whose first step raises are dropped with a note; the ratio column divides by
    the hand-written torch contender, which must be present, run with torch's checks off
    (``with_checked_torch`` adds it with them on, as a row of its own).
    """
    kept = {}
    for name, step in with_checked_torch(steps).items():
        if step is not None and checked(step, name, out) is not None:
            kept[name] = step
    rows = time_steps(kept, warmup=warmup, repeats=repeats, inner=inner)
    head = f"### {title}\n\n{repeats} repeats x {inner} steps, interleaved, 1 thread" + \
        (f"; {note}" if note else "") + "\n"
    print(head, file=out, flush=True)
    table = print_table(rows, TORCH, out=out)
    print(file=out, flush=True)
    base = rows[TORCH].median
    SUMMARY.append((title, {name: t.median / base for name, t in rows.items()}, base))
    return head + "\n" + table + "\n"


def summary_table(entries=None):
    """One markdown table: every workload's ratios to hand-written torch, side by side."""
    entries = SUMMARY if entries is None else entries
    columns = [SVIGRAPH, SVIGRAPH_JIT, TORCH_CHECKED]
    for _, ratios, _ in entries:
        columns += [name for name in ratios if name not in columns and name != TORCH]
    lines = ["| workload | hand-written torch (ms/step) | "
             + " | ".join(f"{c} (×)" for c in columns) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |"]
    for title, ratios, base in entries:
        cells = [f"{ratios[c]:.2f}" if c in ratios else "–" for c in columns]
        lines.append(f"| {title} | {base:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
