"""The course tooling's grading: a submission, a class (CSV, Gradescope), the CLI subcommands,
a plain pytest in a student copy. Uses tests/assignments_fixtures/toyrepo like test_assignments.py."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from minillm.course import (allocate_points, format_report, grade, load_manifest, release,
                            run_tests, score_run)
from minillm.course.grade import graded_environment, run_with_timeout
from minillm.course.gradebook import write_gradescope

from assignments_fixtures.course_helpers import FIXTURE, REPO, copy_fixture, run_cli
from assignments_fixtures.course_helpers import toy  # noqa: F401  (a fixture)

nbformat = pytest.importorskip("nbformat")


# ---------------------------------------------------------------------------- grading
def test_grading_imports_the_graded_tree_not_the_installed_package(tmp_path):
    """minillm is installed in editable mode from the main checkout, and its finder maps
    minillm.kernels to that checkout's kernels/; a graded copy must use its own."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in ("minillm", "kernels"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    with graded_environment(tmp_path, []) as (env, _):
        found = subprocess.run(
            [sys.executable, "-c", "import minillm, minillm.kernels as k; print(minillm.__file__); "
                                   "print(k.__file__)"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert found == [str(tmp_path.resolve() / "minillm/__init__.py"),
                     str(tmp_path.resolve() / "kernels/__init__.py")]


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
def test_a_timed_out_run_is_stopped_with_the_processes_it_started(tmp_path):
    child = ("import subprocess, sys, time\n"
             "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
             "print(helper.pid, flush=True)\n"
             "time.sleep(60)\n")
    started = time.monotonic()
    output, _, timed_out = run_with_timeout([sys.executable, "-c", child], tmp_path,
                                            dict(os.environ), timeout=2)
    assert timed_out and time.monotonic() - started < 30
    helper = int(output.split()[0])
    for _ in range(50):   # the helper was killed with its group
        if not is_running(helper):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {helper} outlived the timeout")


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")   # a killed process nobody has reaped yet is a zombie
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_points_split_per_test_per_prefix_and_evenly(tmp_path):
    manifest = load_manifest(FIXTURE)
    kernel_tests = ["tests/check_kernel.py::test_norm_of_ones",
                    "tests/check_kernel.py::test_sum_of_squares_matches_numpy[1]",
                    "tests/check_kernel.py::test_sum_of_squares_matches_numpy[2]"]
    assert allocate_points(manifest.assignments[2], kernel_tests) == {
        kernel_tests[0]: 2.0, kernel_tests[1]: 2.0, kernel_tests[2]: 2.0}
    assert allocate_points(manifest.assignments[3], ["a", "b"]) == {"a": 1.0, "b": 1.0}
    (tmp_path / "assignments").mkdir()   # a folder prefix, with or without its trailing slash
    (tmp_path / "assignments/assignments.toml").write_text(
        '[assignments.a1]\nname = "kernels"\npoints = 6\n'
        'test_points = {"tests/kernels/" = 4}\n', encoding="utf-8")
    tests = ["tests/kernels/test_a.py::t", "tests/kernels_b.py::t"]
    folder = load_manifest(tmp_path).assignments[1]
    assert allocate_points(folder, tests) == {tests[0]: 4.0, tests[1]: 2.0}


def test_a_stub_reached_in_numba_threads_is_not_implemented_and_shown(tmp_path):
    """numba reports an exception raised in a parallel region as a SystemError whose cause is
    the stub's NotImplementedError: graded as not implemented, with the stub's message."""
    (tmp_path / "assignments").mkdir()
    (tmp_path / "assignments/assignments.toml").write_text(
        '[assignments.a1]\nname = "kernel"\nfiles = []\n', encoding="utf-8")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests/test_kernel.py").write_text(textwrap.dedent('''\
        import pytest


        @pytest.mark.assignment(1)
        def test_parallel_kernel():
            try:
                raise NotImplementedError("Assignment 1 (kernel): implement the step")
            except NotImplementedError as stub:
                raise SystemError("kernel returned a result with an exception set") from stub
        '''), encoding="utf-8")
    run = run_tests(tmp_path, [1])
    assert run["tests"]["tests/test_kernel.py::test_parallel_kernel"] == {
        "assignment": 1, "uses": [], "outcome": "not_implemented",
        "message": "NotImplementedError: Assignment 1 (kernel): implement the step"}


def test_score_table_tells_not_implemented_from_wrong():
    def test(number, outcome, message=None):
        return {"assignment": number, "uses": [], "outcome": outcome, "message": message}

    run = {"tests": {
        "tests/check_kernel.py::test_norm_of_ones": test(2, "failed", "assert 1.0 == 2.0"),
        "tests/check_kernel.py::test_sum_of_squares_matches_numpy": test(
            2, "not_implemented", "NotImplementedError: Assignment 2 (kernel): ..."),
        "tests/check_streams.py::test_countdown": test(3, "passed"),
    }, "collection_errors": [], "timed_out": False}
    table = format_report(score_run(run, load_manifest(FIXTURE), [2, 3], FIXTURE))
    assert "  failed                0 / 2      tests/check_kernel.py::test_norm_of_ones" in table
    assert "  not implemented       0 / 4      tests/check_kernel.py::test_sum_of_squares" in table
    assert "  passed                1 / 1      tests/check_streams.py::test_countdown" in table
    assert table.splitlines()[-1].split()[-3:] == ["1", "/", "7"]


@pytest.fixture(scope="module")
def graded_a2_release(tmp_path_factory):
    """The CLI's --json grade of a release of assignment 2 alone (with the collection check)."""
    source = copy_fixture(tmp_path_factory.mktemp("src") / "toy")
    out = tmp_path_factory.mktemp("out") / "student"
    assert run_cli("release", "--out", out, "--only", "2", "--source", source)[0] == 0
    return run_cli("grade", out, "--json")


def test_grade_json_reports_points_and_outcomes_per_test(graded_a2_release):
    code, stdout = graded_a2_release
    report = json.loads(stdout)
    assert code == 1     # points were lost
    assert set(report) == {"schema", "root", "earned", "possible", "assignments", "collection_errors",
                           "timed_out"}
    assert report["timed_out"] is False
    assert (report["earned"], report["possible"]) == (12.0, 18.0)
    by_number = {a["assignment"]: a for a in report["assignments"]}
    assert {n: (a["earned"], a["possible"]) for n, a in by_number.items()} == \
        {1: (10.0, 10.0), 2: (0.0, 6.0), 3: (2.0, 2.0)}
    kernel = by_number[2]
    assert set(kernel) == {"assignment", "tag", "name", "title", "earned", "possible", "counts",
                           "errors", "tests"}
    assert kernel["counts"]["not_implemented"] == 3 and kernel["errors"] == []
    assert {t["nodeid"]: t["points"] for t in kernel["tests"]} == {
        "tests/check_kernel.py::test_norm_of_ones": 1.0,
        "tests/check_kernel.py::test_norm_of_softmax_is_at_most_one": 1.0,
        "tests/check_kernel.py::test_sum_of_squares_matches_numpy": 4.0}
    for test in kernel["tests"]:
        assert set(test) == {"nodeid", "outcome", "points", "earned", "message"}
        assert test["outcome"] == "not_implemented" and test["earned"] == 0.0
        assert test["message"].startswith("NotImplementedError: Assignment 2 (kernel)")
    assert all(t["outcome"] == "passed" for t in by_number[1]["tests"])
    assert by_number[3]["tests"][0]["nodeid"] == "tests/check_streams.py::test_countdown"  # module mark
    assert "tests/check_mathops.py::test_empty_running_mean_is_zero" not in stdout   # unmarked


def test_grade_with_reference_tests_ignores_the_submissions_own(tmp_path, toy):
    submission = release(toy, tmp_path / "student", check=False).out
    # The student rewrites a test to pass and breaks a module so that a test file cannot import.
    (submission / "tests/check_mathops.py").write_text(
        "import pytest\n\n@pytest.mark.assignment(1)\ndef test_softmax_rows_sum_to_one():\n    pass\n")
    (submission / "toypkg/streams.py").write_text("def countdown(n:\n")
    report = grade(submission, tests_from=toy)
    scores = {s["assignment"]: s for s in report["assignments"]}
    assert {t["outcome"] for t in scores[1]["tests"]} == {"not_implemented"}
    assert len(scores[1]["tests"]) == 5
    notebook = next(t for t in scores[1]["tests"] if "check_notebook" in t["nodeid"])
    assert notebook["message"].startswith("NotImplementedError: Assignment 1")   # known by name
    assert scores[3]["earned"] == 0 and scores[3]["tests"] == []
    assert scores[3]["errors"][0].startswith("tests/check_streams.py could not be collected:")
    assert scores[1]["errors"] == [] and scores[2]["errors"] == []
    assert report["root"] == str(submission.resolve())


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """A class of three graded with the CLI: one complete submission, one as released (all
    stubbed), one with assignment 1's module done; the CSV and results.json it wrote."""
    source = copy_fixture(tmp_path_factory.mktemp("src") / "toy")
    submissions, out = tmp_path_factory.mktemp("submissions"), tmp_path_factory.mktemp("grades")
    copy_fixture(submissions / "ada")
    release(source, submissions / "bob", check=False)
    partial = release(source, submissions / "cy", check=False).out
    shutil.copy(source / "toypkg/mathops.py", partial / "toypkg/mathops.py")   # the notebook stays
    code, stdout = run_cli("grade", submissions, "--class", "--tests-from", source,
                           "--csv", out / "scores.csv", "--gradescope", out / "gradescope")
    return code, stdout, out


def test_grading_a_class_writes_a_csv_row_per_student(graded_class):
    code, stdout, out = graded_class
    assert code == 0                   # every submission was graded
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows == [["student", "a1", "a2", "a3", "total", "note"],
                    ["ada", "10", "6", "2", "18", ""],
                    ["bob", "0", "0", "0", "0", ""],
                    ["cy", "8", "0", "0", "8", ""]]
    assert stdout.splitlines()[-1].split() == ["out", "of", "10", "6", "2", "18"]


def test_grading_a_class_writes_gradescope_results_per_student(graded_class):
    _, _, out = graded_class
    results = {student: json.loads((out / "gradescope" / student / "results.json").read_text())
               for student in ("ada", "bob", "cy")}
    for student, score in {"ada": 18, "bob": 0, "cy": 8}.items():
        tests = results[student]["tests"]
        assert results[student]["score"] == score == sum(t["score"] for t in tests)
        assert sum(t["max_score"] for t in tests) == 18
        for test in tests:
            assert set(test) == {"name", "score", "max_score", "status", "output"}
            assert test["status"] == ("passed" if test["score"] == test["max_score"] else "failed")
    kernel = next(t for t in results["bob"]["tests"]
                  if t["name"].endswith("check_kernel.py::test_sum_of_squares_matches_numpy"))
    assert kernel == {
        "name": "Assignment 2 (kernel): tests/check_kernel.py::test_sum_of_squares_matches_numpy",
        "score": 0.0, "max_score": 4.0, "status": "failed",
        "output": "not implemented: NotImplementedError: Assignment 2 (kernel): implement the "
                  "square-and-accumulate step — see assignments/02-kernel.md"}
    notebook = next(t for t in results["cy"]["tests"] if "check_notebook" in t["name"])
    assert notebook["status"] == "failed" and notebook["output"].startswith("not implemented")


def test_gradescope_results_of_a_timed_out_run(tmp_path, toy):
    """One submission's results.json (what a Gradescope autograder writes): a run stopped by
    the timeout says so, and the test it was running earns nothing."""
    def test(number, outcome, message=None):
        return {"assignment": number, "uses": [], "outcome": outcome, "message": message}

    run = {"tests": {"tests/check_streams.py::test_countdown": test(3, "error", "stopped by the timeout"),
                     "tests/check_kernel.py::test_norm_of_ones": test(2, "passed")},
           "collection_errors": [], "timed_out": True}
    report = score_run(run, load_manifest(toy), [2, 3], toy)
    write_gradescope(report, tmp_path / "results/results.json")
    results = json.loads((tmp_path / "results/results.json").read_text(encoding="utf-8"))
    assert results["score"] == 6.0 and results["output"].startswith("The test run was stopped")
    assert results["tests"][0] == {"name": "Assignment 2 (kernel): tests/check_kernel.py::"
                                           "test_norm_of_ones", "score": 6.0, "max_score": 6.0,
                                   "status": "passed", "output": "passed"}
    assert results["tests"][1] == {"name": "Assignment 3 (generators): tests/check_streams.py::"
                                           "test_countdown", "score": 0.0, "max_score": 1.0,
                                   "status": "failed", "output": "error: stopped by the timeout"}


def test_a_class_submission_whose_tests_cannot_import_scores_zero_for_them(tmp_path, toy):
    submissions = tmp_path / "submissions"
    broken = copy_fixture(submissions / "dee")
    (broken / "kernels/fast.py").write_text("def sum_of_squares(x:\n")
    code, _ = run_cli("grade", submissions, "--class", "--tests-from", toy, "--only", "2",
                      "--gradescope", tmp_path / "gs", "--csv", tmp_path / "scores.csv")
    results = json.loads((tmp_path / "gs/dee/results.json").read_text())
    assert code == 0 and results["score"] == 0
    assert results["tests"] == [{
        "name": "Assignment 2 (kernel): tests that could not run", "score": 0.0, "max_score": 6.0,
        "status": "failed", "output": results["tests"][0]["output"]}]
    assert results["tests"][0]["output"].startswith("tests/check_kernel.py could not be collected:")
    assert "could not be imported" in results["output"]
    row = (tmp_path / "scores.csv").read_text(encoding="utf-8").splitlines()[1]
    assert row.startswith("dee,0,0,tests/check_kernel.py could not be collected:")


def test_check_subcommand_lists_regions(toy, monkeypatch):
    monkeypatch.chdir(toy / "toypkg")   # the repository is found above the working directory
    code, stdout = run_cli("check")
    assert code == 0
    assert "toypkg/mathops.py:7: a1: numerically stable softmax" in stdout
    assert "notebooks/demo.ipynb[cell 4]:3: a1: doubling" in stdout
    assert stdout.splitlines()[-1] == "8 solution regions in 4 files, 0 withheld functions; markers valid"


def test_test_subcommand_runs_one_assignment_with_pytest_output(toy, capfd):
    code, _ = run_cli("test", "--dir", toy, "3", "-v")
    output = capfd.readouterr().out
    assert code == 0
    assert "tests/check_streams.py::test_countdown PASSED" in output
    assert "check_mathops" not in output   # other assignments' tests are deselected


def test_a_plain_pytest_run_in_a_student_copy_summarises_the_stubs(tmp_path):
    """tests/conftest.py: a failure at a stub is shown as its message and counted as not
    implemented, with a line per assignment saying what to run; real failures stay failures."""
    (tmp_path / "tests").mkdir()
    shutil.copy(REPO / "tests/conftest.py", tmp_path / "tests/conftest.py")
    (tmp_path / "tests/test_student.py").write_text(textwrap.dedent('''\
        import pytest


        def stub(number, what):
            raise NotImplementedError(f"Assignment {number} (bpe): implement {what} — see x.md")


        @pytest.mark.parametrize("what", ["the merge", "the loop"])
        def test_stubbed(what):
            stub(1, what)


        def test_withheld():
            raise NotImplementedError("Assignment 3 (gpt2-block): _gelu_flat in kernels/fused_cpu.py "
                                      "is withheld from the student copy because it computes ...")


        def test_wrong():
            assert 1 + 1 == 3


        def test_right():
            pass
        '''), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
                           "tests"], cwd=tmp_path, capture_output=True, text=True)
    output = proc.stdout
    assert proc.returncode == 1
    assert ("2 tests fail because assignment a1 (bpe)'s stubs are not implemented yet: run "
            "`python -m minillm assignments test 1`") in output
    assert ("1 test reaches code withheld from the student copy because it computes what a3 "
            "(gpt2-block) asks for: it cannot pass in this copy") in output
    assert output.rstrip().splitlines()[-1].startswith("=") and \
        "1 failed, 1 passed, 3 not implemented" in output.rstrip().splitlines()[-1]
    assert "def stub(number, what):" not in output      # no traceback through a stub
    assert "FAILED tests/test_student.py::test_wrong" in output
    assert "FAILED tests/test_student.py::test_stubbed" not in output
