"""The course tooling: release, withholding, round trip (grading: test_assignments_grading.py;
markers: test_assignment_markers.py).

Most tests use a copy of tests/assignments_fixtures/toyrepo, a tiny repository laid out like
minillm: a package, a relocated `kernels/` subpackage with a numba kernel, a notebook, tests."""
from __future__ import annotations

import ast
import inspect
import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from minillm.course import (AssignmentError, coverage_warnings, load_manifest, release,
                            scan_repository, verify_round_trip)

from assignments_fixtures.course_helpers import FIXTURE, REPO, copy_fixture, import_file, run_cli
from assignments_fixtures.course_helpers import toy  # noqa: F401  (a fixture)

nbformat = pytest.importorskip("nbformat")


@pytest.fixture(scope="module")
def released_a1(tmp_path_factory) -> Path:
    """A release of assignment 1 only, without the pytest collection check (fast)."""
    source = copy_fixture(tmp_path_factory.mktemp("src") / "toy")
    return release(source, tmp_path_factory.mktemp("out") / "student", [1], check=False).out


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
