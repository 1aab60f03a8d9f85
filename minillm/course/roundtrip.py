"""The round trip: every assignment released alone fails exactly its own tests."""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .grading import _last_line
from .manifest import load_manifest
from .releasing import release
from .runner import RunResult, run_tests


@dataclass
class RoundTripReport:
    released: list[int]
    problems: list[str]
    notes: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (f"round trip of {', '.join(f'a{n}' for n in self.released)}: "
                f"{'ok' if self.ok else f'{len(self.problems)} problem(s)'} in {self.seconds:.0f}s")
        return "\n".join([head, *(f"  PROBLEM {p}" for p in self.problems),
                          *(f"  note {n}" for n in self.notes)])


def verify_round_trip(repo, assignments=None, *, jobs: int | None = None) -> RoundTripReport:
    """Check that the markers and the tests agree, on any repository with a manifest.

    With the solutions in place every assignment test passes; in the release of assignment N
    alone (one release per N) exactly the tests of N (and those declaring `uses=[N]`) fail with
    NotImplementedError while every other assignment's tests pass. Each run executes all the
    assignment tests once; `jobs` runs go in parallel (default: up to 2).
    """
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    repo = Path(repo).resolve()
    manifest = load_manifest(repo)
    released = manifest.select(assignments)
    everything = sorted(manifest.assignments)
    jobs = jobs or max(1, min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="minillm-roundtrip-") as scratch:
        trees = {0: repo}
        for number in released:
            trees[number] = release(repo, Path(scratch) / f"a{number}", [number], collect=False).out
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            runs = dict(zip(trees, pool.map(
                lambda tree: run_tests(tree, everything, manifest), trees.values()),
                strict=True))
    problems, notes = _solution_problems(runs[0], released)
    for number in released:
        problems += _release_problems(number, runs[number], runs[0])
    return RoundTripReport(released, problems, notes, time.monotonic() - started)


def _collection_problems(label: str, run: RunResult) -> list[str]:
    return [f"{label}: {e['nodeid']} could not be collected: {_last_line(e['message'])}"
            for e in run.collection_errors]


def _solution_problems(run: RunResult, numbers) -> tuple[list[str], list[str]]:
    problems = _collection_problems("with the solutions", run)
    notes = [f"{n} skipped with the solutions ({r['message']}); not verified"
             for n, r in sorted(run.tests.items()) if r["outcome"] == "skipped"]
    problems += [f"with the solutions: {n} {r['outcome'].replace('_', ' ')}: {r['message']}"
                 for n, r in sorted(run.tests.items()) if r["outcome"] not in ("passed", "skipped")]
    problems += [f"a{n} has no tests" for n in numbers
                 if not any(r["assignment"] == n for r in run.tests.values())]
    return problems, notes


def _release_problems(number: int, run: RunResult, solutions: RunResult) -> list[str]:
    label = f"release of a{number}"
    problems = _collection_problems(label, run)
    for nodeid, record in sorted(run.tests.items()):
        outcome, message = record["outcome"], record["message"]
        if solutions.tests.get(nodeid, {}).get("outcome") == "skipped" or outcome == "skipped":
            continue
        if record["assignment"] == number or number in record["uses"]:
            if outcome == "passed":
                problems.append(f"{label}: {nodeid} still passes: no a{number} region covers what it checks")
            elif outcome != "not_implemented":
                problems.append(f"{label}: {nodeid} {outcome} instead of raising "
                                f"NotImplementedError: {message}")
        elif outcome != "passed":
            hint = (f"; it runs a{number}'s code: declare @pytest.mark.assignment("
                    f"{record['assignment']}, uses=[{number}]) or make it independent"
                    if outcome == "not_implemented" else "")
            problems.append(f"{label}: {nodeid} (a{record['assignment']}) "
                            f"{outcome.replace('_', ' ')}: {message}{hint}")
    missing = sorted(set(solutions.tests) - set(run.tests))
    problems += [f"{label}: {nodeid} did not run" for nodeid in missing]
    return problems

