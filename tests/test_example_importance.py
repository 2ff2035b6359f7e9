"""The importance-sampling and predictive-check examples run and print sound numbers."""

import re

from tests.test_examples import run

# one thread: tiny tensors, and a thread pool stalls when other processes hold the cores
ONE_THREAD = {"CI": "1", "OMP_NUM_THREADS": "1"}


def test_importance_coin_example():
    out = run(["examples/importance_coin.py"], **ONE_THREAD)
    estimates = re.findall(r"log evidence\s+(-?\d+\.\d+) \+- (\d+\.\d+)\s+exact (-?\d+\.\d+)", out)
    assert len(estimates) == 2, out              # prior proposal, then the guide
    for estimate, se, exact in estimates:
        assert float(exact) == -7.0694
        assert abs(float(estimate) - float(exact)) < 4 * float(se) + 1e-4, out
    assert len(re.findall(r"ESS\s+\d+ of 200", out)) == 2, out
    means = re.findall(r"posterior\s+mean (\d\.\d+) \+- (\d\.\d+)\s+exact 0\.5333", out)
    assert len(means) == 2, out
    for mean, se in means:
        assert abs(float(mean) - 16 / 30) < 4 * float(se) + 1e-4, out


def test_predictive_checks_example():
    out = run(["examples/predictive_checks.py"], **ONE_THREAD)
    assert "parallel=False: y_rep (200, 40)" in out and "parallel=True: y_rep (200, 40)" in out
    p_values = [float(p) for p in re.findall(r"p = (\d\.\d\d)", out)]
    assert len(p_values) == 6 and all(0.0 <= p <= 1.0 for p in p_values), out
    slope = float(re.search(r"slope (-?\d+\.\d+)", out).group(1))
    assert abs(slope - 2.0) < 0.3, out           # 40 points with noise sd 0.5: slope SE 0.07
