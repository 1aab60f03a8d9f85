"""Timings that mean something on a busy machine: one thread, best of n, curves fitted on log axes.

Other work on the machine can only ever add time to a run, so the fastest of several runs is the
best estimate of what the code itself costs. Holding the libraries at one thread makes that cost
the same whether the machine's other cores are free or not (and comparable across machines).
"""
from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def one_thread():
    """Inside the block, BLAS (NumPy's matmuls) and numba's parallel loops run on one thread."""
    numba = sys.modules.get("numba")                  # only if something has loaded it already
    numba_threads = numba.get_num_threads() if numba else None
    with threadpool_limits(limits=1):
        try:
            if numba:
                numba.set_num_threads(1)
            yield
        finally:
            if numba:
                numba.set_num_threads(numba_threads)


def best_time(fn, repeat: int = 5) -> float:
    """Seconds of the fastest of `repeat` calls of fn(), after one untimed warm-up call
    (compilation, first-touch page faults), all on one thread."""
    with one_thread():
        fn()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times)


def loglog_slope(x, y) -> float:
    """The exponent p of the least-squares fit y ~ x**p: the slope of the line through (log x, log y).
    1 for linear growth, 2 for quadratic, 0 for a flat curve."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def rank_correlation(x, y) -> float:
    """Spearman's rank correlation: +1 when y only ever grows with x, whatever the shape of the growth."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])
