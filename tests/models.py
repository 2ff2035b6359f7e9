"""Small models more than one test module checks against exact answers."""

from __future__ import annotations

import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.constraints import simplex, unit_interval

PLATED_DATA = torch.tensor([1.0, 0.0, 1.0])


def plated_model(data):
    """A global Bernoulli z, a plate of 3 local Bernoulli w reading it, observed x."""
    z = sg.sample("z", dist.Bernoulli(0.3))
    with sg.plate("data", 3):
        w = sg.sample("w", dist.Bernoulli(0.2 + 0.6 * z))
        sg.sample("x", dist.Bernoulli(0.15 + 0.7 * w), obs=data)


def plated_guide(data):
    """Score-function guide for ``plated_model`` (params qz, qw)."""
    qz = sg.param("qz", torch.tensor(0.6), constraint=unit_interval)
    qw = sg.param("qw", torch.tensor([0.3, 0.5, 0.7]), constraint=unit_interval)
    z = sg.sample("z", dist.Bernoulli(qz))
    with sg.plate("data", 3):
        sg.sample("w", dist.Bernoulli(qw * (0.5 + 0.5 * z)))


def hmm_model(data):
    """A two-state HMM over ``data`` of shape (T, sequences), every state enumerated."""
    trans = sg.param("trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]]), constraint=simplex)
    locs = sg.param("locs", torch.tensor([-1.0, 1.0]))
    with sg.plate("seqs", data.shape[1], dim=-1):
        z = 0
        for t in sg.markov(range(data.shape[0])):
            z = sg.sample(f"z{t}", dist.Categorical(trans[z]), infer={"enumerate": "parallel"})
            sg.sample(f"x{t}", dist.Normal(locs[z], 1.0), obs=data[t])


def no_guide(data):
    pass
