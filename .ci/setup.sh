#!/usr/bin/env bash
# Set up a virtualenv in .venv with torch 2.13.0 (CPU) and svigraph (editable, with tests).
# Safe to run again: an existing, complete .venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch, svigraph, pytest" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: a looser request would pull a CUDA build of several GB.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[test]"
fi
