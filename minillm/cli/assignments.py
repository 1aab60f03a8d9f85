"""`minillm assignments ACTION`: release, grade, test, check, verify."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from minillm.course.grading import format_report, grade
from minillm.course.manifest import (AssignmentError, find_repository, load_manifest,
                                         parse_assignment_number, parse_only)
from minillm.course.markers import coverage_warnings, scan_repository
from minillm.course.releasing import release
from minillm.course.roundtrip import verify_round_trip
from minillm.course.runner import _pytest_command, _test_environment


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="assignments_action", required=True, metavar="ACTION")

    p = actions.add_parser("release", help="write the student copy, the chosen solutions stubbed")
    p.add_argument("--out", required=True, type=Path, help="directory to create (must be empty)")
    p.add_argument("--only", type=parse_only, help="assignments to stub, e.g. 1,3 (default: all)")
    p.add_argument("--source", type=Path, help="instructor repository (default: the one around cwd)")
    p.add_argument("--no-check", action="store_true",
                   help="skip verifying that the copy compiles and its tests collect")

    p = actions.add_parser("grade", help="run the assignment tests and print the score table")
    p.add_argument("dir", nargs="?", type=Path, help="tree to grade (default: the one around cwd)")
    p.add_argument("--only", type=parse_only, help="assignments to grade, e.g. 2 (default: all)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--tests-from", type=Path, metavar="REPO",
                   help="grade with REPO's tests, manifest and pytest config, not the submission's")
    p.add_argument("--workers", type=int, default=1, help="pytest-xdist workers (default 1)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop the test run after this long (an endless loop); finished tests still count")

    p = actions.add_parser("test", help="run one assignment's tests with pytest's full output")
    p.add_argument("--dir", type=Path, help="tree to test (default: the one around cwd)")
    p.add_argument("number", type=parse_assignment_number, help="assignment, e.g. 2")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest, e.g. -x -k softmax")

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


def _run_release(args) -> int:
    source = args.source.resolve() if args.source else find_repository()
    result = release(source, args.out, args.only, check=not args.no_check)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    stubbed = ", ".join(f"a{n}: {k} region{'s' * (k != 1)}" for n, k in result.stubbed.items())
    print(f"released {result.files} files to {result.out} ({stubbed} stubbed)")
    return 0


def _run_grade(args) -> int:
    report = grade(args.dir, args.only, workers=args.workers, tests_from=args.tests_from,
                   timeout=args.timeout)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.all_passed else 1


def _run_test(args) -> int:
    root = args.dir.resolve() if args.dir else find_repository()
    manifest = load_manifest(root)
    numbers = manifest.select([args.number])
    with _test_environment(root, manifest, numbers) as (env, _):
        return subprocess.run(_pytest_command(manifest, args.pytest_args), cwd=root, env=env).returncode


def _run_check(args) -> int:
    source = args.source.resolve() if args.source else find_repository()
    manifest = load_manifest(source)
    found = scan_repository(source, manifest)
    for _, regions in sorted(found.items()):
        for region in regions:
            print(f"{region.location}: a{region.number}: {region.what or '(no description)'}")
    for warning in coverage_warnings(found, manifest, sorted(manifest.assignments)):
        print(f"warning: {warning}", file=sys.stderr)
    total = sum(len(r) for r in found.values())
    print(f"{total} solution region{'s' * (total != 1)} in {len(found)} "
          f"file{'s' * (len(found) != 1)}; markers valid")
    return 0


def _run_verify(args) -> int:
    source = args.source.resolve() if args.source else find_repository()
    report = verify_round_trip(source, args.only, jobs=args.jobs)
    print(report)
    return 0 if report.ok else 1


_ACTIONS = {"release": _run_release, "grade": _run_grade, "test": _run_test,
            "check": _run_check, "verify": _run_verify}
