"""Course assignments: solution regions marked in the source, the student release, the grader.

Solution regions follow nbgrader's / otter-grader's `### BEGIN SOLUTION` convention, in .py
files and notebook code cells, with the assignment's tag and what to implement:

    def softmax(x, axis=-1):
        \"\"\"docstring stays\"\"\"
        ### BEGIN SOLUTION a2: numerically stable softmax
        ...the solution...
        ### END SOLUTION

`minillm assignments release` replaces each region of the chosen assignments with
`raise NotImplementedError("Assignment 2 (attention): implement numerically stable softmax — ...")`,
and the body of each function the manifest's `withhold` lists (code elsewhere that computes the
same answer) with a stub saying it is withheld; `grade` runs the tests marked `@pytest.mark.assignment(N)` in a fresh pytest process on the
graded tree and scores them with the manifest's points; `verify` checks that each assignment
released alone fails its own tests and passes the others. assignments/README.md has the rules.

Modules: manifest (assignments.toml, the files of a copy), grade (test runs, points, the
score), gradebook (a class of submissions, the CSV, Gradescope's results.json), release (regions,
withheld functions, the release, the round trip), _graded_tree (what a grading run's pytest
loads). The subcommand is minillm/cli/assignments.py.
"""
from __future__ import annotations

from .grade import all_passed, allocate_points, format_report, grade, run_tests, score_run
from .gradebook import format_class, grade_class, gradescope_results, write_csv, write_gradescope
from .manifest import (MANIFEST_PATH, Assignment, AssignmentError, Manifest, find_repository,
                       load_manifest, parse_assignment_number, parse_only, repo_files)
from .release import (Region, coverage_warnings, find_withheld, release, render, scan_repository,
                      scan_source, verify_round_trip)

__all__ = [
    "MANIFEST_PATH", "Assignment", "AssignmentError", "Manifest", "Region", "all_passed",
    "allocate_points", "coverage_warnings", "find_repository", "find_withheld", "format_class",
    "format_report", "grade", "grade_class", "gradescope_results", "load_manifest",
    "parse_assignment_number", "parse_only", "release", "render", "repo_files", "run_tests",
    "scan_repository", "scan_source", "score_run", "verify_round_trip", "write_csv",
    "write_gradescope",
]
