"""Compile time of a chain of N scalar latents (z_i ~ Normal(z_{i-1}, 1), half the guide's
sites score-function), split into the recording run, tracing with provenance, and the
compiler passes; with the cost-set sizes that make the work quadratic in the output.

Run: python benchmarks/compile_time.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import svigraph as sg
from compiler import compile_plan
from svigraph import distributions as dist
from svigraph.tracing import trace_graph


def chain(n):
    def model():
        z = torch.tensor(0.0)
        for i in range(n):
            z = sg.sample(f"z{i}", dist.Normal(z, 1.0))
        sg.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))

    def guide():
        for i in range(n):
            loc = sg.param(f"m{i}", torch.tensor(0.0))
            sg.sample(f"z{i}", dist.Normal(loc, 1.0).with_rsample(i % 2 == 0))

    return model, guide


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), out


def main(quick=False, out=sys.stdout):
    torch.set_num_threads(1)
    sizes = (10, 100) if quick else (10, 100, 1000)
    rows = ["| N sites | sg.compile (s) | trace_graph (s) | passes (s) | cost terms (all sites) |",
            "|---:|---:|---:|---:|---:|"]
    for n in sizes:
        sg.clear_param_store()
        model, guide = chain(n)
        repeats = 3 if n < 1000 else 2
        total, _, plan = _best(lambda: sg.compile(model, guide, loss=sg.infer.TraceGraph_ELBO()),
                               repeats)
        traced, _, tg = _best(lambda: trace_graph(model, guide, (), {}), repeats)
        passes, _, _ = _best(lambda: compile_plan(tg.graph, loss_name="TraceGraph_ELBO",
                                                  downstream_only=True), repeats)
        n_cost = sum(len(s.cost) for s in plan.sites.values())
        rows.append(f"| {n} | {total:.3f} | {traced:.3f} | {passes:.3f} | {n_cost} |")
    table = "### compile time, chain of N latents (best of 2-3 runs)\n\n" + "\n".join(rows)
    print(table, file=out)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
