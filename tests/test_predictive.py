"""Predictive and TracePredictive: shapes (as Pyro's), statistics against closed forms, errors.

The coin model with a Beta(a, b) guide has a Beta-binomial posterior predictive for the
number of heads in n new flips: mean n a / (a + b), variance
n a b (a + b + n) / ((a + b)^2 (a + b + 1)). Statistical checks use a fixed seed and a
4-standard-error tolerance.
"""

import math

import pytest
import torch

import svigraph as sg
from svigraph import constraints
from svigraph import distributions as dist
from svigraph.errors import SvigraphError
from svigraph.infer import EmpiricalMarginal, Importance, Predictive, TracePredictive
from svigraph.trace_struct import Trace

A, B, N_FLIPS = 16.0, 14.0, 10
HEADS_MEAN = N_FLIPS * A / (A + B)
HEADS_VAR = N_FLIPS * A * B * (A + B + N_FLIPS) / ((A + B) ** 2 * (A + B + 1))


def coin_model(flips=None, n=N_FLIPS):
    f = sg.sample("fairness", dist.Beta(10.0, 10.0))
    with sg.plate("flips", n):
        y = sg.sample("obs", dist.Bernoulli(f), obs=flips)
    return y.sum(-1)


def coin_guide(flips=None, n=N_FLIPS):
    a = sg.param("a", torch.tensor(A), constraint=constraints.positive)
    b = sg.param("b", torch.tensor(B), constraint=constraints.positive)
    sg.sample("fairness", dist.Beta(a, b))


def shapes(samples):
    return {name: tuple(value.shape) for name, value in samples.items()}


@pytest.mark.parametrize("parallel", [False, True])
def test_shapes_follow_pyro(parallel):
    """The shapes Pyro 1.9.2's Predictive returns for the same calls (checked by hand)."""
    guided = Predictive(coin_model, guide=coin_guide, num_samples=7, parallel=parallel)
    assert shapes(guided()) == {"fairness": (7, 1), "obs": (7, 10)}
    picked = Predictive(coin_model, guide=coin_guide, num_samples=7, parallel=parallel,
                        return_sites=("obs", "_RETURN"))
    assert shapes(picked()) == {"obs": (7, 10), "_RETURN": (7,)}
    given = {"fairness": torch.rand(5)}
    assert shapes(Predictive(coin_model, given, parallel=parallel)()) == {"obs": (5, 10)}
    everything = Predictive(coin_model, given, parallel=parallel, return_sites=None)
    assert shapes(everything(torch.ones(10))) == {"fairness": (5, 1), "obs": (5, 10)}
    prior = Predictive(coin_model, num_samples=4, parallel=parallel)
    assert shapes(prior()) == {"fairness": (4, 1), "obs": (4, 10)}


def nested_model(x, y=None):
    w = sg.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    s = sg.sample("s", dist.HalfNormal(1.0))
    with sg.plate("data", x.shape[0]):
        with sg.plate("k", 3):
            z = sg.sample("z", dist.Normal(0.0, 1.0))
        # written to broadcast: w has batch dims left of its event under parallel=True
        mean = (w * x).sum(-1) + z.sum(-2, keepdim=True)
        return sg.sample("y", dist.Normal(mean, s), obs=y)


@pytest.mark.parametrize("parallel", [False, True])
def test_shapes_with_nested_plates_and_events(parallel):
    out = Predictive(nested_model, num_samples=4, parallel=parallel,
                     return_sites=("w", "s", "z", "y", "_RETURN"))(torch.randn(6, 2))
    assert shapes(out) == {"w": (4, 1, 1, 2), "s": (4, 1, 1), "z": (4, 3, 6), "y": (4, 1, 6),
                           "_RETURN": (4, 1, 6)}


@pytest.mark.parametrize("parallel", [False, True])
def test_posterior_samples_are_conditioned_on(parallel):
    """Each replicate uses its own posterior draw: obs ~ Bernoulli(f_i) row by row."""
    f = torch.tensor([0.1, 0.9]).repeat(1000)
    out = Predictive(coin_model, {"fairness": f}, parallel=parallel, return_sites=None)()
    assert torch.equal(out["fairness"].reshape(-1), f)
    heads = out["obs"].mean(-1)
    for value in (0.1, 0.9):
        rows = heads[f == value]
        se = math.sqrt(value * (1 - value) / rows.numel() / N_FLIPS)
        assert abs(float(rows.mean()) - value) < 4 * se


@pytest.mark.parametrize("parallel", [False, True])
def test_guide_predictive_reproduces_the_guide_and_the_beta_binomial(parallel):
    num = 2000
    out = Predictive(coin_model, guide=coin_guide, num_samples=num, parallel=parallel,
                     return_sites=("fairness", "_RETURN"))()
    f = out["fairness"].double()
    mean, var = A / (A + B), A * B / ((A + B) ** 2 * (A + B + 1))
    assert abs(float(f.mean()) - mean) < 4 * math.sqrt(var / num)
    assert abs(float(f.var()) - var) < 4 * var * math.sqrt(2 / num)
    heads = out["_RETURN"].double()
    assert abs(float(heads.mean()) - HEADS_MEAN) < 4 * math.sqrt(HEADS_VAR / num)
    # the sample variance's SE for this near-symmetric distribution: about var sqrt(2 / num)
    assert abs(float(heads.var()) - HEADS_VAR) < 4 * HEADS_VAR * math.sqrt(2 / num)


def test_parallel_and_sequential_give_the_same_statistics():
    stats = {}
    for parallel in (False, True):
        sg.set_rng_seed(1)
        out = Predictive(coin_model, guide=coin_guide, num_samples=1500, parallel=parallel,
                         return_sites=("_RETURN",))()
        stats[parallel] = out["_RETURN"].double()
    diff = float(stats[True].mean() - stats[False].mean())
    assert abs(diff) < 4 * math.sqrt(2 * HEADS_VAR / 1500)


def test_prior_predictive_without_samples():
    out = Predictive(coin_model, num_samples=2000, return_sites=("fairness",), parallel=True)()
    f = out["fairness"].double()
    assert abs(float(f.mean()) - 0.5) < 4 * math.sqrt(0.25 / 21 / 2000)


def test_observed_data_are_returned_as_given_in_every_sample():
    flips = torch.tensor([1.0] * 6 + [0.0] * 4)
    for parallel in (False, True):
        out = Predictive(coin_model, guide=coin_guide, num_samples=3, parallel=parallel)(flips)
        assert torch.equal(out["obs"], flips.expand(3, 10))


def test_second_positional_argument_may_be_a_guide():
    out = Predictive(coin_model, coin_guide, num_samples=3)()
    assert shapes(out) == {"fairness": (3, 1), "obs": (3, 10)}


def test_vectorized_trace_is_one_trace():
    tr = Predictive(coin_model, guide=coin_guide, num_samples=5).get_vectorized_trace()
    assert isinstance(tr, Trace)
    assert tr["obs"]["value"].shape == (5, 10) and tr["_RETURN"]["value"].shape == (5,)


def test_errors_name_the_site_and_the_fix():
    with pytest.raises(SvigraphError, match="different numbers of samples") as err:
        Predictive(coin_model, {"fairness": torch.rand(5), "other": torch.rand(4, 2)})
    assert "other: 4 samples" in str(err.value) and "fix:" in str(err.value)
    with pytest.raises(SvigraphError, match="num_samples=3 but posterior_samples hold 5") as err:
        Predictive(coin_model, {"fairness": torch.rand(5)}, num_samples=3)
    assert err.value.site == "fairness"
    with pytest.raises(SvigraphError, match="needs num_samples"):
        Predictive(coin_model)
    with pytest.raises(SvigraphError, match="not both"):
        Predictive(coin_model, {"fairness": torch.rand(5)}, guide=coin_guide)
    with pytest.raises(SvigraphError, match="leading sample dim") as err:
        Predictive(coin_model, {"fairness": torch.tensor(0.5)})
    assert err.value.site == "fairness"
    with pytest.raises(SvigraphError, match="did you mean 'fairness'") as err:
        Predictive(coin_model, {"fairnes": torch.rand(5)})()
    assert err.value.site == "fairnes"
    with pytest.raises(SvigraphError, match="return_sites names 'ob'.*did you mean 'obs'"):
        Predictive(coin_model, num_samples=2, return_sites=("ob",))()


def test_parallel_on_a_model_that_does_not_broadcast_says_so():
    def flat_model(x):
        w = sg.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with sg.plate("data", x.shape[0]):
            sg.sample("y", dist.Normal(x @ w, 1.0))   # x @ w does not broadcast over samples

    x = torch.randn(6, 2)
    assert shapes(Predictive(flat_model, num_samples=3)(x)) == {"w": (3, 1, 2), "y": (3, 6)}
    with pytest.raises(SvigraphError, match="parallel=True") as err:
        Predictive(flat_model, num_samples=3, parallel=True)(x)
    assert "parallel=False" in str(err.value) and err.value.plate == "_num_predictive_samples"


def test_trace_predictive_from_importance_matches_the_beta_binomial():
    flips = torch.tensor([1.0] * 6 + [0.0] * 4)
    # the exact posterior as proposal: equal weights, so resampling is exact
    posterior = Importance(coin_model, coin_guide, num_samples=500).run(flips)
    predictive = TracePredictive(coin_model, posterior, num_samples=1500).run(None)
    assert len(predictive.exec_traces) == 1500
    assert all(isinstance(tr, Trace) for tr in predictive.exec_traces)
    heads = EmpiricalMarginal(predictive)        # "_RETURN": heads in 10 new flips
    assert heads.event_shape == ()
    assert abs(float(heads.mean) - HEADS_MEAN) < 4 * math.sqrt(HEADS_VAR / 1500)
    obs = EmpiricalMarginal(predictive, "obs")
    assert obs.event_shape == (10,)
    drawn = {float(t["fairness"]["value"]) for t in posterior.exec_traces}
    assert all(float(t["fairness"]["value"]) in drawn for t in predictive.exec_traces)
    assert not any(t["obs"]["is_observed"] for t in predictive.exec_traces)


def test_trace_predictive_on_more_data_points_resamples_local_latents():
    def local_model(n, y=None):
        m = sg.sample("m", dist.Normal(0.0, 1.0))
        with sg.plate("data", n):
            z = sg.sample("z", dist.Normal(m, 1.0))
            sg.sample("y", dist.Normal(z, 0.1), obs=y)

    posterior = Importance(local_model, num_samples=20).run(4, torch.zeros(4))
    predictive = TracePredictive(local_model, posterior, num_samples=30).run(7)
    for tr in predictive.exec_traces:
        assert tr["z"]["value"].shape == (7,) and tr["y"]["value"].shape == (7,)
        source = [t for t in posterior.exec_traces
                  if torch.equal(t["m"]["value"], tr["m"]["value"])][0]
        assert set(tr["z"]["value"].tolist()) <= set(source["z"]["value"].tolist())
