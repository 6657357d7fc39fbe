"""Buffers kept across calls, so a loop that runs the same shapes again allocates nothing.

Every layer takes an optional ``ws`` (a :class:`Workspace`). Without one it returns new arrays (the pure
contract of STYLE.md). With one it writes its outputs, caches and gradients into buffers taken from it,
which the next call with the same workspace overwrites: the caller promises that nothing it still needs
lives there. The training loop (:func:`refdns.train.train_step`) keeps one workspace per run and uses every
result before the next step, so after the first step a training step requests no new memory: no page
faults, no allocator traffic (tests/test_train_alloc.py counts them).
"""

from __future__ import annotations

import numpy as np


class Workspace:
    """Named buffers, plus named child workspaces (one per op of a net).

    ``take(key, shape, dtype)`` returns the buffer kept under ``key``, made anew only when the shape or
    dtype differ from the last request under that key. Its contents are whatever was left there.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}
        self._children: dict[object, Workspace] = {}

    def take(self, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        buf = self._buffers.get(key)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = self._buffers[key] = np.empty(shape, dtype=dtype)
        return buf

    def child(self, key: object) -> Workspace:
        """The workspace kept under ``key`` (made on first use)."""
        ws = self._children.get(key)
        if ws is None:
            ws = self._children[key] = Workspace()
        return ws

    def nbytes(self) -> int:
        """Bytes held by this workspace and its children."""
        return sum(b.nbytes for b in self._buffers.values()) + sum(c.nbytes() for c in self._children.values())


def take(ws: Workspace | None, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """``ws.take(...)``, or a new empty array when there is no workspace."""
    if ws is None:
        return np.empty(shape, dtype=dtype)
    return ws.take(key, shape, dtype)
