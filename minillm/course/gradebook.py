"""Grading a class: every submission of a folder (one subfolder per student), a CSV of the
points, and Gradescope's results.json for a submission."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .grade import grade
from .manifest import AssignmentError


def submissions(folder) -> list[Path]:
    """The students' folders in `folder`, by name; hidden ones (.git) are not submissions."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AssignmentError(f"{folder}: not a folder of submissions (one subfolder per student)")
    found = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise AssignmentError(f"{folder}: holds no submission; expected one subfolder per student")
    return found


def grade_class(folder, tests_from, only=None, *, workers: int = 1,
                timeout: float | None = None, progress=None) -> list[dict]:
    """{"student", "report" (grade's report, or None), "error"} per submission, always graded
    with the tests of `tests_from` (the instructor's repository). A submission that cannot be
    graded gets its error and no points; the others are still graded."""
    results = []
    for path in submissions(folder):
        if progress:
            progress(path.name)
        try:
            report = grade(path, only, workers=workers, tests_from=tests_from, timeout=timeout)
            results.append({"student": path.name, "report": report, "error": None})
        except AssignmentError as exc:
            results.append({"student": path.name, "report": None, "error": str(exc)})
    return results


def _points(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def write_csv(results: list[dict], numbers, path) -> None:
    """One row per student: the points of each assignment, the total, and a note when the run
    was stopped or could not be graded."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", *(f"a{n}" for n in numbers), "total", "note"])
        for result in results:
            report = result["report"]
            if report is None:
                writer.writerow([result["student"], *("0" for _ in numbers), "0",
                                 f"not graded: {result['error'].splitlines()[0]}"])
                continue
            earned = {s["assignment"]: s["earned"] for s in report["assignments"]}
            writer.writerow([result["student"], *(_points(earned.get(n, 0.0)) for n in numbers),
                             _points(report["earned"]), _note(report)])


def _note(report: dict) -> str:
    notes = ["stopped by the timeout"] if report["timed_out"] else []
    notes += [error for score in report["assignments"] for error in score["errors"]]
    return "; ".join(notes)


def gradescope_results(report: dict) -> dict:
    """Gradescope's results.json of one graded submission: the score, and one entry per test with
    its points, so the student sees each test's outcome and the stub or assertion message.

    An assignment whose test files could not be imported gets an entry for the points of the
    tests that did not run, so the maxima still add up to the assignment's points."""
    tests = []
    for score in report["assignments"]:
        head = f"Assignment {score['assignment']} ({score['name']})"
        broken = bool(score["errors"])
        for test in score["tests"]:
            passed = test["outcome"] == "passed" and not broken
            output = test["outcome"].replace("_", " ")
            if test["message"] and test["outcome"] != "passed":
                output += f": {test['message']}"
            tests.append({"name": f"{head}: {test['nodeid']}",
                          "score": test["earned"] if passed else 0.0, "max_score": test["points"],
                          "status": "passed" if passed else "failed", "output": output})
        missing = score["possible"] - sum(t["points"] for t in score["tests"])
        if broken or missing > 1e-9:
            tests.append({"name": f"{head}: tests that could not run", "score": 0.0,
                          "max_score": max(missing, 0.0), "status": "failed",
                          "output": "\n".join(score["errors"]) or "no tests of this assignment ran"})
    output = ["The test run was stopped by the timeout; the tests it did not reach earn nothing."
              ] if report["timed_out"] else []
    output += [f"{e['nodeid']} could not be imported: {e['message'].strip().splitlines()[-1]}"
               for e in report["collection_errors"] if e["message"].strip()]
    results = {"score": 0.0 if not tests else sum(t["score"] for t in tests), "tests": tests}
    if output:
        results["output"] = "\n".join(output)
    return results


def write_gradescope(report: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gradescope_results(report), indent=2) + "\n", encoding="utf-8")


def format_class(results: list[dict], numbers) -> str:
    """The class table: a row per student, the maxima underneath."""
    possible = {s["assignment"]: s["possible"] for r in results if r["report"]
                for s in r["report"]["assignments"]}
    width = max([len("student"), *(len(r["student"]) for r in results)])
    lines = [f"{'student':<{width}}" + "".join(f"{f'a{n}':>8}" for n in numbers) + f"{'total':>9}"]
    for result in results:
        report = result["report"]
        earned = {} if report is None else {s["assignment"]: s["earned"] for s in report["assignments"]}
        row = f"{result['student']:<{width}}" + "".join(f"{_points(earned.get(n, 0.0)):>8}" for n in numbers)
        row += f"{_points(0.0 if report is None else report['earned']):>9}"
        lines.append(row + (f"  not graded: {result['error'].splitlines()[0]}" if report is None
                            else f"  {_note(report)}" if _note(report) else ""))
    total = sum(possible.get(n, 0.0) for n in numbers)
    lines.append(f"{'out of':<{width}}" + "".join(f"{_points(possible.get(n, 0.0)):>8}" for n in numbers)
                 + f"{_points(total):>9}")
    return "\n".join(lines)
