"""HMM benchmark: ms per training step of an enumerated HMM, svigraph against a hand-written
log-space forward algorithm in torch (and Pyro's TraceEnum_ELBO when it is installed).

Model: K=5 hidden states, Gaussian emissions (unit scale), a plate of 20 sequences of T steps
(T in 100, 1,000, 10,000), data simulated from a fixed 5-state HMM. Parameters: the
transition matrix (a simplex-constrained param, leaf = biject_to(simplex) inverse) and the
emission means; the initial state is state 0's row. Every hidden state is summed out:

  svigraph     TraceEnum_ELBO(max_plate_nesting=1), ``for t in sg.markov(range(T))``, SVI.step
  svigraph JIT JitTraceEnum_ELBO, default options: the step is too big for inductor, so its
               forward pass is captured, its repeated work merged and replayed under
               autograd; the eager step and the capturing steps run before the timing, and
               their seconds are printed
  hand-written the log-space forward recursion over t (logsumexp of alpha + log trans), the
               same leaves, torch.optim.Adam; zero_grad / backward / step
  pyro         pyro.infer.TraceEnum_ELBO with pyro.markov, pyro.infer.SVI (optional)
  model code alone
               not an inference method: the model's own code (its T steps of indexing and
               svigraph distributions) and a backward pass through their parameters, with
               no log-density, normalization or contraction; what any library running the
               model eagerly spends before doing inference (``model_code_step``)

All use Adam(lr=0.05). Timings are interleaved in one process (``benchmarks.common``).

Memory and first call: each contender also runs alone in a fresh subprocess per T, which
reports the time of its first step (the harness's clock: wall, or thread CPU time with
SVIGRAPH_BENCH_CLOCK=cpu) (tracing and planning for svigraph) and the growth
of the process's peak resident set (``ru_maxrss``) from just before the first step to after
5 steps: the memory one step needs (activations, autograd graph, plans), which should grow
linearly with T. RSS is coarse (allocator caching, 4 KiB pages) but honest for torch on CPU,
where tracemalloc sees nothing. Pyro's steps at T=10,000 are slow: it runs 2 steps there,
and only in the subprocess.

Run: python benchmarks/hmm.py [--quick]      (Pyro: PYTHONPATH=/tmp/pyrotarget python ...)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
from torch.distributions import biject_to, constraints  # noqa: E402

import svigraph as sg  # noqa: E402
from svigraph import distributions as dist  # noqa: E402

from benchmarks.common import (CLOCK, SVIGRAPH, SVIGRAPH_JIT, TORCH,  # noqa: E402
                               machine_info, optional_pyro, pyro_version, run_workload)

K, SEQUENCES, LR = 5, 20, 0.05
LENGTHS = (100, 1000, 10_000)
TRUE_TRANS = torch.full((K, K), 0.1 / (K - 1)) + 0.9 * torch.eye(K) - 0.1 / (K - 1) * torch.eye(K)
TRUE_LOCS = torch.linspace(-4.0, 4.0, K)
INIT_TRANS = torch.full((K, K), 1.0 / K) * 0.5 + 0.5 * torch.eye(K)
INIT_LOCS = torch.linspace(-1.0, 1.0, K)
ENUM = {"enumerate": "parallel"}
PYRO = "pyro"
MODEL_CODE = "model code alone"  # the eager floor: see model_code_step
PYRO_INTERLEAVED_MAX_T = 1000   # longer: Pyro runs only in its subprocess, capped steps


def simulate(T, seed=0):
    """(T, SEQUENCES) observations of the true HMM, starting from state 0."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.zeros(SEQUENCES, dtype=torch.long)
    xs = torch.empty(T, SEQUENCES)
    for t in range(T):
        z = torch.multinomial(TRUE_TRANS[z], 1, generator=gen).squeeze(-1)
        xs[t] = TRUE_LOCS[z] + torch.randn(SEQUENCES, generator=gen)
    return xs


# ---- contenders: each returns a zero-argument step (one full training step) ----------------
def programs(lib, d, tag):
    """(model, guide) written with ``lib`` (svigraph or pyro) and its distributions ``d``."""
    trans_name, locs_name = f"{tag}trans", f"{tag}locs"

    def model(data):
        trans = lib.param(trans_name, INIT_TRANS.clone(), constraint=constraints.simplex)
        locs = lib.param(locs_name, INIT_LOCS.clone())
        with lib.plate("sequences", data.shape[1], dim=-1):
            z = 0
            for t in lib.markov(range(data.shape[0])):
                z = lib.sample(f"z_{t}", d.Categorical(trans[z]), infer=ENUM)
                lib.sample(f"x_{t}", d.Normal(locs[z], 1.0), obs=data[t])

    def guide(data):
        pass

    return model, guide


def svigraph_step(xs, tag, jit=False):
    model, guide = programs(sg, dist, tag)
    elbo = (sg.infer.JitTraceEnum_ELBO if jit else sg.infer.TraceEnum_ELBO)(max_plate_nesting=1)
    svi = sg.infer.SVI(model, guide, sg.optim.Adam({"lr": LR}), elbo)

    def step():
        return svi.step(xs)

    step.elbo = elbo
    return step


def capturing(step):
    """(seconds, steps) a JIT contender takes, after its eager step, until its step is
    replayed from a capture (one step at T >= 1,000; at T=100 the whole step is captured
    first, found over max_ops, and the forward pass captured on the next)."""
    start, n = CLOCK(), 0
    while n < 3 and not step.elbo.last_plan.jit.get("step", "").startswith("captured"):
        step()
        n += 1
    return CLOCK() - start, n


def jit_step(xs, tag):
    """(step, first-step seconds, capture seconds): the JIT contender, past its eager step
    and the step that captures (those two are timed here, not in the table)."""
    step = svigraph_step(xs, tag, jit=True)
    start = CLOCK()
    step()
    first = CLOCK() - start
    return step, first, capturing(step)[0]


def _leaves():
    """The hand-written steps' leaves: (simplex transform, its unconstrained leaf for the
    transition matrix, the emission means, Adam over both), from the models' inits."""
    to_simplex = biject_to(constraints.simplex)
    leaf = to_simplex.inv(INIT_TRANS.clone()).requires_grad_()
    locs = INIT_LOCS.clone().requires_grad_()
    return to_simplex, leaf, locs, torch.optim.Adam([leaf, locs], lr=LR)


def torch_step(xs):
    """The forward algorithm by hand: alpha_t = logsumexp_i(alpha_{t-1}[i] + log A[i, j])
    + log N(x_t | loc_j, 1), from alpha_0 = log A[0] + emission; loss -sum log p(x)."""
    to_simplex, leaf, locs, opt = _leaves()

    def step():
        log_trans = to_simplex(leaf).log()
        emit = torch.distributions.Normal(locs[:, None, None], 1.0).log_prob(xs)  # (K, T, S)
        # unbind, not emit[:, t]: T selects would each backpropagate a full (K, T, S) zero
        # tensor, O(T^2) at T = 10,000
        emit = emit.unbind(1)
        alpha = log_trans[0][:, None] + emit[0]
        for t in range(1, xs.shape[0]):
            alpha = torch.logsumexp(alpha[:, None] + log_trans[:, :, None], 0) + emit[t]
        loss = -torch.logsumexp(alpha, 0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def model_code_step(xs):
    """Not an inference method: a lower bound for any library that runs the model eagerly.

    The model's own code, step by step as svigraph runs it: the enumerated states' value
    tensors indexing ``trans`` and ``locs``, svigraph's distributions built from the rows
    (checks off; svigraph's Categorical defers normalizing a trainable table, so none is
    done here), and a backward pass that reaches ``trans`` and ``locs`` through every step's
    distribution parameters, then Adam. No log-density, no normalization, no contraction:
    whatever an eager library adds comes on top."""
    to_simplex, leaf, locs, opt = _leaves()
    states = (torch.arange(K).reshape(K, 1, 1), torch.arange(K).reshape(K, 1, 1, 1))

    def step():
        trans = to_simplex(leaf)
        z, params = 0, []
        for t in range(xs.shape[0]):
            row = dist.Categorical(trans[z], validate_args=False)
            params.append(row._param)  # the table as given (torch's name for it)
            z = states[t % 2]  # markov reuses two enumeration dims, alternately
            params.append(dist.Normal(locs[z], 1.0, validate_args=False).loc)
            xs[t]  # the observation the model reads
        loss = torch.cat([v.reshape(-1) for v in params]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def pyro_step(xs, tag):
    """Pyro's TraceEnum_ELBO on the same model, or None when Pyro is not importable."""
    pyro, pdist = optional_pyro()  # imported here: svigraph's subprocesses never load it
    if pyro is None:
        return None
    model, guide = programs(pyro, pdist, tag)
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), elbo)
    return lambda: svi.step(xs)


def make_step(name, xs, tag="bench_"):
    if name == SVIGRAPH:
        return svigraph_step(xs, tag)
    if name == SVIGRAPH_JIT:
        return svigraph_step(xs, tag, jit=True)
    if name == TORCH:
        return torch_step(xs)
    return pyro_step(xs, tag)


# ---- memory and first call, one subprocess per contender and T -----------------------------
def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak():
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS, where Linux allows;
    returns the baseline in KiB and how the peak will be read."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _rss_kib("VmRSS"), lambda: _rss_kib("VmHWM")
    except OSError:  # not Linux, or not allowed: ru_maxrss, which cannot be reset
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def probe(name, T, steps):
    """Run in a fresh process: first-step seconds, then ``steps - 1`` more; the peak-RSS
    growth over them in MiB; and the mean seconds of the later steps. One-time imports
    (torch.optim pulls in torch._dynamo on first use: seconds) happen before the clock."""
    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    xs = simulate(T)
    step = make_step(name, xs)
    if step is None:
        return {"skipped": "not installed"}
    before, peak = _reset_peak()
    start = CLOCK()
    first_loss = step()
    first = CLOCK() - start
    out = {}
    if name == SVIGRAPH_JIT:  # the steps that capture: timed on their own
        out["capture_s"], n = capturing(step)
        steps -= n
    start = CLOCK()
    for _ in range(steps - 1):
        step()
    later = (CLOCK() - start) / max(1, steps - 1)
    return {"first_s": first, "step_s": later, "rss_mib": (peak() - before) / 1024.0,
            "loss": first_loss, **out}


def run_probe(name, T, steps, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", name, "--length", str(T),
           "--steps", str(steps)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"over {timeout} s"}
    if done.returncode != 0:
        return {"skipped": (done.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_table(T, contenders, quick, out):
    rows = ["| contender | first step (s) | later steps (ms) | peak RSS growth (MiB) |",
            "| --- | ---: | ---: | ---: |"]
    print("\n".join(rows), file=out, flush=True)
    for name in contenders:
        steps = 2 if (name == PYRO and T > PYRO_INTERLEAVED_MAX_T) or T >= 10_000 else 5
        steps += 2 * (name == SVIGRAPH_JIT)  # its capturing steps are reported apart
        timeout = 120 if quick else 900
        r = run_probe(name, T, steps, timeout)
        if "skipped" in r:
            rows.append(f"| {name} | skipped: {r['skipped']} | | |")
        else:
            first = f"{r['first_s']:.2f}" + (f" (+ {r['capture_s']:.2f} capturing)"
                                             if "capture_s" in r else "")
            rows.append(f"| {name} | {first} | {r['step_s'] * 1e3:.1f} | {r['rss_mib']:.1f} |")
        print(rows[-1], file=out, flush=True)
    return "\n".join(rows) + "\n"


def settings(T, quick):
    """(warmup, repeats, inner) for one length: fewer, longer blocks as T grows."""
    if T <= 100:
        return (3, 5, 3) if quick else (10, 15, 5)
    if T <= 1000:
        return (1, 3, 1) if quick else (3, 9, 2)
    return (1, 3, 1)


def main(quick=False, out=sys.stdout, lengths=None):
    """Run the HMM benchmark; print and return its markdown section."""
    torch.set_num_threads(1)
    lengths = lengths or ((100, 1000) if quick else LENGTHS)
    have_pyro = pyro_version() is not None
    print(f"# HMM benchmark ({'quick' if quick else 'full'})\n{machine_info()}\n"
          f"pyro: {pyro_version() or 'not installed (column skipped)'}\n", file=out, flush=True)
    sections = ["## hmm\n", f"K={K} states, {SEQUENCES} sequences, Gaussian emissions, all "
                "states summed out; Adam(lr=0.05). Step = loss, backward, optimizer step.\n"]
    names = [SVIGRAPH, SVIGRAPH_JIT, TORCH] + ([PYRO] if have_pyro else [])
    for T in lengths:
        xs = simulate(T)
        jit, first, capture = jit_step(xs, f"T{T}_jit_")
        print(f"svigraph JIT at T={T}: first (eager) step {first:.2f} s, capturing steps "
              f"{capture:.2f} s", file=out, flush=True)
        steps = {SVIGRAPH: svigraph_step(xs, f"T{T}_"), SVIGRAPH_JIT: jit, TORCH: torch_step(xs),
                 MODEL_CODE: model_code_step(xs)}
        note = f"svigraph JIT's first step (eager) took {first:.1f} s and its capturing " \
               f"steps {capture:.1f} s, before the timing"
        if have_pyro and T <= PYRO_INTERLEAVED_MAX_T:
            steps[f"pyro {pyro_version()}"] = pyro_step(xs, f"T{T}_")
        elif have_pyro:
            note += "; Pyro is timed in its subprocess only at this length (see below)"
        warmup, repeats, inner = settings(T, quick)
        start = time.perf_counter()
        sections.append(run_workload(f"hmm T={T}", steps, warmup=warmup, repeats=repeats,
                                     inner=inner, out=out, note=note))
        print(f"(interleaved timing took {time.perf_counter() - start:.0f} s)", file=out,
              flush=True)
        head = (f"First step and memory at T={T}, each contender alone in a fresh process "
                "(peak RSS growth from before the first step to after the last):\n")
        print(head, file=out, flush=True)
        sections.append(head + "\n" + memory_table(T, names, quick, out))
    return "\n".join(sections)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T in (100, 1000), few repeats")
    parser.add_argument("--lengths", type=int, nargs="*", help="override the T values")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.length, args.steps)))
    else:
        main(args.quick, lengths=args.lengths)
