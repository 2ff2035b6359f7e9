"""TraceGraph_ELBO: cost sets from the graph, variance against Trace_ELBO, particles,
baselines, per-step site scales, recompilation, and resuming from a checkpoint."""

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.constraints import unit_interval
from svigraph.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from tests.objectives.test_unbiased import data, plated_model
from tests.objectives.test_unbiased import plated_guide as plain_guide
from tests.reference import exact_grads, mean_grads


def two_branch_model():
    a = sg.sample("a", dist.Bernoulli(0.3))
    b = sg.sample("b", dist.Bernoulli(0.6))
    sg.sample("xa", dist.Normal(3.0 * a, 1.0), obs=torch.tensor(2.5))
    sg.sample("xb", dist.Normal(5.0 * b, 1.0), obs=torch.tensor(0.5))


def two_branch_guide():
    pa = sg.param("pa", torch.tensor(0.5), constraint=unit_interval)
    pb = sg.param("pb", torch.tensor(0.5), constraint=unit_interval)
    sg.sample("a", dist.Bernoulli(pa))
    sg.sample("b", dist.Bernoulli(pb))


def test_independent_terms_are_absent_from_cost_sets():
    """b's branch (its log p, log q and observation) is not downstream of a."""
    plan = sg.compile(two_branch_model, two_branch_guide, loss=TraceGraph_ELBO())
    assert set(plan.sites["a"].cost) == {("guide", "a"), ("model", "a"), ("model", "xa")}
    assert set(plan.sites["b"].cost) == {("guide", "b"), ("model", "b"), ("model", "xb")}
    full = sg.compile(two_branch_model, two_branch_guide, loss=Trace_ELBO())
    assert len(full.sites["a"].cost) == 6


def test_rao_blackwellization_cuts_variance_and_stays_unbiased():
    """Per-parameter gradient variance under TraceGraph_ELBO is far below Trace_ELBO's on the
    same model; both means match the exact gradient (4 standard errors, N=3000)."""
    _, exact = exact_grads(two_branch_model, two_branch_guide, ["pa", "pb"])
    spread = {}
    for elbo in (Trace_ELBO(), TraceGraph_ELBO()):
        est, _ = mean_grads(elbo.differentiable_loss, two_branch_model, two_branch_guide,
                            ["pa", "pb"], 3000)
        for name in ("pa", "pb"):
            mean, se = est[name]
            assert abs(float(mean - exact[name])) <= 4 * float(se)
        spread[type(elbo).__name__] = {n: float(est[n][1]) for n in ("pa", "pb")}
    for name in ("pa", "pb"):
        # standard errors over equal N: a variance ratio below (0.8)^2
        assert spread["TraceGraph_ELBO"][name] < 0.8 * spread["Trace_ELBO"][name], spread


def loo_guide(data):
    qz = sg.param("qz", torch.tensor(0.6), constraint=unit_interval)
    qw = sg.param("qw", torch.tensor([0.3, 0.5, 0.7]), constraint=unit_interval)
    z = sg.sample("z", dist.Bernoulli(qz), infer={"baseline": {"use_loo_baseline": True}})
    with sg.plate("data", 3):
        sg.sample("w", dist.Bernoulli(qw * (0.5 + 0.5 * z)),
                  infer={"baseline": {"use_loo_baseline": True}})


@pytest.mark.parametrize("guide", [plain_guide, loo_guide], ids=["plain", "loo"])
def test_vectorized_particles_unbiased(guide):
    """Particles as an extra batch dim, one pass; with the leave-one-out baseline too."""
    elbo = TraceGraph_ELBO(num_particles=6, vectorize_particles=True, max_plate_nesting=1)
    _, exact = exact_grads(plated_model, plain_guide, ["qz", "qw"], data)
    est, _ = mean_grads(elbo.differentiable_loss, plated_model, guide, ["qz", "qw"], 600, data)
    for name in ("qz", "qw"):
        mean, se = est[name]
        assert torch.all((mean - exact[name]).abs() <= 4 * se + 1e-6), (name, mean, exact[name])


def test_loo_baseline_lowers_variance():
    spread = {}
    for name, guide in (("plain_guide", plain_guide), ("loo_guide", loo_guide)):
        elbo = TraceGraph_ELBO(num_particles=6, vectorize_particles=True, max_plate_nesting=1)
        est, _ = mean_grads(elbo.differentiable_loss, plated_model, guide, ["qz"], 600, data)
        spread[name] = float(est["qz"][1])
    assert spread["loo_guide"] < 0.7 * spread["plain_guide"], spread


def test_loo_baseline_needs_vectorized_particles():
    with pytest.raises(sg.errors.BaselineError, match="vectorized particles"):
        TraceGraph_ELBO().differentiable_loss(plated_model, loo_guide, data)


def test_vectorized_equals_sequential_for_pathwise_value():
    """Same mean loss for a deterministic guide, vectorized or not."""
    def model():
        sg.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))

    def guide():
        pass

    a = TraceGraph_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0)
    assert abs(a.loss(model, guide) - Trace_ELBO().loss(model, guide)) < 1e-6


def test_site_scales_scale_both_terms_without_recompiling():
    """KL annealing per step: z's model and guide terms times 0.2; one plan."""
    elbo = TraceGraph_ELBO()
    sg.set_rng_seed(3)
    plain = elbo.differentiable_loss(plated_model, plain_guide, data)
    sg.set_rng_seed(3)
    scaled = elbo.differentiable_loss(plated_model, plain_guide, data, site_scales={"z": 0.2})
    sg.set_rng_seed(3)
    guide_tr = sg.handlers.trace(plain_guide).get_trace(data)
    model_tr = sg.handlers.trace(sg.handlers.replay(plated_model, trace=guide_tr)).get_trace(data)
    z_term = (model_tr["z"]["fn"].log_prob(model_tr["z"]["value"])
              - guide_tr["z"]["fn"].log_prob(guide_tr["z"]["value"]))
    assert torch.allclose(scaled - plain, 0.8 * z_term.detach(), atol=1e-5)
    assert len(elbo._cache(plated_model, plain_guide)) == 1
    plan = sg.compile(plated_model, plain_guide, data, loss=elbo)
    assert plan.differentiable_loss(data, site_scales={"z": 0.5}).requires_grad


def test_decaying_baseline_state_is_the_running_average():
    elbo = TraceGraph_ELBO()

    def guide(data):
        qz = sg.param("qz", torch.tensor(0.6), constraint=unit_interval)
        z = sg.sample("z", dist.Bernoulli(qz),
                      infer={"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.5}})
        with sg.plate("data", 3):
            sg.sample("w", dist.Bernoulli(0.5 + 0.0 * z))

    for _ in range(3):
        elbo.differentiable_loss(plated_model, guide, data)
    avg = elbo.baselines.averages["z"]
    assert avg.shape == () and torch.isfinite(avg) and float(avg) != 0.0


def test_checkpoint_resume_is_bit_exact(tmp_path):
    """Params, Adam state, baseline state and RNG: a resumed run repeats the original."""
    guide = _baseline_guide({"use_decaying_avg_baseline": True})

    def make():
        return SVI(plated_model, guide, sg.optim.Adam({"lr": 0.05}), TraceGraph_ELBO())

    svi = make()
    for _ in range(10):
        svi.step(data)
    svi.save(tmp_path / "ckpt.pt")
    first = [svi.step(data) for _ in range(10)]
    params = {k: v.detach().clone() for k, v in sg.get_param_store().items()}
    sg.clear_param_store()
    resumed = make()
    resumed.load(tmp_path / "ckpt.pt")
    second = [resumed.step(data) for _ in range(10)]
    assert first == second
    assert all(torch.equal(params[k], v.detach()) for k, v in sg.get_param_store().items())


def test_new_structure_recompiles_and_explains():
    elbo = TraceGraph_ELBO()
    elbo.differentiable_loss(plated_model, plain_guide, data)
    cache = elbo._cache(plated_model, plain_guide)
    key = next(iter(cache._plans))
    bigger = torch.tensor([1.0, 0.0, 1.0, 1.0])

    def model4(data):
        z = sg.sample("z", dist.Bernoulli(0.3))
        with sg.plate("data", len(data)):
            w = sg.sample("w", dist.Bernoulli(0.2 + 0.6 * z))
            sg.sample("x", dist.Bernoulli(0.15 + 0.7 * w), obs=data)

    def guide4(data):
        z = sg.sample("z", dist.Bernoulli(0.5))
        with sg.plate("data", len(data)):
            sg.sample("w", dist.Bernoulli(0.5 + 0.0 * z))

    elbo.differentiable_loss(model4, guide4, data)
    elbo.differentiable_loss(model4, guide4, bigger)
    cache4 = elbo._cache(model4, guide4)
    assert len(cache4) == 2
    keys = list(cache4._plans)
    assert "shape (3,) -> (4,)" in cache4.explain_miss(keys[1]) or \
        "shape" in __import__("compiler.cache", fromlist=["x"]).describe_difference(keys[0], keys[1])
    assert key in cache


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


_net = _Net()


def _baseline_guide(options):
    def guide(data):
        qz = sg.param("qz", torch.tensor(0.6), constraint=unit_interval)
        qw = sg.param("qw", torch.tensor([0.3, 0.5, 0.7]), constraint=unit_interval)
        if "nn_baseline" in options:
            sg.module("net", _net)
        z = sg.sample("z", dist.Bernoulli(qz), infer={"baseline": options})
        with sg.plate("data", 3):
            sg.sample("w", dist.Bernoulli(qw * (0.5 + 0.5 * z)))
    return guide


@pytest.mark.parametrize("options", [
    {"use_decaying_avg_baseline": True, "baseline_beta": 0.9},
    {"baseline_value": torch.tensor(-2.0)},
    {"nn_baseline": _net, "nn_baseline_input": torch.ones(1)},
], ids=["decaying_avg", "value", "nn"])
def test_baselines_keep_the_estimate_unbiased(options):
    """Each baseline kind (state carried across the N single-sample estimates) leaves the
    mean gradient equal to the exact one (4 standard errors, N=2500)."""
    _, exact = exact_grads(plated_model, plain_guide, ["qz", "qw"], data)
    est, _ = mean_grads(TraceGraph_ELBO().differentiable_loss, plated_model,
                        _baseline_guide(options), ["qz", "qw"], 2500, data)
    for name in ("qz", "qw"):
        mean, se = est[name]
        assert torch.all((mean - exact[name]).abs() <= 4 * se + 1e-6), (name, mean, exact[name])


def test_nn_baseline_learns_the_cost():
    """The neural baseline is trained by its own squared error in the same step."""
    net = _Net()
    guide_options = {"nn_baseline": net, "nn_baseline_input": torch.ones(1)}

    def guide(data):
        sg.module("bnet", net)
        _baseline_guide(guide_options)(data)

    svi = SVI(plated_model, guide, sg.optim.Adam({"lr": 0.05}), TraceGraph_ELBO())
    before = net(torch.ones(1)).item()
    costs = []
    for _ in range(300):
        costs.append(-svi.step(data))
    after = net(torch.ones(1)).item()
    target = sum(costs[-100:]) / 100  # roughly the mean cost of z (whole ELBO here)
    assert abs(after - target) < abs(before - target)


def test_render_without_dot_says_how_to_install(monkeypatch, tmp_path):
    import shutil
    plan = sg.compile(plated_model, plain_guide, data)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        plan.render(tmp_path / "plan.svg")


def test_single_sample_gradient_is_the_hand_derived_surrogate():
    """Replaying one draw: d(-loss)/d leaf = d log q(z)/d leaf * cost(z), where cost(z) holds
    log p(z) - log q(z) + log p(x | z); the direct gradient of -log q(z) is not added (its
    expectation is zero)."""
    def model():
        z = sg.sample("z", dist.Bernoulli(0.3))
        sg.sample("x", dist.Normal(2.0 * z, 1.0), obs=torch.tensor(1.5))

    def guide():
        q = sg.param("q", torch.tensor(0.6), constraint=unit_interval)
        sg.sample("z", dist.Bernoulli(q))

    for elbo in (Trace_ELBO(), TraceGraph_ELBO()):
        guide()
        leaf = sg.param("q").unconstrained()
        sg.set_rng_seed(11)
        loss = elbo.differentiable_loss(model, guide)
        (grad,) = torch.autograd.grad(-loss, [leaf])
        sg.set_rng_seed(11)
        z = sg.handlers.trace(guide).get_trace()["z"]["value"]
        q = sg.param("q")
        log_q = dist.Bernoulli(q).log_prob(z)
        cost = (dist.Bernoulli(torch.tensor(0.3)).log_prob(z) - log_q
                + dist.Normal(2.0 * z, 1.0).log_prob(torch.tensor(1.5))).detach()
        (expected,) = torch.autograd.grad(log_q * cost, [leaf])
        assert torch.allclose(grad, expected, atol=1e-6), (type(elbo).__name__, grad, expected)
        assert torch.allclose(-loss.detach(), cost)
