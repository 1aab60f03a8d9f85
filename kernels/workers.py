"""One pool of worker threads that owns the CPU cores while a big operation runs.

The problem it solves: NumPy's OpenBLAS and numba each keep their own threads. When an
OpenBLAS call ends, its idle worker keeps spinning on its core for ~2^28 cycles (~0.1 s) in
case more work comes, so a numba-parallel kernel started right after a matmul shares a core
with a thread doing nothing (benchmarks/README.md has the slowdown measured on 2 cores). Two
pools that take turns keep stepping on each other.

The fix is to have only one pool. `WorkerPool.run(piece, n)` runs piece(0), ..., piece(n-1) at
once, one per thread (the caller runs piece 0), and every heavy operation of a forward pass
is cut into such pieces:
  - a matmul into row blocks, each one single-threaded BLAS call: OpenBLAS is held at one
    thread for the duration (through threadpoolctl), so it starts no threads of its own;
  - the numba kernels are compiled with `nogil=True` and take a worker index, so each worker
    computes its own share of rows or attention jobs, in parallel with the others.

Decoding one sequence uses the pool once per step: minillm.kernels.decode_step_cpu runs the
whole step as one piece per thread, the pieces meeting at barriers, which needs every piece on
a thread of its own at once (n_pieces <= n_threads, and no other `run` of the pool meanwhile:
NumbaBackend holds a lock for it). Step by step (NumbaBackend(whole_step=False)) its
matrix-vector products are too short to split by rows, and OpenBLAS's or numba's own threads
run them.
"""
from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from threadpoolctl import ThreadpoolController


class WorkerPool:
    """n_threads threads (the caller and n_threads - 1 helpers) that run pieces of one operation.

    n_threads defaults to numba's thread count (NUMBA_NUM_THREADS, else the number of cores).
    WorkerPool(1) runs everything on the calling thread."""

    def __init__(self, n_threads: int | None = None):
        if n_threads is None:
            import numba
            n_threads = numba.get_num_threads()
        if not isinstance(n_threads, int) or n_threads < 1:
            raise ValueError(f"n_threads must be a positive int, got {n_threads!r}")
        self.n_threads = n_threads
        self._helpers = None
        self._blas = None
        if n_threads > 1:
            self._start_helpers()
            # Only the BLAS libraries (NumPy's OpenBLAS); numba's and torch's OpenMP stay as they are.
            self._blas = ThreadpoolController().select(user_api="blas")

    def _start_helpers(self) -> None:
        self._helpers = ThreadPoolExecutor(self.n_threads - 1, thread_name_prefix="minillm-worker")
        self._helpers_pid = os.getpid()
        weakref.finalize(self, self._helpers.shutdown, wait=False)

    def run(self, piece: Callable[[int], None], n_pieces: int | None = None) -> None:
        """piece(i) for every i in range(n_pieces) (default: one per thread), in parallel.

        Pieces i, i + n_threads, i + 2 n_threads, ... run one after another on one thread, so
        scratch memory indexed by i % n_threads is never used by two pieces at once. BLAS is
        single-threaded until every piece has finished; the first exception raised by a piece
        is raised here, after all of them have stopped."""
        n_pieces = self.n_threads if n_pieces is None else n_pieces
        if self._helpers is not None and self._helpers_pid != os.getpid():
            self._start_helpers()   # a forked child inherits the pool but not its threads
        if self._helpers is None or n_pieces <= 1:
            for i in range(n_pieces):
                piece(i)
            return
        with self._blas.limit(limits=1):
            futures = [self._helpers.submit(self._pieces, piece, range(i, n_pieces, self.n_threads))
                       for i in range(1, min(n_pieces, self.n_threads))]
            try:
                self._pieces(piece, range(0, n_pieces, self.n_threads))
            finally:
                errors = [f.exception() for f in futures]      # waits for every helper
            for error in errors:
                if error is not None:
                    raise error

    @staticmethod
    def _pieces(piece: Callable[[int], None], indices: range) -> None:
        for i in indices:
            piece(i)

    def split(self, n_items: int) -> list[tuple[int, int]]:
        """[start, stop) bounds cutting range(n_items) into n_threads near-equal blocks."""
        n_blocks = min(self.n_threads, max(n_items, 1))
        bounds = [n_items * i // n_blocks for i in range(n_blocks + 1)]
        return list(zip(bounds[:-1], bounds[1:]))
