"""Scoring a test run with the manifest's points, and the score table."""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import MANIFEST_PATH, Assignment, Manifest, find_repository, load_manifest
from .runner import RunResult, run_tests
from .sources import _under, list_repo_files

OUTCOMES = ("passed", "failed", "not_implemented", "error", "skipped")


def _nodeid_matches(nodeid: str, prefix: str) -> bool:
    return nodeid == prefix or (nodeid.startswith(prefix) and nodeid[len(prefix)] in ":[/")


def allocate_points(assignment: Assignment, nodeids) -> dict[str, float]:
    """Points per test: test_points entries (most specific first) split over the tests they
    match; the rest of `points` split evenly over the other tests; 1 each when no total."""
    points = {}
    for prefix in sorted(assignment.test_points, key=len, reverse=True):
        matched = [n for n in nodeids if n not in points and _nodeid_matches(n, prefix)]
        for nodeid in matched:
            points[nodeid] = float(assignment.test_points[prefix]) / len(matched)
    rest = [n for n in nodeids if n not in points]
    if rest:
        left = 1.0 * len(rest) if assignment.points is None else \
            max(float(assignment.points) - sum(points.values()), 0.0)
        points.update((nodeid, left / len(rest)) for nodeid in rest)
    return points


@dataclass
class ScoredTest:
    nodeid: str
    outcome: str
    points: float
    message: str | None = None

    @property
    def earned(self) -> float:
        return self.points if self.outcome == "passed" else 0.0


@dataclass
class AssignmentScore:
    assignment: Assignment
    tests: list[ScoredTest]
    possible: float
    errors: list[str] = field(default_factory=list)   # a test file that could not be imported

    @property
    def earned(self) -> float:
        return 0.0 if self.errors else sum(t.earned for t in self.tests)


@dataclass
class GradeReport:
    root: Path
    scores: list[AssignmentScore]
    collection_errors: list[dict]
    timed_out: bool = False        # the run was stopped: tests it did not reach are missing

    @property
    def earned(self) -> float:
        return sum(s.earned for s in self.scores)

    @property
    def possible(self) -> float:
        return sum(s.possible for s in self.scores)

    @property
    def all_passed(self) -> bool:
        return not self.timed_out and all(
            not s.errors and s.tests and all(t.outcome == "passed" for t in s.tests)
            for s in self.scores)

    def to_dict(self) -> dict:
        return {
            "schema": 1, "root": str(self.root),
            "earned": round(self.earned, 4), "possible": round(self.possible, 4),
            "assignments": [{
                "assignment": s.assignment.number, "tag": s.assignment.tag,
                "name": s.assignment.name, "title": s.assignment.title,
                "earned": round(s.earned, 4), "possible": round(s.possible, 4),
                "counts": {o: sum(t.outcome == o for t in s.tests) for o in OUTCOMES},
                "errors": s.errors,
                "tests": [{"nodeid": t.nodeid, "outcome": t.outcome, "points": round(t.points, 4),
                           "earned": round(t.earned, 4), "message": t.message} for t in s.tests],
            } for s in self.scores],
            "collection_errors": self.collection_errors,
            "timed_out": self.timed_out,
        }


def _assignments_named_in(root: Path, rel: str, manifest: Manifest) -> set[int]:
    """Assignments a test file that failed to import grades, from its marker text and the manifest."""
    numbers = {n for n, a in manifest.assignments.items()
               if any(_nodeid_matches(p, rel) or _nodeid_matches(rel, p) for p in a.tests)}
    try:
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return numbers
    found = re.findall(r"assignment\(\s*(?:n\s*=\s*)?[\"']?a?(\d+)", text)
    return numbers | {int(n) for n in found}


def score_run(root: Path, run: RunResult, manifest: Manifest, numbers) -> GradeReport:
    scores = []
    for number in numbers:
        assignment = manifest.assignments[number]
        nodeids = sorted(n for n, r in run.tests.items() if r["assignment"] == number)
        points = allocate_points(assignment, nodeids)
        tests = [ScoredTest(n, run.tests[n]["outcome"], points[n], run.tests[n]["message"])
                 for n in nodeids]
        possible = sum(points.values()) if assignment.points is None else float(assignment.points)
        scores.append(AssignmentScore(assignment, tests, possible))
    for error in run.collection_errors:
        graded = _assignments_named_in(root, error["nodeid"].split("::")[0], manifest)
        for score in scores:
            if score.assignment.number in graded:
                score.errors.append(f"{error['nodeid']} could not be collected: "
                                    f"{_last_line(error['message'])}")
    return GradeReport(root, scores, run.collection_errors, run.timed_out)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def grade(root=None, only=None, *, workers: int = 1, tests_from=None,
          timeout: float | None = None) -> GradeReport:
    """Grade the tree `root`. tests_from: grade with that repository's tests, manifest and pytest
    configuration instead of root's own (the submission is copied; it is not modified).
    timeout: seconds for the whole test run (see run_tests)."""
    root = Path(root).resolve() if root else find_repository()
    if tests_from is None:
        manifest = load_manifest(root)
        numbers = manifest.select(only)
        run = run_tests(root, numbers, manifest, workers=workers, timeout=timeout)
        return score_run(root, run, manifest, numbers)
    reference = Path(tests_from).resolve()
    manifest = load_manifest(reference)
    numbers = manifest.select(only)
    with tempfile.TemporaryDirectory(prefix="minillm-submission-") as scratch:
        copy = _overlay_reference_tests(root, reference, manifest, Path(scratch) / root.name)
        run = run_tests(copy, numbers, manifest, workers=workers, timeout=timeout)
        report = score_run(copy, run, manifest, numbers)
    report.root = root
    return report


def _overlay_reference_tests(submission: Path, reference: Path, manifest: Manifest, copy: Path) -> Path:
    """Copy the submission, then replace whatever decides how it is tested with the reference's."""
    for rel in list_repo_files(submission):
        _copy_file(submission / rel, copy / rel)
    graded_by = [*manifest.test_paths, "conftest.py", "pyproject.toml", MANIFEST_PATH]
    for rel in graded_by:
        target = copy / rel
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for rel in list_repo_files(reference):
        if _under(rel, graded_by):
            _copy_file(reference / rel, copy / rel)
    return copy


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _fmt(points: float) -> str:
    return f"{points:.2f}".rstrip("0").rstrip(".")


def format_report(report: GradeReport) -> str:
    lines, width = [], 78
    for score in report.scores:
        a = score.assignment
        head = f"Assignment {a.number} ({a.name}): {a.title}"
        lines.append(f"{head:<{width}} {_fmt(score.earned):>6} / {_fmt(score.possible)}")
        for error in score.errors:
            lines.append(f"  ERROR  {error}")
        if not score.tests and not score.errors:
            lines.append("  no tests found for this assignment")
        for test in score.tests:
            shown = test.outcome.replace("_", " ")
            lines.append(f"  {shown:<16} {_fmt(test.earned):>6} / {_fmt(test.points):<6} {test.nodeid}")
            if test.outcome != "passed" and test.message:
                lines.append(f"{'':<19}{test.message[:150]}")
        lines.append("")
    if report.timed_out:
        lines.append("The test run was stopped by the timeout; the tests it did not reach earn nothing.")
    lines.append(f"{'Total':<{width}} {_fmt(report.earned):>6} / {_fmt(report.possible)}")
    return "\n".join(lines)

