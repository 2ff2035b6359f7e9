"""A posterior predictive check: fit a Bayesian linear regression with SVI, then ask whether
data replicated from the fitted model look like the observed data.

For each test statistic T (the mean, the largest value and the spread of y), `Predictive`
draws replicated data sets y_rep from the posterior predictive, one per guide sample, and we
print T(y) against the distribution of T(y_rep) with the posterior predictive p-value
P(T(y_rep) >= T(y)). Values near 0 or 1 flag a feature of the data the model misses. It runs
once drawing the samples one model run at a time (parallel=False) and once in a single run
vectorized over an outer plate (parallel=True); the two agree up to Monte Carlo error.
Run: python examples/predictive_checks.py   (CI=1 in the environment makes it shorter)
"""

import os

import torch

import svigraph as sg
import svigraph.distributions as dist
from svigraph.distributions import constraints
from svigraph.infer import SVI, Predictive, Trace_ELBO

smoke_test = "CI" in os.environ
NUM_STEPS = 200 if smoke_test else 1000
NUM_SAMPLES = 200 if smoke_test else 500


def model(x, y=None):
    a = sg.sample("intercept", dist.Normal(0.0, 10.0))
    b = sg.sample("slope", dist.Normal(0.0, 10.0))
    sigma = sg.sample("sigma", dist.HalfNormal(2.0))
    with sg.plate("data", x.shape[-1]):
        # written to broadcast: a, b, sigma may carry a leading sample dim (parallel=True)
        return sg.sample("y", dist.Normal(a + b * x, sigma), obs=y)


def guide(x, y=None):
    for name in ("intercept", "slope"):
        loc = sg.param(f"{name}_loc", torch.tensor(0.0))
        scale = sg.param(f"{name}_scale", torch.tensor(0.5), constraint=constraints.positive)
        sg.sample(name, dist.Normal(loc, scale))
    s_loc = sg.param("sigma_loc", torch.tensor(0.0))
    s_scale = sg.param("sigma_scale", torch.tensor(0.3), constraint=constraints.positive)
    sg.sample("sigma", dist.LogNormal(s_loc, s_scale))


STATISTICS = {
    "mean(y)": lambda y: y.mean(-1),
    "max(y)": lambda y: y.max(-1).values,
    "sd(y)": lambda y: y.std(-1),
}


def make_data(n=40):
    x = torch.linspace(-2.0, 2.0, n)
    y = 1.0 + 2.0 * x + 0.5 * torch.randn(n)
    return x, y


def fit(x, y):
    sg.clear_param_store()
    svi = SVI(model, guide, sg.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(NUM_STEPS):
        svi.step(x, y)
    return {name: sg.param(f"{name}_loc").item() for name in ("intercept", "slope")}


def check(x, y, parallel):
    predictive = Predictive(model, guide=guide, num_samples=NUM_SAMPLES, parallel=parallel,
                            return_sites=("y",))
    y_rep = predictive(x)["y"]            # (num_samples, 40): y=None, so y is sampled
    print(f"parallel={parallel}: y_rep {tuple(y_rep.shape)}")
    for name, stat in STATISTICS.items():
        observed, replicated = float(stat(y)), stat(y_rep)
        p_value = float((replicated >= observed).double().mean())
        print(f"  {name:8} observed {observed:6.3f}   replicated {float(replicated.mean()):6.3f} "
              f"+- {float(replicated.std()):.3f}   p = {p_value:.2f}")


def main():
    sg.set_rng_seed(0)
    x, y = make_data()
    locs = fit(x, y)
    print(f"fitted intercept {locs['intercept']:.2f}, slope {locs['slope']:.2f} "
          "(data drawn with 1.00, 2.00, noise sd 0.50)")
    for parallel in (False, True):
        check(x, y, parallel)


if __name__ == "__main__":
    main()
