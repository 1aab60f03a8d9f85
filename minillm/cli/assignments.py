"""`minillm assignments ACTION`: release, grade, test, check, verify (see assignments/README.md)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from minillm.course import (AssignmentError, all_passed, coverage_warnings, find_repository,
                            find_withheld, format_report, grade, load_manifest,
                            parse_assignment_number, parse_only, release, repo_files,
                            scan_repository, verify_round_trip)
from minillm.course.grade import graded_environment, pytest_command
from minillm.course.gradebook import format_class, grade_class, write_csv, write_gradescope

def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="assignments_action", required=True, metavar="ACTION")

    p = actions.add_parser("release", help="write the student copy, the chosen solutions stubbed")
    p.add_argument("--out", required=True, type=Path, help="directory to create (must be empty)")
    p.add_argument("--only", type=parse_only, help="assignments to stub, e.g. 1,3 (default: all)")
    p.add_argument("--source", type=Path, help="instructor repository (default: the one around cwd)")
    p.add_argument("--no-check", action="store_true",
                   help="skip checking that the copy's tests collect")

    p = actions.add_parser("grade", help="run the assignment tests and print the score table")
    p.add_argument("dir", nargs="?", type=Path,
                   help="tree to grade (default: the one around cwd); with --class, the folder "
                        "of submissions")
    p.add_argument("--only", type=parse_only, help="assignments to grade, e.g. 2 (default: all)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--tests-from", type=Path, metavar="REPO",
                   help="grade with REPO's tests, manifest and pytest config, not the submission's")
    p.add_argument("--workers", type=int, default=1, help="pytest-xdist workers (default 1)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop the test run after this long (an endless loop); "
                        "finished tests still count")
    p.add_argument("--class", dest="whole_class", action="store_true",
                   help="DIR holds one submission per subfolder (named after the student): grade "
                        "each with --tests-from (default: the repository around cwd)")
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="with --class: write student, points per assignment, total to FILE")
    p.add_argument("--gradescope", type=Path, metavar="PATH",
                   help="write Gradescope's results.json: to PATH, or with --class to "
                        "PATH/STUDENT/results.json")

    p = actions.add_parser("test", help="run one assignment's tests with pytest's full output")
    p.add_argument("--dir", type=Path, help="tree to test (default: the one around cwd)")
    p.add_argument("number", type=parse_assignment_number, help="assignment, e.g. 2")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="passed on to pytest, e.g. -x -k softmax")

    p = actions.add_parser("check", help="validate the solution markers and list the regions")
    p.add_argument("--source", type=Path, help="instructor repository (default: the one around cwd)")

    p = actions.add_parser("verify", help="release each assignment alone and check the tests agree")
    p.add_argument("--source", type=Path, help="instructor repository (default: the one around cwd)")
    p.add_argument("--only", type=parse_only, help="assignments to verify (default: all)")
    p.add_argument("--jobs", type=int, help="test runs in parallel (default: up to 2)")


def run(args: argparse.Namespace) -> int:
    """0: done (grade: every test passed); 1: grade lost points / verify found problems; 2: error."""
    try:
        return _ACTIONS[args.assignments_action](args)
    except AssignmentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _repository(path) -> Path:
    return path.resolve() if path else find_repository()


def _run_release(args) -> int:
    result = release(_repository(args.source), args.out, args.only, check=not args.no_check)
    stubbed = ", ".join(f"a{n}: {k} region{'s' * (k != 1)}" for n, k in result.stubbed.items())
    withheld = sum(result.withheld.values())
    print(f"released {result.files} files to {result.out} ({stubbed} stubbed"
          f"{f'; {withheld} withheld function' + 's' * (withheld != 1) if withheld else ''})")
    return 0


def _run_grade(args) -> int:
    if args.whole_class:
        return _grade_class(args)
    if args.csv:
        raise AssignmentError("--csv needs --class: it writes a row per student of a class")
    report = grade(args.dir, args.only, workers=args.workers, tests_from=args.tests_from,
                   timeout=args.timeout)
    if args.gradescope:
        write_gradescope(report, args.gradescope)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if all_passed(report) else 1


def _grade_class(args) -> int:
    """0 when every submission was graded (whatever its points), 1 when one could not be."""
    if args.dir is None:
        raise AssignmentError("grade --class needs the folder of submissions")
    tests_from = _repository(args.tests_from)
    numbers = load_manifest(tests_from).select(args.only)
    results = grade_class(args.dir, tests_from, args.only, workers=args.workers,
                          timeout=args.timeout,
                          progress=lambda name: print(f"grading {name}", file=sys.stderr, flush=True))
    for result in results:
        if args.gradescope and result["report"]:
            write_gradescope(result["report"], args.gradescope / result["student"] / "results.json")
    if args.csv:
        write_csv(results, numbers, args.csv)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_class(results, numbers))
    return 0 if all(result["report"] for result in results) else 1


def _run_test(args) -> int:
    root = _repository(args.dir)
    manifest = load_manifest(root)
    with graded_environment(root, manifest.select([args.number])) as (env, _):
        return subprocess.run(pytest_command(manifest, args.pytest_args), cwd=root, env=env).returncode


def _run_check(args) -> int:
    source = _repository(args.source)
    manifest = load_manifest(source)
    found = scan_repository(source, manifest)
    for region in (r for _, regions in sorted(found.items()) for r in regions):
        print(f"{region.location}: a{region.number}: {region.what or '(no description)'}")
    withheld, _ = find_withheld(source, manifest, repo_files(source))   # valid: scanned above
    for body in sorted((w for bodies in withheld.values() for w in bodies),
                       key=lambda w: (w.path, w.begin)):
        print(f"{body.location}: a{body.number}: withholds {body.what}")
    for warning in coverage_warnings(found, manifest):
        print(f"warning: {warning}", file=sys.stderr)
    total, n_withheld = sum(len(r) for r in found.values()), sum(map(len, withheld.values()))
    print(f"{total} solution region{'s' * (total != 1)} in {len(found)} "
          f"file{'s' * (len(found) != 1)}, {n_withheld} withheld function"
          f"{'s' * (n_withheld != 1)}; markers valid")
    return 0


def _run_verify(args) -> int:
    problems = verify_round_trip(_repository(args.source), args.only, jobs=args.jobs)
    print(f"round trip: {f'{len(problems)} problem(s)' if problems else 'ok'}",
          *(f"  PROBLEM {problem}" for problem in problems), sep="\n")
    return 1 if problems else 0


_ACTIONS = {"release": _run_release, "grade": _run_grade, "test": _run_test,
            "check": _run_check, "verify": _run_verify}
