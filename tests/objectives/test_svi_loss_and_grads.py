"""SVI(loss_and_grads=...): the user's callable runs the backward; SVI steps the optimizer."""

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.errors import NonFiniteLossError
from svigraph.infer import SVI, Trace_ELBO


def model(x):
    loc = sg.sample("loc", dist.Normal(0.0, 1.0))
    sg.sample("x", dist.Normal(loc, 1.0), obs=x)


def guide(x):
    m = sg.param("m", torch.tensor(0.0))
    sg.sample("loc", dist.Delta(m))


def test_loss_and_grads_drives_the_step():
    """A MAP objective by hand: -log p(x, m); its gradient is m - (x - m) = 2m - x. One SGD
    step of size 0.1 from m=0 with x=1 moves m to 0.1."""
    sg.clear_param_store()
    calls = []

    def map_loss_and_grads(model_, guide_, x):
        calls.append(x)
        loss = Trace_ELBO().differentiable_loss(model_, guide_, x)
        loss.backward()
        return loss.item()

    svi = SVI(model, guide, sg.optim.SGD({"lr": 0.1}), loss=Trace_ELBO(),
              loss_and_grads=map_loss_and_grads, num_samples=10, num_steps=5)
    value = svi.step(torch.tensor(1.0))
    assert len(calls) == 1 and isinstance(value, float)
    assert sg.param("m").item() == pytest.approx(0.1, abs=1e-6)
    assert sg.param("m").unconstrained().grad is None  # cleared after the step


def test_loss_and_grads_must_be_callable_and_finite():
    with pytest.raises(TypeError, match="loss_and_grads"):
        SVI(model, guide, sg.optim.SGD({"lr": 0.1}), Trace_ELBO(), loss_and_grads=3)
    sg.clear_param_store()
    svi = SVI(model, guide, sg.optim.SGD({"lr": 0.1}), Trace_ELBO(),
              loss_and_grads=lambda m, g, x: float("nan"))
    with pytest.raises(NonFiniteLossError):
        svi.step(torch.tensor(1.0))
