"""The course tooling: release, grading, round trip (markers: test_assignment_markers.py).

Most tests use a copy of tests/assignments_fixtures/toyrepo, a tiny repository laid out like
minillm: a package, a relocated `kernels/` subpackage with a numba kernel, a notebook, tests."""
from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import importlib.util
import inspect
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from minillm.cli import assignments as assignments_cli
from minillm.course import (AssignmentError, allocate_points, coverage_warnings,
                            format_report, grade, load_manifest, release, run_tests,
                            scan_repository, score_run, verify_round_trip)
from minillm.course.grade import graded_environment, run_with_timeout
from minillm.course.gradebook import write_gradescope

FIXTURE = Path(__file__).parent / "assignments_fixtures" / "toyrepo"
REPO = Path(__file__).resolve().parents[1]
nbformat = pytest.importorskip("nbformat")


def copy_fixture(destination: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, destination, ignore=shutil.ignore_patterns("__pycache__")))


@pytest.fixture
def toy(tmp_path) -> Path:
    return copy_fixture(tmp_path / "toy")


@pytest.fixture(scope="module")
def released_a1(tmp_path_factory) -> Path:
    """A release of assignment 1 only, without the pytest collection check (fast)."""
    source = copy_fixture(tmp_path_factory.mktemp("src") / "toy")
    return release(source, tmp_path_factory.mktemp("out") / "student", [1], check=False).out


def run_cli(*argv) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="minillm assignments")
    assignments_cli.add_arguments(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = assignments_cli.run(parser.parse_args([str(a) for a in argv]))
    return code, out.getvalue()


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- release
def test_release_stubs_the_selected_assignment_and_keeps_the_others(released_a1):
    mathops = (released_a1 / "toypkg/mathops.py").read_text(encoding="utf-8")
    assert ('def softmax(x, axis=-1):\n    """exp(x - max) / sum(exp(x - max)) along axis."""\n'
            '    raise NotImplementedError("Assignment 1 (basics): implement numerically stable '
            'softmax — see assignments/01-basics.md")\n\n\nclass RunningMean:') in mathops
    assert ('    for value in values:\n        raise NotImplementedError("Assignment 1 (basics): '
            'implement the loop body of the prefix sum') in mathops
    assert '    def scale(x):\n        raise NotImplementedError(' in mathops
    kernel = (released_a1 / "kernels/fast.py").read_text(encoding="utf-8")
    assert "        square = x[i] * x[i]\n        total += square\n    return total" in kernel
    original = (FIXTURE / "toypkg/streams.py").read_text(encoding="utf-8")
    assert (released_a1 / "toypkg/streams.py").read_text(encoding="utf-8") == \
        "".join(line for line in original.splitlines(keepends=True) if "SOLUTION" not in line)
    for path in released_a1.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        compile(text, str(path), "exec")
        assert "### BEGIN SOLUTION" not in text, path


def test_release_notebook_cells_are_stubbed_and_outputs_dropped(released_a1):
    notebook = nbformat.read(released_a1 / "notebooks/demo.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert code[1].source == ('raise NotImplementedError("Assignment 1 (basics): implement the '
                              'probabilities of the scores — see assignments/01-basics.md")\nprobs')
    assert code[2].source.startswith('def double(x):\n    """Twice x."""\n    raise NotImplementedError(')
    assert code[0].source.startswith("%precision 3\n")


def test_release_of_a_generator_region_keeps_a_generator(tmp_path, toy):
    out = release(toy, tmp_path / "out", [3], check=False).out
    streams = import_file(out / "toypkg/streams.py", "released_streams")
    assert inspect.isgeneratorfunction(streams.countdown)
    with pytest.raises(NotImplementedError, match=r"Assignment 3 \(generators\)"):
        list(streams.countdown(2))


def test_release_copies_the_repository_files_only(tmp_path, toy):
    (toy / "debug.log").write_text("ignored by .gitignore\n")
    (toy / "toypkg/__pycache__").mkdir()
    (toy / "toypkg/__pycache__/mathops.cpython-311.pyc").write_bytes(b"\0")
    result = release(toy, tmp_path / "out", check=False)
    copied = {p.relative_to(result.out).as_posix() for p in result.out.rglob("*") if p.is_file()}
    assert "data/values.csv" in copied and "assignments/assignments.toml" in copied
    assert not {"debug.log", "secret_notes.txt"} & copied          # .gitignore, manifest exclude
    assert not any("__pycache__" in path for path in copied)
    assert result.stubbed == {1: 6, 2: 1, 3: 1} and result.files == len(copied)


def test_release_of_a_git_checkout_copies_what_git_would(tmp_path, toy):
    subprocess.run(["git", "init", "-q", str(toy)], check=True)
    subprocess.run(["git", "-C", str(toy), "add", "toypkg", "kernels", "tests", "assignments"], check=True)
    (toy / "scratch").mkdir()
    (toy / "scratch/notes.py").write_text("x = 1\n")              # ignored by .gitignore
    out = release(toy, tmp_path / "out", [2], check=False).out
    assert (out / "kernels/fast.py").is_file()
    assert (out / "notebooks/demo.ipynb").is_file()               # untracked, not ignored
    assert not (out / "scratch").exists() and not (out / ".git").exists()


def test_release_refuses_a_non_empty_output_directory(tmp_path, toy):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep.txt").write_text("mine\n")
    with pytest.raises(AssignmentError, match="already exists and is not empty"):
        release(toy, tmp_path / "out", check=False)


def test_release_reports_every_marker_problem_before_writing(tmp_path, toy):
    (toy / "toypkg/broken.py").write_text(
        "def f():\n    ### BEGIN SOLUTION a9: nothing\n    return 1\n    ### END SOLUTION\n\n"
        "def g():\n    ### BEGIN SOLUTION a1: unlisted file\n    return 2\n    ### END SOLUTION\n")
    (toy / "toypkg/crossing.py").write_text(
        "def h(x):\n    ### BEGIN SOLUTION a1: the if\n    if x:\n        return 1\n"
        "    ### END SOLUTION\n    else:\n        return 2\n")
    with pytest.raises(AssignmentError) as error:
        release(toy, tmp_path / "out", check=False)
    assert error.value.problems == [
        "toypkg/broken.py:2: BEGIN SOLUTION needs a tag of the manifest (a1, a2, a3), got 'a9'",
        "toypkg/crossing.py:1: does not compile with its regions stubbed; a region holds whole "
        "statements",
        "toypkg/broken.py:7: a1 region in a file that [assignments.a1] files in "
        "assignments/assignments.toml does not list",
        "toypkg/crossing.py:2: a1 region in a file that [assignments.a1] files in "
        "assignments/assignments.toml does not list"]
    assert not (tmp_path / "out").exists()


def test_release_refuses_an_assignment_without_regions(tmp_path, toy):
    with open(toy / "assignments/assignments.toml", "a", encoding="utf-8") as f:
        f.write('\n[assignments.a4]\nname = "empty"\nfiles = []\n')
    with pytest.raises(AssignmentError, match="a4: no solution region in the source"):
        release(toy, tmp_path / "out", [4], check=False)


def test_release_check_refuses_a_copy_whose_tests_do_not_collect(tmp_path, toy):
    """A stub that runs at import (here in a class body) breaks the release's tests."""
    mathops = toy / "toypkg/mathops.py"
    mathops.write_text(mathops.read_text(encoding="utf-8") + (
        "\n\nclass Table:\n    ### BEGIN SOLUTION a1: the table size\n    size = 3\n"
        "    ### END SOLUTION\n"), encoding="utf-8")
    with pytest.raises(AssignmentError, match="pytest --collect-only fails"):
        release(toy, tmp_path / "out", [1])


# ---------------------------------------------------------------------------- withheld functions
SHORTCUTS = textwrap.dedent('''\
    """Code that computes what assignment 1 asks for, outside its regions."""
    import numpy as np
    from numba import njit


    def softmax_reference(x):
        """The same softmax, written another way."""
        # the shift keeps exp finite
        weights = np.exp(x - x.max(axis=-1, keepdims=True))
        return weights / weights.sum(axis=-1, keepdims=True)


    class Reference:
        def mean(self, values):
            return sum(values) / len(values)

        def countdown(self, n):
            yield from range(n, 0, -1)


    @njit(cache=False)
    def total_of_squares(x):
        total = 0.0
        for value in x:
            total += value * value
        return total
    ''')


def add_withheld(toy: Path, entries: dict[int, list[str]]) -> None:
    """toypkg/shortcuts.py, and withhold lists for the toy's assignments."""
    (toy / "toypkg/shortcuts.py").write_text(SHORTCUTS, encoding="utf-8")
    manifest = (toy / "assignments/assignments.toml").read_text(encoding="utf-8")
    for number, listed in entries.items():
        header = f'name = "{load_manifest(toy).assignments[number].name}"\n'
        manifest = manifest.replace(header, header + f"withhold = {json.dumps(listed)}\n", 1)
    (toy / "assignments/assignments.toml").write_text(manifest, encoding="utf-8")


def test_release_stubs_the_withheld_functions_of_the_selected_assignments(tmp_path, toy):
    add_withheld(toy, {1: ["toypkg/shortcuts.py::softmax_reference",
                           "toypkg/shortcuts.py::Reference.mean",
                           "toypkg/shortcuts.py::Reference.countdown",
                           "toypkg/shortcuts.py::total_of_squares"]})
    result = release(toy, tmp_path / "out", [1], check=False)
    assert result.withheld == {1: 4}
    released = (result.out / "toypkg/shortcuts.py").read_text(encoding="utf-8")
    assert ('def softmax_reference(x):\n    """The same softmax, written another way."""\n'
            '    raise NotImplementedError("Assignment 1 (basics): softmax_reference in '
            'toypkg/shortcuts.py is withheld from the student copy because it computes what this '
            'assignment asks for — see assignments/01-basics.md")\n\n\nclass Reference:') in released
    assert "shift keeps" not in released and "value * value" not in released
    shortcuts = import_file(result.out / "toypkg/shortcuts.py", "released_shortcuts")
    for call in (lambda: shortcuts.softmax_reference(np.zeros(3)),
                 lambda: shortcuts.Reference().mean([1.0]),
                 lambda: list(shortcuts.Reference().countdown(2)),     # still a generator
                 lambda: shortcuts.total_of_squares(np.ones(3))):      # compiled by numba
        with pytest.raises(NotImplementedError, match=r"^Assignment 1 \(basics\): .* is withheld"):
            call()
    # Another assignment's release leaves them alone.
    other = release(toy, tmp_path / "a2", [2], check=False)
    assert (other.out / "toypkg/shortcuts.py").read_text(encoding="utf-8") == SHORTCUTS


def test_withheld_entries_that_name_nothing_are_errors(tmp_path, toy):
    add_withheld(toy, {1: ["toypkg/shortcuts.py::softmax_refrence", "toypkg/shortcuts.py::Reference",
                           "toypkg/missing.py::f", "toypkg/shortcuts.py"],
                       2: ["toypkg/shortcuts.py::Reference.median"]})
    with pytest.raises(AssignmentError) as error:
        release(toy, tmp_path / "out", [2], check=False)
    where = "assignments/assignments.toml [assignments.a{}] withhold"
    assert error.value.problems == [
        f"{where.format(1)} 'toypkg/shortcuts.py::softmax_refrence': toypkg/shortcuts.py defines "
        "no softmax_refrence (looked for 'softmax_refrence')",
        f"{where.format(1)} 'toypkg/shortcuts.py::Reference': Reference is a class; withhold its "
        "methods (Class.method)",
        f"{where.format(1)} 'toypkg/missing.py::f': toypkg/missing.py is not a file of the release",
        f"{where.format(1)} 'toypkg/shortcuts.py': expected 'path/to/file.py::function' or "
        "'path/to/file.py::Class.method'",
        f"{where.format(2)} 'toypkg/shortcuts.py::Reference.median': toypkg/shortcuts.py defines "
        "no Reference.median (looked for 'median')"]
    assert not (tmp_path / "out").exists()
    code, _ = run_cli("check", "--source", toy)
    assert code == 2                                       # `check` validates the entries too


def test_a_withheld_function_holding_a_stubbed_region_is_left_to_the_region(tmp_path, toy):
    """softmax holds an a1 region: released with a1 the student sees what to implement; released
    for a2 alone (which withholds it) the function is withheld, its region's markers gone."""
    add_withheld(toy, {2: ["toypkg/mathops.py::softmax"]})
    both = release(toy, tmp_path / "both", [1, 2], check=False)
    mathops = (both.out / "toypkg/mathops.py").read_text(encoding="utf-8")
    assert "implement numerically stable softmax" in mathops and "withheld" not in mathops
    assert both.withheld == {1: 0, 2: 0}
    alone = release(toy, tmp_path / "alone", [2], check=False)
    mathops = (alone.out / "toypkg/mathops.py").read_text(encoding="utf-8")
    assert ('    """exp(x - max) / sum(exp(x - max)) along axis."""\n    raise NotImplementedError('
            '"Assignment 2 (kernel): softmax in toypkg/mathops.py is withheld') in mathops
    assert "SOLUTION" not in mathops and "weights.sum" not in mathops
    assert "self.total += value" in mathops                 # a1's other regions keep their solution


@pytest.mark.slow
def test_the_release_check_fails_a_test_that_a_shortcut_passes(toy):
    """A test of a1 passes on a1's student copy through code the release left in place, until
    the manifest withholds that code."""
    (toy / "toypkg/shortcuts.py").write_text(SHORTCUTS, encoding="utf-8")
    (toy / "tests/check_shortcut.py").write_text(textwrap.dedent('''\
        import numpy as np
        import pytest

        from toypkg.shortcuts import softmax_reference


        @pytest.mark.assignment(1)
        def test_softmax_matches_its_reference():
            x = np.array([1.0, 2.0])
            np.testing.assert_allclose(softmax_reference(x), np.exp(x) / np.exp(x).sum())
        '''))
    assert verify_round_trip(toy, [1]) == [
        "release of a1: tests/check_shortcut.py::test_softmax_matches_its_reference still passes: "
        "no a1 region covers what it checks, or it reaches code that computes a1's answer "
        "(withhold it)"]
    add_withheld(toy, {1: ["toypkg/shortcuts.py::softmax_reference"]})
    assert verify_round_trip(toy, [1]) == []


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


# ---------------------------------------------------------------------------- round trip
@pytest.mark.slow
def test_round_trip_on_the_fixture(toy):
    assert verify_round_trip(toy) == []


@pytest.mark.slow
def test_round_trip_reports_tests_that_disagree_with_the_regions(toy):
    (toy / "tests/check_more.py").write_text(textwrap.dedent('''\
        import numpy as np
        import pytest

        from toypkg.kernels.fast import norm, sum_of_squares


        @pytest.mark.assignment(2)
        def test_kernel_is_callable():
            assert callable(sum_of_squares)


        @pytest.mark.assignment(1)
        def test_norm_without_declaring_it():
            assert norm(np.ones(1)) == 1.0
        '''))
    assert verify_round_trip(toy, [2]) == [
        "release of a2: tests/check_more.py::test_kernel_is_callable still passes: "
        "no a2 region covers what it checks, or it reaches code that computes a2's answer "
        "(withhold it)",
        "release of a2: tests/check_more.py::test_norm_without_declaring_it (a1) not implemented: "
        "NotImplementedError: Assignment 2 (kernel): implement the square-and-accumulate step — "
        "see assignments/02-kernel.md; it runs a2's code: declare "
        "@pytest.mark.assignment(1, uses=[2]) or make it independent"]


# ---------------------------------------------------------------------------- the real repository
def test_the_course_manifest_is_complete():
    manifest = load_manifest(REPO)
    assert sorted(manifest.assignments) == [1, 2, 3, 4, 5, 6, 7]
    assert sum(a.points for a in manifest.assignments.values()) == 140
    for assignment in manifest.assignments.values():
        assert (REPO / assignment.handout).is_file(), assignment.handout
    assert "tests/assignments_fixtures" in manifest.exclude


def test_the_course_markers_are_valid_and_cover_every_file_of_every_assignment():
    manifest = load_manifest(REPO)
    found = scan_repository(REPO, manifest)   # raises AssignmentError listing every problem
    assert coverage_warnings(found, manifest) == []


def test_the_student_copy_stubs_every_withheld_function_and_ships_no_oracle_test(tmp_path):
    """Every function a withhold list names is a bare `raise` in the full release (its own
    withheld stub, or the stub of a region it holds), and the oracles' own tests stay out."""
    manifest = load_manifest(REPO)
    out = release(REPO, tmp_path / "student", check=False).out
    assert not (out / "tests/test_oracles.py").exists()
    entries = sorted({e for a in manifest.assignments.values() for e in a.withhold})
    assert "tests/oracles.py::naive_attention" in entries and "tests/oracles.py::naive_merges" in entries
    for entry in entries:
        path, _, qualname = entry.partition("::")
        scope = ast.parse((out / path).read_text(encoding="utf-8"))
        for name in qualname.split("."):
            scope = next(node for node in scope.body if getattr(node, "name", None) == name)
        body = scope.body[1:] if ast.get_docstring(scope) is not None else scope.body
        assert len(body) == 1 and isinstance(body[0], ast.Raise), f"{entry} keeps its body"
        assert body[0].exc.func.id == "NotImplementedError", entry
        assert body[0].exc.args[0].value.startswith("Assignment "), entry


@pytest.mark.slow
def test_the_course_round_trip():
    """Released alone, each assignment fails exactly its own tests (and those declaring
    `uses=[N]`) with NotImplementedError while every other assignment's tests pass; with the
    solutions every assignment test passes."""
    assert verify_round_trip(REPO) == []
