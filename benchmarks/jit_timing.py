"""JIT objectives against eager svigraph, hand-written torch and Pyro: ms per training step.

Workloads (one particle, Adam, one thread):

  coin-a      coin, pathwise Beta guide, Trace_ELBO, 10 flips in a plate (lr 5e-4)
  coin-b      coin, score function + decaying-average baseline (0.95), TraceGraph_ELBO
  chain-100   z_0 ~ N(0, 1), z_i ~ N(z_{i-1}, 1) for i < 100, x ~ N(z_99, 1) observed;
              mean-field Normal guide with a loc and a positive scale param per site (lr 1e-3)

Contenders: svigraph's eager objective, svigraph's JIT objective (backend from --backend),
a hand-written pure-torch step of the same math and optimizer (torch.optim.Adam over the
same leaves), for the chain also the hand-written site-by-site loop (one
torch.distributions.Normal per site, in Python), and Pyro 1.9.2's JitTrace_ELBO /
JitTraceGraph_ELBO when ``import pyro`` works (PYTHONPATH=/tmp/pyrotarget).

Contenders run interleaved in this one process (benchmarks.common.time_steps), so the
ratios hold on a busy machine even when absolute times do not.

Run: python benchmarks/jit_timing.py [--quick] [--backend inductor|fx] [--only coin-a,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
from torch.distributions import Bernoulli as TBernoulli  # noqa: E402
from torch.distributions import Beta as TBeta, Normal as TNormal  # noqa: E402

import svigraph as sg  # noqa: E402
from svigraph import distributions as dist  # noqa: E402
from svigraph.constraints import positive  # noqa: E402

from benchmarks.common import machine_info, time_steps  # noqa: E402

try:
    import pyro
    import pyro.distributions as pdist
    import pyro.infer
    import pyro.optim
except ImportError:
    pyro = None

FLIPS = torch.tensor([1.0] * 6 + [0.0] * 4)
BASELINE = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.95}}
COIN_LR, CHAIN_LR, CHAIN_N = 5e-4, 1e-3, 100
TORCH, LOOP = "hand-written torch", "hand-written site-by-site loop"
_tags = [0]


def _tag():
    _tags[0] += 1
    return f"t{_tags[0]}_"


# ---- coin ----------------------------------------------------------------------------------
def coin_programs(lib, d, score, tag):
    def model(data):
        f = lib.sample("fairness", d.Beta(10.0, 10.0))
        with lib.plate("flips", len(data)):
            lib.sample("obs", d.Bernoulli(f), obs=data)

    def guide(data):
        a = lib.param(tag + "a", torch.tensor(15.0), constraint=positive)
        b = lib.param(tag + "b", torch.tensor(15.0), constraint=positive)
        q = d.Beta(a, b)
        if score:
            q = q.with_rsample(False) if lib is sg else q.has_rsample_(False)
            lib.sample("fairness", q, infer=BASELINE)
        else:
            lib.sample("fairness", q)

    return model, guide


def coin_torch(score):
    log_a = torch.tensor(15.0).log().requires_grad_()
    log_b = torch.tensor(15.0).log().requires_grad_()
    opt = torch.optim.Adam([log_a, log_b], lr=COIN_LR)
    prior = TBeta(torch.tensor(10.0), torch.tensor(10.0))
    avg = [torch.zeros(())]

    def step():
        q = TBeta(log_a.exp(), log_b.exp())
        z = q.sample() if score else q.rsample()
        log_q = q.log_prob(z)
        elbo = prior.log_prob(z) + TBernoulli(z).log_prob(FLIPS).sum() - log_q
        if score:
            cost = elbo.detach()
            surrogate = log_q * (cost - avg[0])
            avg[0] = 0.95 * avg[0] + 0.05 * cost
            loss = -(elbo + (surrogate - surrogate.detach()))
        else:
            loss = -elbo
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def coin(score, backend):
    eager_loss = sg.infer.TraceGraph_ELBO() if score else sg.infer.Trace_ELBO()
    jit_loss = (sg.infer.JitTraceGraph_ELBO if score else sg.infer.JitTrace_ELBO)(
        jit_options={"backend": backend})
    out = {}
    for name, loss in (("svigraph eager", eager_loss), (f"svigraph JIT ({backend})", jit_loss)):
        model, guide = coin_programs(sg, dist, score, _tag())
        svi = sg.infer.SVI(model, guide, sg.optim.Adam({"lr": COIN_LR}), loss)
        out[name] = (lambda svi=svi: svi.step(FLIPS))
    out[TORCH] = coin_torch(score)
    if pyro is not None:
        model, guide = coin_programs(pyro, pdist, score, _tag())
        loss = pyro.infer.JitTraceGraph_ELBO() if score else pyro.infer.JitTrace_ELBO()
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": COIN_LR}), loss)
        out[f"pyro {pyro.__version__} {type(loss).__name__}"] = lambda svi=svi: svi.step(FLIPS)
    return out


# ---- chain -----------------------------------------------------------------------------------
def chain_programs(lib, d, n, tag):
    def model(x):
        z = lib.sample("z_0", d.Normal(0.0, 1.0))
        for i in range(1, n):
            z = lib.sample(f"z_{i}", d.Normal(z, 1.0))
        lib.sample("x", d.Normal(z, 1.0), obs=x)

    def guide(x):
        for i in range(n):
            loc = lib.param(f"{tag}loc_{i}", torch.tensor(0.0))
            scale = lib.param(f"{tag}scale_{i}", torch.tensor(1.0), constraint=positive)
            lib.sample(f"z_{i}", d.Normal(loc, scale))

    return model, guide


def chain_loop(n):
    """The site-by-site loop: one Normal per site, in Python, for the guide and the model."""
    locs = [torch.tensor(0.0, requires_grad=True) for _ in range(n)]
    log_scales = [torch.tensor(0.0, requires_grad=True) for _ in range(n)]
    opt = torch.optim.Adam(locs + log_scales, lr=CHAIN_LR)
    x = torch.tensor(1.5)

    def step():
        elbo = 0.0
        prev = None
        for i in range(n):
            q = TNormal(locs[i], log_scales[i].exp())
            z = q.rsample()
            p = TNormal(0.0, 1.0) if prev is None else TNormal(prev, 1.0)
            elbo = elbo + p.log_prob(z) - q.log_prob(z)
            prev = z
        elbo = elbo + TNormal(prev, 1.0).log_prob(x)
        loss = -elbo
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def chain_vectorized(n):
    """The same math written with whole-vector tensors (one Normal for all sites)."""
    locs = [torch.tensor(0.0, requires_grad=True) for _ in range(n)]
    log_scales = [torch.tensor(0.0, requires_grad=True) for _ in range(n)]
    opt = torch.optim.Adam(locs + log_scales, lr=CHAIN_LR)
    x = torch.tensor(1.5)

    def step():
        loc, scale = torch.stack(locs), torch.stack(log_scales).exp()
        q = TNormal(loc, scale)
        z = q.rsample()
        prev = torch.cat([z.new_zeros(1), z[:-1]])
        elbo = TNormal(prev, 1.0).log_prob(z).sum() - q.log_prob(z).sum() \
            + TNormal(z[-1], 1.0).log_prob(x)
        loss = -elbo
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def chain(backend, n=CHAIN_N):
    x = torch.tensor(1.5)
    out = {}
    for name, loss in (("svigraph eager", sg.infer.Trace_ELBO()),
                       (f"svigraph JIT ({backend})",
                        sg.infer.JitTrace_ELBO(jit_options={"backend": backend}))):
        model, guide = chain_programs(sg, dist, n, _tag())
        svi = sg.infer.SVI(model, guide, sg.optim.Adam({"lr": CHAIN_LR}), loss)
        out[name] = (lambda svi=svi: svi.step(x))
    out[LOOP] = chain_loop(n)
    out[TORCH + " (vectorized)"] = chain_vectorized(n)
    if pyro is not None:
        model, guide = chain_programs(pyro, pdist, n, _tag())
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": CHAIN_LR}),
                             pyro.infer.JitTrace_ELBO())
        out[f"pyro {pyro.__version__} JitTrace_ELBO"] = lambda svi=svi: svi.step(x)
    return out


WORKLOADS = {
    "coin-a": ("coin, pathwise, Trace_ELBO, flips in a plate", lambda b: coin(False, b), TORCH),
    "coin-b": ("coin, score function + decaying baseline, TraceGraph_ELBO",
               lambda b: coin(True, b), TORCH),
    "chain-100": (f"chain N={CHAIN_N}, mean-field Normal guide, Trace_ELBO",
                  lambda b: chain(b), LOOP),
}


def run(key, backend, warmup, repeats, inner):
    title, build, base = WORKLOADS[key]
    torch.manual_seed(0)
    steps = build(backend)
    start = time.perf_counter()
    notes = []
    for name, fn in list(steps.items()):  # the JIT's capture and compile happen here, untimed
        try:
            for _ in range(3):
                fn()
        except Exception as err:  # noqa: BLE001 - e.g. Pyro's JIT refusing a workload
            notes.append(f"{name} dropped: {type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0]}")
            del steps[name]
    setup = time.perf_counter() - start
    rows = time_steps(steps, warmup=warmup, repeats=repeats, inner=inner)
    print(f"\n### {title}  ({repeats} repeats x {inner} steps, interleaved, 1 thread; "
          f"set-up incl. JIT compile {setup:.1f} s)")
    print(f"| contender | ms/step (median) | IQR | x {base} |")
    print("| --- | ---: | ---: | ---: |")
    for name, t in rows.items():
        print(f"| {name} | {t.median:.4f} | {t.iqr:.4f} | {t.median / rows[base].median:.2f}x |")
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", default="inductor", choices=("inductor", "fx"))
    parser.add_argument("--only", default=",".join(WORKLOADS))
    opts = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# JIT timing\n{machine_info()}\npyro: "
          f"{getattr(pyro, '__version__', 'not importable (column skipped)')}")
    warmup, repeats, inner = (10, 5, 20) if opts.quick else (30, 15, 40)
    for key in opts.only.split(","):
        run(key, opts.backend, warmup, repeats, inner)


if __name__ == "__main__":
    main()
