"""Output arrays used again once nobody holds them, instead of fresh pages for every layer.

Why: a new array of a few MiB comes from the operating system as pages never touched (glibc
maps big blocks afresh and gives them back when they are freed), and the first write to each
page is a page fault in which the kernel zeroes it. A prefill of 1024 tokens through GPT-2 124M
on the numba backend asked for ~25,000 such pages (getrusage's minor faults): ~95 ms of its
~1.2 s, and GELU and LayerNorm, which only stream their arrays, ran at a third of their speed.

`OutputBuffers.empty(shape)` is `np.empty(shape, np.float32)` that first looks for one of the
buffers it handed out before that nobody uses any more. Safety rests on reference counts: a
buffer is given out again only when the only references to it are this object's own, and every
array made from it (each result is a view of it, and a view holds its base) counts as a
reference, so a result that a caller still holds, or any slice or reshape of it, is never
written over. The buffers it keeps are capped at `max_bytes`; small arrays come from malloc's
heap, whose pages stay mapped, and are made as usual.
"""
from __future__ import annotations

import math
import sys
import threading

import numpy as np

# Arrays of at least this size are looked for among the buffers; malloc serves smaller ones
# from memory it has already mapped (a prefill of 256 tokens, whose largest output is 3 MiB,
# took no page faults at all).
MIN_BYTES = 1 << 20
# Buffers kept at most: one block's outputs at T = 1024 (two (T, 4C) and a (T, 3C) array and
# a few (T, C) ones for GPT-2 124M, ~45 MiB), with room for a batch of two.
MAX_BYTES = 128 << 20


class OutputBuffers:
    """A cache of float32 buffers for kernels' outputs. Thread-safe."""

    def __init__(self, max_bytes: int = MAX_BYTES, min_bytes: int = MIN_BYTES):
        self.max_bytes, self.min_bytes = max_bytes, min_bytes
        self._buffers: list[np.ndarray] = []      # 1-D float32 arrays, last used last
        self._lock = threading.Lock()
        # What `_references` counts for a buffer that only this list holds: measured here
        # rather than assumed, since the interpreter's own count of a call's argument varies
        self._buffers.append(np.empty(0, np.float32))
        self._unused_count = self._references(0)
        self._buffers.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held in buffers now."""
        return sum(b.nbytes for b in self._buffers)

    def empty(self, shape) -> np.ndarray:
        """An uninitialised float32 array of `shape`, like np.empty: a free buffer if one of
        that size is kept, else a new one (kept if it fits under max_bytes)."""
        shape = tuple(int(n) for n in np.atleast_1d(shape))
        size = math.prod(shape)
        if size * 4 < self.min_bytes:
            return np.empty(shape, np.float32)
        with self._lock:
            for i in reversed(range(len(self._buffers))):   # the last used first: still in cache
                if self._buffers[i].size == size and self._is_unused(i):
                    buffer = self._buffers.pop(i)
                    self._buffers.append(buffer)
                    return buffer.reshape(shape)               # a view: it holds the buffer
            buffer = np.empty(size, np.float32)
            self._make_room(buffer.nbytes)
            if self.nbytes + buffer.nbytes <= self.max_bytes:
                self._buffers.append(buffer)
            return buffer.reshape(shape)

    def clear(self) -> None:
        """Forget every buffer (arrays still held elsewhere stay valid: they own their memory)."""
        with self._lock:
            self._buffers.clear()

    def _make_room(self, nbytes: int) -> None:
        """Drop unused buffers, least recently used first, until `nbytes` more fit under max_bytes."""
        i = 0
        while self.nbytes + nbytes > self.max_bytes and i < len(self._buffers):
            if self._is_unused(i):
                del self._buffers[i]
            else:
                i += 1

    def _is_unused(self, i: int) -> bool:
        return self._references(i) <= self._unused_count

    def _references(self, i: int) -> int:
        return sys.getrefcount(self._buffers[i])
