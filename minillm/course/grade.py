"""Grading: the assignment tests in a fresh pytest process on the graded tree, points from the
manifest, the score table and JSON."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .manifest import (MANIFEST_PATH, AssignmentError, Manifest, find_repository, load_manifest,
                       read_toml, repo_files, under)

OUTCOMES = ("passed", "failed", "not_implemented", "error", "skipped")
_FAILURES = {"failed", "not_implemented", "error"}


@contextmanager
def graded_environment(root: Path, numbers):
    """(environment of a pytest process that grades assignments `numbers` in `root`, the path
    of its JSON-lines results): see _graded_tree.py."""
    root = Path(root).resolve()
    with tempfile.TemporaryDirectory(prefix="minillm-grade-") as helper:
        shutil.copy(Path(__file__).with_name("_graded_tree.py"), Path(helper, "sitecustomize.py"))
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [helper, str(root), env.get("PYTHONPATH")])),
            PYTEST_PLUGINS="sitecustomize",
            MINILLM_GRADE_PACKAGES=json.dumps(_relocated_packages(root)),
            MINILLM_GRADE_SELECT=json.dumps(list(numbers)),
            MINILLM_GRADE_RESULTS=str(Path(helper, "results.jsonl")))
        yield env, Path(helper, "results.jsonl")


def _relocated_packages(root: Path) -> dict[str, str]:
    """{package: its directory in root}, from pyproject's [tool.setuptools.package-dir]."""
    pyproject = read_toml(root / "pyproject.toml") if (root / "pyproject.toml").is_file() else {}
    mapping = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {name: str(root / rel) for name, rel in mapping.items()
            if name and (root / rel / "__init__.py").is_file()}


def pytest_command(manifest: Manifest, extra) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *manifest.pytest_args, *extra,
            *manifest.test_paths]


def run_tests(root, numbers, manifest: Manifest | None = None, *, workers: int = 1,
              timeout: float | None = None) -> dict:
    """Run the tests of assignments `numbers` in `root` (importing root's code):
    {"tests": {nodeid: {assignment, uses, outcome, message}}, "collection_errors", "timed_out"}.
    timeout: seconds for the whole run, after which it is stopped (an endless loop in a
    submission); the tests it finished still count."""
    root = Path(root).resolve()
    manifest = manifest or load_manifest(root)
    xdist = ["-n", str(workers)] if workers > 1 else []   # pytest-xdist: a dev dependency
    with graded_environment(root, numbers) as (env, results):
        command = pytest_command(manifest, ["-q", "--continue-on-collection-errors",
                                            "--rootdir", str(root), *xdist])
        output, returncode, timed_out = run_with_timeout(command, root, env, timeout)
        if returncode in (3, 4) and not timed_out:    # an internal or a usage error
            raise AssignmentError(f"pytest did not run in {root} (exit {returncode}):\n"
                                  + "\n".join(output.rstrip().splitlines()[-40:]))
        lines = results.read_text(encoding="utf-8").splitlines() if results.is_file() else []
    run, phases = {"tests": {}, "collection_errors": [], "timed_out": timed_out}, {}
    for record in map(json.loads, lines):
        if "collection_error" in record:
            run["collection_errors"].append({"nodeid": record["collection_error"],
                                             "message": record["message"]})
        else:
            phases.setdefault(record["nodeid"], []).append(record)
    unfinished = {"outcome": "error",
                  "message": "stopped by the timeout" if timed_out else "did not finish"}
    for nodeid, records in phases.items():
        # The first failure says most; a test that only started was stopped.
        final = (next((r for r in records if r["outcome"] in _FAILURES), None)
                 or next((r for r in reversed(records) if r["outcome"] != "started"), unfinished))
        run["tests"][nodeid] = {"assignment": records[0]["assignment"], "uses": records[0]["uses"],
                                "outcome": final["outcome"], "message": final["message"]}
    return run


def run_with_timeout(command, cwd: Path, env, timeout) -> tuple[str, int, bool]:
    """(output, exit status, whether it timed out); on timeout the whole process group goes,
    xdist workers and notebook kernels included."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return output, proc.returncode, False
    except subprocess.TimeoutExpired:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        return proc.communicate()[0], proc.returncode, True


# ---------------------------------------------------------------------------- points
def _matches(nodeid: str, prefix: str) -> bool:
    return nodeid == prefix or (nodeid.startswith(prefix) and nodeid[len(prefix)] in ":[/")


def allocate_points(assignment, nodeids) -> dict[str, float]:
    """Points per test: test_points entries (most specific first) split over the tests they
    match; the rest of `points` split evenly over the other tests; 1 each when no total."""
    points = {}
    for prefix in sorted(assignment.test_points, key=len, reverse=True):
        matched = [n for n in nodeids if n not in points and _matches(n, prefix)]
        points.update((n, assignment.test_points[prefix] / len(matched)) for n in matched)
    rest = [n for n in nodeids if n not in points]
    if rest:
        if assignment.points is None:
            left = len(rest)
        else:
            left = max(assignment.points - sum(points.values()), 0)
        points.update((n, left / len(rest)) for n in rest)
    return points


def score_run(run: dict, manifest: Manifest, numbers, root: Path) -> dict:
    """The grade report (the JSON that `grade --json` prints) of a run of `run_tests`."""
    broken = {}   # assignment -> test files of it that could not be imported
    for error in run["collection_errors"]:
        path = root / error["nodeid"].split("::")[0]
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        last = (error["message"].strip().splitlines() or [""])[-1].strip()
        for number in {int(n) for n in re.findall(r"assignment\((\d+)", text)}:
            broken.setdefault(number, []).append(f"{error['nodeid']} could not be collected: {last}")
    scores = []
    for number in numbers:
        assignment = manifest.assignments[number]
        nodeids = sorted(n for n, t in run["tests"].items() if t["assignment"] == number)
        points = allocate_points(assignment, nodeids)
        tests = [{"nodeid": n, "outcome": run["tests"][n]["outcome"], "points": points[n],
                  "earned": points[n] if run["tests"][n]["outcome"] == "passed" else 0.0,
                  "message": run["tests"][n]["message"]} for n in nodeids]
        errors = broken.get(number, [])
        scores.append({
            "assignment": number, "tag": f"a{number}", "name": assignment.name,
            "title": assignment.title,
            "earned": 0.0 if errors else sum(t["earned"] for t in tests),
            "possible": sum(points.values()) if assignment.points is None else float(assignment.points),
            "counts": {o: sum(t["outcome"] == o for t in tests) for o in OUTCOMES},
            "errors": errors, "tests": tests})
    return {"schema": 1, "root": str(root), "earned": sum(s["earned"] for s in scores),
            "possible": sum(s["possible"] for s in scores), "assignments": scores,
            "collection_errors": run["collection_errors"], "timed_out": run["timed_out"]}


def all_passed(report: dict) -> bool:
    return not report["timed_out"] and all(
        not s["errors"] and s["tests"] and all(t["outcome"] == "passed" for t in s["tests"])
        for s in report["assignments"])


def grade(root=None, only=None, *, workers: int = 1, tests_from=None,
          timeout: float | None = None) -> dict:
    """Grade the tree `root`. tests_from: grade with that repository's tests, manifest and pytest
    configuration instead of root's own (the submission is copied; it is not modified)."""
    root = Path(root).resolve() if root else find_repository()
    if tests_from is None:
        manifest = load_manifest(root)
        numbers = manifest.select(only)
        return score_run(run_tests(root, numbers, manifest, workers=workers, timeout=timeout),
                         manifest, numbers, root)
    reference = Path(tests_from).resolve()
    manifest = load_manifest(reference)
    numbers = manifest.select(only)
    graded_by = [*manifest.test_paths, "conftest.py", "pyproject.toml", MANIFEST_PATH]
    with tempfile.TemporaryDirectory(prefix="minillm-submission-") as scratch:
        copy = Path(scratch) / root.name
        for tree, from_reference in ((root, False), (reference, True)):
            for rel in repo_files(tree):
                if under(rel, graded_by) == from_reference:
                    (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(tree / rel, copy / rel, follow_symlinks=False)
        report = score_run(run_tests(copy, numbers, manifest, workers=workers, timeout=timeout),
                           manifest, numbers, copy)
    return {**report, "root": str(root)}


def _fmt(points: float) -> str:
    return f"{points:.2f}".rstrip("0").rstrip(".")


def format_report(report: dict) -> str:
    lines, width = [], 78
    for score in report["assignments"]:
        head = f"Assignment {score['assignment']} ({score['name']}): {score['title']}"
        lines.append(f"{head:<{width}} {_fmt(score['earned']):>6} / {_fmt(score['possible'])}")
        lines += [f"  ERROR  {error}" for error in score["errors"]]
        if not score["tests"] and not score["errors"]:
            lines.append("  no tests found for this assignment")
        for test in score["tests"]:
            shown = test["outcome"].replace("_", " ")
            lines.append(f"  {shown:<16} {_fmt(test['earned']):>6} / {_fmt(test['points']):<6} "
                         f"{test['nodeid']}")
            if test["outcome"] != "passed" and test["message"]:
                lines.append(f"{'':<19}{test['message'][:150]}")
        lines.append("")
    if report["timed_out"]:
        lines.append("The test run was stopped by the timeout; the tests it did not reach earn nothing.")
    lines.append(f"{'Total':<{width}} {_fmt(report['earned']):>6} / {_fmt(report['possible'])}")
    return "\n".join(lines)
