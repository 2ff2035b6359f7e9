"""The training examples learn what they claim to, on their quick settings."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baselines_converges_and_cuts_gradient_variance(capsys):
    result = load("baselines").main(["--quick"])
    out = capsys.readouterr().out
    assert "median steps:" in out and "gradient variance" in out
    # every seed converges within the cap with the baseline
    assert max(result["steps_with"]) < result["max_steps"], out
    assert result["with_baseline"] == sorted(result["steps_with"])[1]
    # the baseline removes the ELBO's large offset from the score term: at the initial guide
    # the variance drops about 150x; 10x leaves a wide margin
    assert 10 * result["grad_var_with"] < result["grad_var_without"], out


def test_gmm_learns_the_component_means(capsys):
    result = load("gmm").main(["--quick"])
    out = capsys.readouterr().out
    assert "score_function" in out and "pathwise" in out  # the plan was printed
    for learned, true in zip(result["learned_means"], result["true_means"]):
        assert learned == pytest.approx(true, abs=0.5), out
    assert result["accuracy"] > 0.9, out


def test_sbn_elbo_improves(capsys):
    result = load("sbn").main(["--quick"])
    out = capsys.readouterr().out
    assert "nn[module=" in out  # the neural baselines are in the plan
    assert result["final_elbo"] > result["initial_elbo"] + 2.0, out
    assert result["final_elbo_no_baseline"] > result["initial_elbo_no_baseline"] + 2.0, out


def test_hmm_example_learns():
    """The HMM example (quick run): exact enumeration with markov improves the likelihood;
    infer_discrete's MAP decoding equals a hand-written Viterbi and mostly recovers the true
    states (87% after the quick run's 30 steps; 98% on the full run)."""
    result = load("hmm").main(["--quick"])
    assert result["last"] > result["first"] + 0.3
    assert result["viterbi_agrees"]
    assert result["accuracy"] > 0.75
