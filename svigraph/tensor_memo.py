"""``UnchangedTensorMemo``: a value computed from a tensor, kept while that tensor is unchanged.

"Unchanged" means the same object (held by a weak reference, so the memo keeps nothing
alive), the same ``_version`` (in-place writes bump it) and the same ``data_ptr`` (``x.data =
y`` moves it). Used for per-step work on data a model passes every step: observed values'
support checks, constant probability tables.
"""

from __future__ import annotations

import weakref


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
