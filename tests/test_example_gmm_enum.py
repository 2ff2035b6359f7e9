"""examples/gmm_enum.py (quick run): with the assignments summed out exactly in the model,
MAP training recovers the mixture's means, weights and scale, and the printed plan shows
the enumeration's contraction."""

import importlib.util
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gmm_enum.py"


def test_gmm_enum_learns_the_mixture(capsys):
    spec = importlib.util.spec_from_file_location("example_gmm_enum", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick"])
    out = capsys.readouterr().out
    assert result["last"] < result["first"] - 50
    # 400 points: the MAP means' standard errors are about 0.8 / sqrt(80) = 0.09 for the
    # smallest component; the quick run lands within 0.1 of the truth (0.25 leaves margin)
    assert torch.allclose(result["locs"], module.TRUE_LOCS, atol=0.25), result["locs"]
    assert torch.allclose(result["weights"], module.TRUE_WEIGHTS, atol=0.05), result["weights"]
    assert abs(result["scale"] - module.TRUE_SCALE) < 0.1
    assert "%assignment : i64[400] (data) = enumerate" in out
    assert "marg = sum_product[assignment](model:assignment, model:obs) over plates data" in out
