"""The timing rules of the benchmarks: the best of `repeats` wall-clock runs, and variants
measured in interleaved rounds."""
from __future__ import annotations

import time
from typing import Callable


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of fn(): the run least disturbed by the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_rounds(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each run's figures over `rounds` rounds, every run once per round, the order reversed
    every other round: a machine that speeds up or slows down meanwhile (shared hosts drift by
    10-40% within minutes) shifts them all alike."""
    figures = {name: [] for name in runs}
    for round_ in range(rounds):
        for name in (list(runs) if round_ % 2 == 0 else list(runs)[::-1]):
            figures[name].append(runs[name]())
    return figures
