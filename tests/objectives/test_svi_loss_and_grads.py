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


def test_rejected_step_leaves_no_gradient_behind():
    """loss_and_grads ran backward before SVI saw the non-finite loss: the gradient is
    dropped, so the next step moves the param by its own gradient only."""
    calls = []

    def loss_and_grads(model_, guide_):
        w = sg.param("w", torch.tensor(1.0))
        calls.append(1)
        loss = (w - 3.0) ** 2 * (100.0 if len(calls) == 1 else 1.0)
        loss.backward()
        return float("nan") if len(calls) == 1 else loss.item()

    sg.clear_param_store()
    svi = SVI(lambda: None, lambda: None, sg.optim.SGD({"lr": 0.1}),
              loss=lambda m, g: torch.tensor(0.0), loss_and_grads=loss_and_grads)
    with pytest.raises(NonFiniteLossError):
        svi.step()
    assert sg.param("w").unconstrained().grad is None
    svi.step()
    assert sg.param("w").item() == pytest.approx(1.4, abs=1e-6)  # 1 - 0.1 * 2 * (1 - 3)


def test_an_objectives_own_loss_and_grads_with_a_jit_objective():
    """JitTrace_ELBO.loss_and_grads as SVI's loss_and_grads: its captured steps run no param
    statement, so SVI takes the params from the objective; same trajectory as plain SVI."""
    from svigraph.constraints import positive
    from svigraph.infer import JitTrace_ELBO

    data = torch.tensor([0.3, -0.2, 1.1, 0.8])

    def model(d):
        z = sg.sample("z", dist.Normal(0.0, 1.0))
        with sg.plate("n", len(d)):
            sg.sample("x", dist.Normal(z, 1.0), obs=d)

    def guide(d):
        sg.sample("z", dist.Normal(sg.param("loc", torch.tensor(0.3)),
                                   sg.param("sc", torch.tensor(0.7), constraint=positive)))

    trajectories = []
    for use_arg in (False, True):
        sg.clear_param_store()
        sg.set_rng_seed(0)
        elbo = JitTrace_ELBO(jit_options={"backend": "fx"})
        extra = {"loss_and_grads": elbo.loss_and_grads} if use_arg else {}
        svi = SVI(model, guide, sg.optim.SGD({"lr": 0.01}), elbo, **extra)
        trajectories.append([(svi.step(data), sg.param("loc").item()) for _ in range(5)])
    for (l1, p1), (l2, p2) in zip(*trajectories):
        assert l2 == pytest.approx(l1, rel=1e-6) and p2 == pytest.approx(p1, rel=1e-6)
