"""The one timing rule of the benchmarks: the best of `repeats` wall-clock runs."""
from __future__ import annotations

import time


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of fn(): the run least disturbed by the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
