"""Imports flow one way: compiler never imports svigraph or runtime; runtime never imports
svigraph. Checked in a fresh interpreter, where sys.modules tells the truth."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package, forbidden", [
    ("compiler", ("svigraph", "runtime")),
    ("runtime.executor", ("svigraph",)),
    ("runtime.baselines", ("svigraph",)),
    ("runtime.records", ("svigraph",)),
    ("runtime.terms", ("svigraph",)),
])
def test_layering(package, forbidden):
    code = (f"import sys, {package}; "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}); "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"{package} imports {result.stdout.strip()}"


def test_svigraph_never_imports_pyro():
    code = "import sys, svigraph; sys.exit(1 if any(m.startswith('pyro') for m in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
