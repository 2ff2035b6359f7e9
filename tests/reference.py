"""Brute-force references, written plainly: exact ELBOs by summing over every configuration
of a guide's discrete sites, including guides whose site set depends on sampled values."""

from __future__ import annotations

import itertools

import torch

import svigraph as sg
from svigraph import handlers


class _Branch(Exception):
    def __init__(self, name, support, event_dim):
        self.name, self.support, self.event_dim = name, support, event_dim


def _assignments(branch):
    """Every value of a site: one support element (a whole event) per batch element."""
    support = branch.support  # (K, *batch, *event)
    k = support.shape[0]
    batch = support.shape[1:support.dim() - branch.event_dim]
    flat = support.reshape(k, -1, *support.shape[support.dim() - branch.event_dim:])
    for choice in itertools.product(range(k), repeat=flat.shape[1]):
        picked = torch.stack([flat[c, j] for j, c in enumerate(choice)])
        yield picked.reshape(tuple(batch) + tuple(picked.shape[1:]))


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
            raise _Branch(msg["name"], fn.enumerate_support(expand=True), len(fn.event_shape))
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
            stack += [{**values, branch.name: v} for v in _assignments(branch)]
    return out


def exact_elbo(model, guide, *args):
    """Σ over guide configurations of q(config) (log p - log q): differentiable in params.

    q(config) is the probability of drawing the configuration (no scale, no mask); the
    integrand log p - log q carries the sites' scales and masks, as the ELBO does.
    """
    total = 0.0
    for values in guide_configurations(guide, *args):
        guide_tr = handlers.trace(handlers.condition(guide, data=values)).get_trace(*args)
        model_tr = handlers.trace(handlers.replay(model, trace=guide_tr)).get_trace(*args)
        draw = sum(site["fn"].log_prob(site["value"]).sum() for site in guide_tr.sample_sites())
        total = total + draw.exp() * (model_tr.log_prob_sum() - guide_tr.log_prob_sum())
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


def brute_log_marginal(model, *args):
    """log of the sum over every assignment of the model's latent discrete sites of
    p(assignment, data): the exact evidence of a model with no other latents."""
    logs = []
    for values in guide_configurations(model, *args):
        tr = handlers.trace(handlers.condition(model, data=values)).get_trace(*args)
        logs.append(tr.log_prob_sum())
    return torch.logsumexp(torch.stack(logs), 0)
