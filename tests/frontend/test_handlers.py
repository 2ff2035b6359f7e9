"""Primitives and effect handlers, each as a wrapper, a decorator and a context manager."""

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph import handlers, poutine
from svigraph.constraints import positive
from svigraph.errors import PlateError


def model(data=None):
    loc = sg.param("loc", torch.tensor(0.5))
    z = sg.sample("z", dist.Normal(loc, 1.0))
    with sg.plate("data", 3):
        sg.sample("x", dist.Normal(z, 1.0), obs=data)
    return z


data = torch.tensor([0.0, 1.0, 2.0])


def test_poutine_is_handlers():
    assert poutine.trace is handlers.trace and poutine.replay is handlers.replay


def test_trace_records_sites():
    tr = handlers.trace(model).get_trace(data)
    assert list(tr.keys()) == ["loc", "z", "x"]
    assert tr.nodes is tr
    site = tr["x"]
    for key in ("name", "type", "fn", "value", "is_observed", "infer", "scale", "mask",
                "cond_indep_stack"):
        assert key in site
    assert site["is_observed"] and tr["z"]["type"] == "sample" and tr["loc"]["type"] == "param"
    assert site["cond_indep_stack"][0].name == "data" and site["fn"].batch_shape == (3,)


def test_trace_param_only_and_log_prob():
    with handlers.trace(param_only=True) as capture:
        model(data)
    assert list(capture.trace.keys()) == ["loc"]
    tr = handlers.trace(model).get_trace(data)
    tr.compute_log_prob()
    z = tr["z"]["value"]
    expected = dist.Normal(0.5, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(data).sum()
    assert torch.allclose(tr.log_prob_sum(), expected)
    assert tr["x"]["log_prob"].shape == (3,)


def test_replay_and_condition():
    tr = handlers.trace(model).get_trace(data)
    z = handlers.replay(model, trace=tr)(data)
    assert torch.equal(z, tr["z"]["value"])
    conditioned = handlers.condition(model, data={"z": torch.tensor(3.0)})
    tr2 = handlers.trace(conditioned).get_trace(data)
    assert tr2["z"]["is_observed"] and float(tr2["z"]["value"]) == 3.0


def test_scale_and_mask_in_log_prob_sum():
    z = torch.tensor(0.2)
    cond = handlers.condition(model, data={"z": z})
    base = handlers.trace(cond).get_trace(data).log_prob_sum()
    scaled = handlers.trace(handlers.scale(cond, scale=0.5)).get_trace(data).log_prob_sum()
    assert torch.allclose(scaled, 0.5 * base)
    m = torch.tensor([True, False, True])

    def masked(data):
        z = sg.sample("z", dist.Normal(0.5, 1.0))
        with sg.plate("data", 3), handlers.mask(mask=m):
            sg.sample("x", dist.Normal(z, 1.0), obs=data)

    tr = handlers.trace(handlers.condition(masked, data={"z": z})).get_trace(data)
    x_lp = dist.Normal(z, 1.0).log_prob(data)
    expected = dist.Normal(0.5, 1.0).log_prob(z) + x_lp[0] + x_lp[2]
    assert torch.allclose(tr.log_prob_sum(), expected)


def test_mask_zeroes_minus_infinity():
    def m():
        with handlers.mask(mask=torch.tensor([False, True])):
            sg.sample("x", dist.Bernoulli(torch.tensor([1.0, 0.5])), obs=torch.tensor([0.0, 1.0]))

    lp = handlers.trace(m).get_trace().log_prob_sum()
    assert torch.isfinite(lp) and torch.allclose(lp, torch.log(torch.tensor(0.5)))


def test_handlers_as_decorators():
    @handlers.scale(scale=2.0)
    def scaled(data):
        return model(data)

    tr = handlers.trace(scaled).get_trace(data)
    assert tr["x"]["scale"] == 2.0

    @handlers.seed(rng_seed=3)
    def draw():
        return sg.sample("u", dist.Normal(0.0, 1.0))

    assert torch.equal(draw(), draw())


def test_block_hides_and_exposes():
    with handlers.trace() as outer:
        with handlers.block(hide=["z"]):
            model(data)
    assert "z" not in outer.trace and "x" in outer.trace
    with handlers.trace() as outer:
        with handlers.block(expose=["z"]):
            model(data)
    assert list(outer.trace) == ["z"]
    with handlers.trace() as outer:
        with handlers.block():
            model(data)
    assert len(outer.trace) == 0


def test_seed_reproduces():
    a = handlers.trace(handlers.seed(model, rng_seed=7)).get_trace(data)["z"]["value"]
    b = handlers.trace(handlers.seed(model, rng_seed=7)).get_trace(data)["z"]["value"]
    assert torch.equal(a, b)


def test_handler_stack_is_clean_after_an_error():
    def broken():
        sg.sample("a", dist.Normal(0.0, 1.0))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        handlers.trace(handlers.scale(broken, scale=2.0)).get_trace()
    assert sg.effects._STACK == []


def test_param_constraint_and_unconstrained():
    a = sg.param("a", torch.tensor(2.0), constraint=positive)
    leaf = a.unconstrained()
    assert leaf.requires_grad and leaf.is_leaf
    assert torch.allclose(leaf, torch.log(torch.tensor(2.0)), atol=1e-6)
    assert dict(sg.get_param_store().named_parameters())["a"] is leaf
    assert torch.allclose(sg.param("a"), torch.tensor(2.0))


def test_param_store_save_load(tmp_path):
    sg.param("a", torch.tensor(2.0), constraint=positive)
    sg.param("b", torch.tensor([1.0, -1.0]))
    path = tmp_path / "params.pt"
    sg.get_param_store().save(path)
    sg.clear_param_store()
    sg.get_param_store().load(path)
    assert torch.allclose(sg.param("a"), torch.tensor(2.0))
    assert sg.get_param_store().get_constraint("a") is positive
    torch.save({"evil": ValueError("arbitrary object")}, tmp_path / "bad.pt")
    with pytest.raises(sg.errors.UnsafeFileError, match="refus"):
        sg.get_param_store().load(tmp_path / "bad.pt")
    svi = sg.infer.SVI(model, model, sg.optim.Adam({}), sg.infer.Trace_ELBO())
    with pytest.raises(sg.errors.UnsafeFileError, match="SVI.save"):
        svi.load(tmp_path / "bad.pt")


def test_module_registers_parameters():
    net = torch.nn.Linear(2, 1)
    sg.module("net", net)
    names = dict(sg.get_param_store().named_parameters())
    assert names["net.weight"] is net.weight and names["net.bias"] is net.bias


def test_factor_adds_to_log_density():
    def m():
        sg.factor("f", torch.tensor(-1.5))

    tr = handlers.trace(m).get_trace()
    assert float(tr.log_prob_sum()) == -1.5


class TestPlate:
    def test_broadcast_and_auto_dims(self):
        with sg.plate("outer", 2):
            with sg.plate("inner", 3) as idx:
                x = sg.sample("x", dist.Normal(0.0, 1.0))
        # the first plate entered takes the rightmost free dim
        assert x.shape == (3, 2) and torch.equal(idx, torch.arange(3))

    def test_explicit_dim_and_clash(self):
        with sg.plate("a", 4, dim=-2):
            x = sg.sample("x", dist.Normal(0.0, 1.0))
        assert x.shape == (4, 1)
        with pytest.raises(PlateError, match="dim -1"):
            with sg.plate("a", 2, dim=-1):
                with sg.plate("b", 3, dim=-1):
                    pass

    def test_size_clash_names_site_and_plate(self):
        with pytest.raises(PlateError) as info:
            with handlers.trace():
                with sg.plate("data", 3):
                    sg.sample("x", dist.Normal(torch.zeros(4), 1.0))
        err = info.value
        assert err.site == "x" and err.plate == "data" and "fix:" in str(err)

    def test_size_inferred(self):
        with handlers.trace() as tr:
            with sg.plate("data"):
                sg.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(5))
        assert tr.trace["x"]["cond_indep_stack"][0].size == 5

    def test_subsample_scale_and_indices(self):
        with handlers.trace() as tr:
            with sg.plate("data", 10, subsample_size=4) as idx:
                sg.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(4))
        assert len(idx) == 4 and len(set(idx.tolist())) == 4
        assert tr.trace["x"]["scale"] == 2.5

    def test_sequential(self):
        with handlers.trace() as tr:
            for i in sg.plate("seq", 3):
                sg.sample(f"x_{i}", dist.Normal(0.0, 1.0))
        frames = [tr.trace[f"x_{i}"]["cond_indep_stack"][0] for i in range(3)]
        assert [f.counter for f in frames] == [0, 1, 2] and all(f.dim is None for f in frames)
        assert sg.effects._STACK == []


def test_markov_checks_its_arguments():
    with pytest.raises(ValueError, match="non-negative integer"):
        sg.markov(range(3), history=-1)
    with pytest.raises(TypeError, match="markov\\(range\\(T\\)\\)"):
        iter(sg.markov()).__next__()


@pytest.mark.parametrize("make", [
    lambda: dist.Categorical(logits=torch.randn(2, 3, 4)),
    lambda: dist.Bernoulli(logits=torch.randn(3)),
    lambda: dist.Bernoulli(probs=torch.rand(3, dtype=torch.float64)),
    lambda: dist.OneHotCategorical(logits=torch.randn(3, 5)),
], ids=["Categorical", "Bernoulli", "Bernoulli-float64", "OneHotCategorical"])
@pytest.mark.parametrize("dim", [-2, -4])
def test_enumerated_support_is_the_distributions_own(make, dim):
    """The enumeration handler's support (built once per kind, size, dtype and dim) equals
    the distribution's ``enumerate_support``, laid along ``dim``."""
    from svigraph.handlers import enumerated_support
    fn = make()
    support = fn.enumerate_support(expand=False)
    expected = support.reshape((support.shape[0],) + (1,) * (-dim - 1) + tuple(fn.event_shape))
    for _ in range(2):  # built, then from the cache
        value = enumerated_support(fn, dim)
        assert value.dtype == expected.dtype and torch.equal(value, expected)


def test_enumerated_support_of_an_overriding_subclass_is_its_own():
    """A subclass with its own ``enumerate_support`` is asked every time, not cached."""
    from svigraph.handlers import enumerated_support

    class Shifted(dist.Categorical):
        offset = 0

        def enumerate_support(self, expand=True):
            return super().enumerate_support(expand) + Shifted.offset

    fn = Shifted(logits=torch.zeros(3))
    assert enumerated_support(fn, -2).flatten().tolist() == [0, 1, 2]
    Shifted.offset = 10
    assert enumerated_support(fn, -2).flatten().tolist() == [10, 11, 12]


def test_full_plate_indices_are_shared_until_written():
    """A plate that is not subsampled hands out arange(size), built once per size; a caller
    that writes into it gets a fresh one next time, and inference mode its own."""
    with sg.plate("a", 4) as first:
        pass
    with sg.plate("b", 4) as again:
        pass
    assert again is first and torch.equal(first, torch.arange(4))
    first.add_(10)
    with sg.plate("a", 4) as fresh:
        pass
    assert fresh is not first and torch.equal(fresh, torch.arange(4))
    with torch.inference_mode(), sg.plate("a", 4) as inside:
        assert inside is not fresh and torch.equal(inside, torch.arange(4))
    with torch.device("meta"), sg.plate("a", 4) as on_default_device:
        assert on_default_device.device.type == "meta"
