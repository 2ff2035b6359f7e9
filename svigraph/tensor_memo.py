"""Per-step work kept between steps: ``UnchangedTensorMemo`` (a value computed from a tensor,
kept while that tensor is unchanged) and ``SharedTensors`` (constant tensors built once per
key, handed out while nobody writes into them).

"Unchanged" means the same object (held by a weak reference, so the memo keeps nothing
alive), the same ``_version`` (in-place writes bump it) and the same ``data_ptr`` (``x.data =
y`` moves it). Used for per-step work on data a model passes every step: observed values'
support checks, constant probability tables.
"""

from __future__ import annotations

import weakref

import torch


class UnchangedTensorMemo:
    """Values by tensor, valid while the tensor is unchanged; cleared whole when full."""

    __slots__ = ("_entries", "_max_size")

    def __init__(self, max_size):
        self._entries = {}  # id(tensor) -> (weakref, _version, data_ptr, value)
        self._max_size = max_size

    def get(self, tensor):
        """The value stored for ``tensor``, or None when it changed (or none was stored)."""
        entry = self._entries.get(id(tensor))
        if (entry is not None and entry[0]() is tensor and entry[1] == tensor._version
                and entry[2] == tensor.data_ptr()):
            return entry[3]
        return None

    def put(self, tensor, value):
        if len(self._entries) >= self._max_size:
            self._entries.clear()
        self._entries[id(tensor)] = (weakref.ref(tensor), tensor._version, tensor.data_ptr(),
                                     value)


class SharedTensors:
    """Constant tensors built once per key and handed out again while unchanged: a caller
    that writes into one (bumping its ``_version``) makes the next ``get`` build a new one.
    Inference mode gets its own (autograd could not save it), and so does any active torch
    function or dispatch mode (a default device, a JIT capture records its own)."""

    __slots__ = ("_entries", "_max_size")

    def __init__(self, max_size):
        self._entries = {}  # key -> (tensor, its _version when built)
        self._max_size = max_size

    def get(self, key, make, *args):
        """The tensor for ``key``, built by ``make(*args)`` when none is held unchanged."""
        if (torch.is_inference_mode_enabled() or torch._C._len_torch_function_stack()
                or torch._C._len_torch_dispatch_stack()):
            return make(*args)
        entry = self._entries.get(key)
        if entry is not None and entry[0]._version == entry[1]:
            return entry[0]
        value = make(*args)
        if len(self._entries) >= self._max_size:
            self._entries.clear()
        self._entries[key] = (value, value._version)
        return value
