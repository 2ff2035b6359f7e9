"""The examples and the demo run end to end."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args, **env):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_coin_example_smoke():
    out = run(["examples/coin.py"], CI="1")
    assert "the fairness of the coin is" in out and "exact posterior mean: 0.533" in out


def test_demo_learns_the_exact_posterior():
    out = run(["-m", "svigraph", "demo"])
    assert "plan TraceGraph_ELBO" in out and "= pathwise" in out
    learned = float(re.search(r"learned .* mean (\d\.\d+)", out).group(1))
    assert abs(learned - 16 / 30) < 0.015, out
    assert "exact    Beta( 16.00,  14.00)  mean 0.533" in out
