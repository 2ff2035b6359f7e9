"""VAE benchmark: a small MLP VAE (784-200-20, batch 128), where tensor compute dominates.

Model: in a plate of 128 data points, ``z ~ Normal(0, 1)`` (20 dims, ``.to_event(1)``),
``x ~ Bernoulli(logits=decoder(z))`` (784 dims); decoder 20-200-784 with softplus. Guide:
``z ~ Normal(loc, scale)`` from an encoder 784-200-(20, 20) with softplus, ``scale = exp``.
Trace_ELBO, pathwise, Adam(lr=1e-3). The data are a fixed random binary batch (MNIST-sized;
the numbers here do not depend on what the pixels are).

Contenders: svigraph, svigraph JIT (``JitTrace_ELBO`` when it exists), a hand-written torch
step of the same math and optimizer, and Pyro 1.9.2 when installed.

Run: python benchmarks/vae.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
import torch.distributions as td  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import svigraph as sg  # noqa: E402
from svigraph import distributions as dist  # noqa: E402

from benchmarks.common import (SVIGRAPH, SVIGRAPH_JIT, TORCH, jit_loss, machine_info,  # noqa: E402
                               optional_pyro, pyro_row_name, pyro_version,
                               run_workload)

pyro, pdist = optional_pyro()  # (None, None) without Pyro: its rows are skipped

B, X_DIM, H_DIM, Z_DIM, LR = 128, 784, 200, 20, 1e-3
TITLE = "VAE 784-200-20, batch 128, Trace_ELBO"


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(X_DIM, H_DIM)
        self.fc_loc = nn.Linear(H_DIM, Z_DIM)
        self.fc_scale = nn.Linear(H_DIM, Z_DIM)

    def forward(self, x):
        h = F.softplus(self.fc1(x))
        return self.fc_loc(h), self.fc_scale(h).exp()


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(Z_DIM, H_DIM)
        self.fc2 = nn.Linear(H_DIM, X_DIM)

    def forward(self, z):
        return self.fc2(F.softplus(self.fc1(z)))


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Encoder(), Decoder()


torch.manual_seed(0)
PROTOTYPE = VAE()
DATA = (torch.rand(B, X_DIM, generator=torch.Generator().manual_seed(1)) < 0.2).float()
ZEROS, ONES = torch.zeros(B, Z_DIM), torch.ones(B, Z_DIM)


def programs(lib, d, vae, tag):
    """(model, guide) written with ``lib`` (svigraph or pyro)."""

    def model(x):
        lib.module(f"{tag}decoder", vae.decoder)
        with lib.plate("data", B):
            z = lib.sample("z", d.Normal(ZEROS, ONES).to_event(1))
            lib.sample("x", d.Bernoulli(logits=vae.decoder(z)).to_event(1), obs=x)

    def guide(x):
        lib.module(f"{tag}encoder", vae.encoder)
        with lib.plate("data", B):
            loc, scale = vae.encoder(x)
            lib.sample("z", d.Normal(loc, scale).to_event(1))

    return model, guide


def svigraph_step(tag, jit=False):
    model, guide = programs(sg, dist, copy.deepcopy(PROTOTYPE), tag)
    loss = jit_loss("JitTrace_ELBO") if jit else sg.infer.Trace_ELBO()
    if loss is None:
        return None
    svi = sg.infer.SVI(model, guide, sg.optim.Adam({"lr": LR}), loss)
    return lambda: svi.step(DATA)


def pyro_step(tag):
    if pyro is None:
        return None
    model, guide = programs(pyro, pdist, copy.deepcopy(PROTOTYPE), tag)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": LR}), pyro.infer.Trace_ELBO())
    return lambda: svi.step(DATA)


def torch_step():
    vae = copy.deepcopy(PROTOTYPE)
    opt = torch.optim.Adam(vae.parameters(), lr=LR)
    prior = td.Independent(td.Normal(ZEROS, ONES), 1)
    x = DATA

    def step():
        loc, scale = vae.encoder(x)
        q = td.Independent(td.Normal(loc, scale), 1)
        z = q.rsample()
        lpx = td.Independent(td.Bernoulli(logits=vae.decoder(z)), 1).log_prob(x)
        loss = -(prior.log_prob(z) + lpx - q.log_prob(z)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step


_built = [0]


def contenders():
    _built[0] += 1
    tag = f"vae{_built[0]}_"
    out = {SVIGRAPH: svigraph_step(tag), SVIGRAPH_JIT: svigraph_step(tag + "jit_", jit=True),
           TORCH: torch_step()}
    step = pyro_step(tag)
    if step is not None:
        out[pyro_row_name()] = step
    return out


def main(quick=False, out=sys.stdout):
    """Run the VAE benchmark; print and return its markdown section."""
    torch.set_num_threads(1)
    warmup, repeats, inner = (3, 5, 5) if quick else (20, 15, 10)
    print(f"# VAE benchmark ({'quick' if quick else 'full'})\n{machine_info()}\n"
          f"pyro: {pyro_version() or 'not installed (row skipped)'}\n", file=out, flush=True)
    torch.manual_seed(0)
    return "## VAE\n\n" + run_workload(TITLE, contenders(), warmup=warmup, repeats=repeats,
                                       inner=inner, out=out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    main(parser.parse_args().quick)
