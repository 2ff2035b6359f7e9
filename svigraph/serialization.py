"""Saving and loading state files that hold only tensors and plain data."""

from __future__ import annotations

import pickle

import torch

from compiler.errors import SvigraphError


class UnsafeFileError(SvigraphError, ValueError):
    """A state file holds pickled objects other than tensors and plain data: refused unread."""


def safe_load(path, map_location=None, written_by="save()"):
    """``torch.load(weights_only=True)``, refusing any other pickled object with a clear error."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(
            f"refusing to load {str(path)!r}: it holds pickled objects other than tensors and "
            "plain data", [first], f"load only files written by {written_by}") from None
