"""Brute-force references, written plainly: exact ELBOs by summing over every configuration
of a guide's discrete sites, including guides whose site set depends on sampled values."""

from __future__ import annotations

import itertools

import torch

import svigraph as sg
from svigraph import handlers


class _Branch(Exception):
    def __init__(self, name, support):
        self.name, self.support = name, support


class _Force(sg.effects.Messenger):
    """Set each unobserved sample site from ``values``; at a new site, stop and branch."""

    def __init__(self, values):
        super().__init__(None)
        self.values = values

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        if msg["name"] not in self.values:
            fn = msg["fn"]
            raise _Branch(msg["name"], fn.enumerate_support(expand=True))
        msg["value"] = self.values[msg["name"]]


def guide_configurations(guide, *args):
    """Every assignment of the guide's sample sites (all must be discrete), found by DFS."""
    out, stack = [], [{}]
    while stack:
        values = stack.pop()
        try:
            with _Force(values):
                guide(*args)
            out.append(values)
        except _Branch as branch:
            flat = branch.support.reshape(branch.support.shape[0], -1)
            shape = branch.support.shape[1:]
            for combo in itertools.product(*[flat[:, j].unique() for j in range(flat.shape[1])]):
                stack.append({**values, branch.name: torch.stack(combo).reshape(shape)})
    return out


def exact_elbo(model, guide, *args):
    """Σ over guide configurations of q(config) (log p - log q): differentiable in params."""
    total = 0.0
    for values in guide_configurations(guide, *args):
        guide_tr = handlers.trace(handlers.condition(guide, data=values)).get_trace(*args)
        model_tr = handlers.trace(handlers.replay(model, trace=guide_tr)).get_trace(*args)
        log_q = guide_tr.log_prob_sum()
        log_p = model_tr.log_prob_sum()
        total = total + log_q.exp() * (log_p - log_q)
    return total


def exact_grads(model, guide, params, *args):
    """(ELBO, d ELBO / d leaf for each named param) computed exactly."""
    elbo = exact_elbo(model, guide, *args)
    leaves = [sg.param(name).unconstrained() for name in params]
    grads = torch.autograd.grad(elbo, leaves)
    return elbo.detach(), {n: g for n, g in zip(params, grads)}


def mean_grads(loss_fn, model, guide, params, num_samples, *args):
    """Mean and standard error of ``-d loss / d leaf`` over single-sample estimates."""
    guide(*args)  # create the params
    samples = {n: [] for n in params}
    values = []
    for _ in range(num_samples):
        leaves = [sg.param(name).unconstrained() for name in params]
        loss = loss_fn(model, guide, *args)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        values.append(-float(loss.detach()))
        for n, g in zip(params, grads):
            samples[n].append(-(g if g is not None else torch.zeros_like(leaves[0])))
    out = {}
    for n, gs in samples.items():
        g = torch.stack(gs)
        out[n] = (g.mean(0), g.std(0) / num_samples ** 0.5)
    v = torch.tensor(values)
    return out, (v.mean(), v.std() / num_samples ** 0.5)
