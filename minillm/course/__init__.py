"""Course assignments: solution regions marked in the source, the student release, and the grader.

Solution markers follow the nbgrader / otter-grader convention, in .py files and notebook code cells:

    def softmax(x, axis=-1):
        \"\"\"docstring stays\"\"\"
        ### BEGIN SOLUTION a2: numerically stable softmax
        ...the solution...
        ### END SOLUTION

Rules, checked by `minillm assignments check` and before every release (each problem names file:line):
- `aN` names an assignment of assignments/assignments.toml; the text after the colon says what to
  implement and goes into the stub's message. `### END SOLUTION` may repeat the tag.
- Both markers are comments on lines of their own, indented like the region's first statement.
  A region holds whole statements of one block, at least one: a function or method body, or part
  of a loop / if / with body inside one. Regions do not nest.
- In a .py file a region sits inside a function: module- and class-level code runs at import, so a
  stub there would break `import`. A notebook cell may hold a top-level region.
- A region containing `yield` gets a stub that keeps its function a generator, except in a
  numba-jitted function, where it is refused (numba cannot type a generator that never yields).
- In a jitted function a name bound only inside the region must not be used after it: numba
  compiles the code after the stub too and would fail with a NameError instead of raising.
- No region in a @cuda.jit kernel: a device-side raise is not reported. Mark the Python
  function that launches the kernel instead.

Release (`minillm assignments release --out DIR`): each region of a selected assignment becomes
one line at the region's indentation,
    raise NotImplementedError("Assignment 2 (attention): implement numerically stable softmax — "
                              "see assignments/02-attention.md")
(written here on two lines); regions of the other assignments keep their solution. No marker is
left in the student copy; the instructor's repository keeps them.

Grading (`minillm assignments grade DIR`) runs, in a fresh pytest process, the tests that carry
`@pytest.mark.assignment(N)` (or that the manifest lists for N) and scores them with the
manifest's points. The process imports the packages of DIR, never the installed ones.

Modules: manifest (assignments.toml), sources (which files a copy holds, reading them), markers
(finding and checking regions), releasing (the student copy), runner (a pytest process on a
graded tree), grading (points and the score table), roundtrip (verify). The subcommand is
minillm/cli/assignments.py.
"""
from __future__ import annotations

from .grading import (OUTCOMES, AssignmentScore, GradeReport, ScoredTest, allocate_points,
                    format_report, grade, score_run)
from .manifest import (MANIFEST_PATH, Assignment, AssignmentError, Manifest, find_repository,
                       load_manifest, parse_assignment_number, parse_only)
from .markers import Region, coverage_warnings, scan_repository, scan_source
from .releasing import ReleaseResult, check_release, release, render
from .roundtrip import RoundTripReport, verify_round_trip
from .runner import RunResult, run_tests
from .sources import list_repo_files, python_view

__all__ = [
    "MANIFEST_PATH", "OUTCOMES", "Assignment", "AssignmentError", "AssignmentScore", "GradeReport",
    "Manifest", "Region", "ReleaseResult", "RoundTripReport", "RunResult", "ScoredTest",
    "allocate_points", "check_release", "coverage_warnings", "find_repository",
    "format_report", "grade", "list_repo_files", "load_manifest", "parse_assignment_number",
    "parse_only", "python_view", "release", "render", "run_tests", "score_run",
    "scan_repository", "scan_source", "verify_round_trip",
]
