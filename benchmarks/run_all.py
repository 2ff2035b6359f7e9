"""Run every benchmark module's ``main(quick)`` and write ``benchmarks/results.md``.

A benchmark module is any ``benchmarks/*.py`` (other than ``common`` and ``run_all``) that
defines ``main(quick=False, out=sys.stdout)`` returning its markdown section. The file starts
with one summary table of every workload's ratios to hand-written torch, then each module's
section with the full tables.

Each module runs in a fresh Python process of its own (its contenders still interleaved in
that one process), so a workload's figures are what running its script alone gives: not
shifted by the objects, plan caches and compiled graphs earlier workloads left behind
(at the HMM's T=100, running coin, gmm and sbn first in the same process moved svigraph's
ratio by +0.05 to +0.1).

Run: python benchmarks/run_all.py [--quick] [--only coin,gmm,...] [--output PATH]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks.common import SUMMARY, machine_info, pyro_version, summary_table  # noqa: E402

_SKIP = {"common", "run_all", "__init__",
         # run alone: the Pyro cross-checks (crosscheck_enum asserts svigraph imported no
         # Pyro, which the benchmarks before it do) and jit_timing
         "crosscheck_enum", "crosscheck_infer", "jit_timing"}


# Per-step timings first (in this order), then whatever else defines main().
_ORDER = ("coin", "gmm", "chain", "sbn", "hmm", "vae")


def benchmark_modules(only=None):
    """The benchmark modules, imported: the per-step ones in ``_ORDER``, then the rest by name."""
    names = [m.name for m in pkgutil.iter_modules([_HERE]) if m.name not in _SKIP]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    if only:
        names = [n for n in names if n in only]
    modules = [importlib.import_module(f"benchmarks.{name}") for name in names]
    return [m for m in modules if callable(getattr(m, "main", None))
            and "quick" in inspect.signature(m.main).parameters]


def run_isolated(name, quick):
    """Run benchmark module ``name``'s ``main`` in a fresh process (its output streams to
    ours); return its markdown section and its summary rows."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--output", result]
        subprocess.run(cmd + (["--quick"] if quick else []), check=True)
        with open(result) as f:
            got = json.load(f)
    return got["section"], [tuple(entry) for entry in got["summary"]]


def _child(name, quick, output):
    """The fresh process's side of ``run_isolated``."""
    section = importlib.import_module(f"benchmarks.{name}").main(quick=quick)
    with open(output, "w") as f:
        json.dump({"section": section, "summary": SUMMARY}, f)


def main(quick=False, output=os.path.join(_HERE, "results.md"), only=None):
    start = time.perf_counter()
    sections = []
    for module in benchmark_modules(only):
        print(f"== {module.__name__} ==", flush=True)
        section, summary = run_isolated(module.__name__.rsplit(".", 1)[1], quick)
        sections.append(section)
        SUMMARY.extend(summary)
    seconds = time.perf_counter() - start
    header = ["# svigraph benchmark results", "",
              f"- machine: {machine_info()}",
              f"- pyro: {pyro_version() or 'not installed (Pyro columns skipped)'}",
              f"- run: `python benchmarks/run_all.py{' --quick' if quick else ''}"
              f"{' --only ' + ','.join(only) if only else ''}` ({seconds:.0f} s)",
              "- ms/step: median over the repeats of (block time / steps in block); IQR: "
              "interquartile range of the same; ratio: median / hand-written torch's median",
              "",
              "## summary: per-step time as a multiple of hand-written torch (lower is better)",
              "", summary_table(SUMMARY), ""]
    with open(output, "w") as f:
        f.write("\n".join(header) + "\n" + "\n".join(sections))
    print(f"wrote {output} ({seconds:.0f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="run all benchmarks, write results.md")
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--only", default="", help="comma-separated module names, e.g. coin,gmm")
    parser.add_argument("--output", default=os.path.join(_HERE, "results.md"))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # run one module (run_isolated)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.quick, args.output)
    else:
        main(args.quick, args.output, [n for n in args.only.split(",") if n] or None)
