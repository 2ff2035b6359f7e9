"""Small models more than one test module checks against exact answers."""

from __future__ import annotations

import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.constraints import unit_interval

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
