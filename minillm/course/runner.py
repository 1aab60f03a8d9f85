"""Running an assignment's tests in a fresh pytest process that imports the graded tree."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .manifest import AssignmentError, Manifest, _read_toml, load_manifest


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# Imported first by every Python process of a grading run (PYTHONPATH puts it ahead of
# site-packages): maps the packages that pyproject's package-dir relocates (minillm.kernels ->
# kernels/) to the tree being graded, ahead of an editable install that maps them elsewhere.
_SITECUSTOMIZE = '''\
import importlib.util, json, os, sys


class _GradedTreeFinder:
    packages = json.loads(os.environ.get("MINILLM_GRADE_PACKAGES", "{}"))

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        directory = cls.packages.get(fullname)
        if directory is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory])


sys.meta_path.insert(0, _GradedTreeFinder)
'''

# A pytest plugin (loaded through PYTEST_PLUGINS, so xdist workers load it too): keeps the tests
# of the selected assignments, and records each one's assignment and outcome as JSON.
_COLLECTOR_PLUGIN = '''\
import json, os, re

import pytest

_SELECT = json.loads(os.environ["MINILLM_GRADE_SELECT"])
_RESULTS = {"tests": {}, "collection_errors": [], "exit_status": None}
_WRITER = []   # non-empty in the process that writes the results (not in an xdist worker)


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        _WRITER.append(True)


def _write():
    # Rewritten after every test, so a run stopped by the grader's timeout keeps what it did.
    if _WRITER:
        with open(os.environ["MINILLM_GRADE_RESULTS"], "w", encoding="utf-8") as f:
            json.dump(_RESULTS, f)


def _number(value):
    return int(re.fullmatch(r"[aA]?(\\d+)", str(value).strip())[1])


def _prefix_match(nodeid, prefix):
    return nodeid == prefix or (nodeid.startswith(prefix) and nodeid[len(prefix)] in ":[/")


def _assignment_of(item):
    marker = item.get_closest_marker("assignment")
    if marker is not None and (marker.args or "n" in marker.kwargs):
        number = marker.args[0] if marker.args else marker.kwargs["n"]
        uses = marker.kwargs.get("uses", ())
        uses = [uses] if isinstance(uses, (int, str)) else uses
        return _number(number), sorted(_number(u) for u in uses)
    for prefix, number in _SELECT["prefixes"]:
        if _prefix_match(item.nodeid, prefix):
            return number, []
    return None, []


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        number, uses = _assignment_of(item)
        if number in _SELECT["numbers"]:
            item.user_properties += [("minillm_assignment", number), ("minillm_uses", uses)]
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _not_implemented(exc, seen=None):
    """The NotImplementedError that exc is, or was raised from or during; None if there is none."""
    seen = seen if seen is not None else set()
    if exc is None or id(exc) in seen:
        return None
    seen.add(id(exc))
    if isinstance(exc, NotImplementedError) or getattr(exc, "ename", None) == "NotImplementedError":
        return exc   # ename: nbclient's CellExecutionError for an error raised inside a notebook
    inner = list(getattr(exc, "exceptions", ()) or ()) + [exc.__cause__, exc.__context__]
    return next((found for e in inner if (found := _not_implemented(e, seen)) is not None), None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and call.excinfo is not None:
        stub = _not_implemented(call.excinfo.value)
        # A stub reached inside numba's parallel threads surfaces as a SystemError: show the stub.
        shown = (call.excinfo.exconly() if stub is None or stub is call.excinfo.value
                 else f"NotImplementedError: {stub}")
        first_line = (shown.strip().splitlines() or [""])[0]
        report.user_properties += [("minillm_not_implemented", stub is not None),
                                   ("minillm_message", first_line[:300])]
    return report


def pytest_runtest_logreport(report):
    props = dict(report.user_properties)
    if "minillm_assignment" not in props:
        return
    record = _RESULTS["tests"].setdefault(report.nodeid, {
        "assignment": props["minillm_assignment"], "uses": list(props["minillm_uses"]),
        "outcome": None, "message": None})
    if record["outcome"] in ("failed", "not_implemented", "error"):
        return   # the first failure says most; a teardown error after it adds nothing
    if report.failed:
        record["outcome"] = ("not_implemented" if props.get("minillm_not_implemented")
                             else "failed" if report.when == "call" else "error")
        record["message"] = props.get("minillm_message") or report.longreprtext.strip()[-300:]
    elif report.skipped and record["outcome"] is None:
        record["outcome"] = "skipped"
        record["message"] = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else None
    elif report.passed and report.when == "call":
        record["outcome"] = "passed"
    if report.when != "call":   # after setup too: a test that never ends is still listed
        _write()


def pytest_collectreport(report):
    if report.failed:
        _RESULTS["collection_errors"].append(
            {"nodeid": report.nodeid, "message": report.longreprtext.strip()[-1500:]})


def pytest_sessionfinish(session, exitstatus):
    _RESULTS["exit_status"] = int(exitstatus)
    _write()
'''


def _package_dirs(root: Path) -> tuple[dict[str, str], list[str]]:
    """({package: directory} from pyproject's [tool.setuptools.package-dir], extra sys.path roots)."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return {}, []
    mapping = _read_toml(pyproject).get("tool", {}).get("setuptools", {}).get("package-dir", {})
    packages = {name: str(root / rel) for name, rel in mapping.items()
                if name and (root / rel / "__init__.py").is_file()}
    extra_roots = [str(root / mapping[""])] if "" in mapping else []
    return packages, extra_roots


@contextmanager
def _test_environment(root: Path, manifest: Manifest, numbers, *, grading: bool = True):
    """(environment for a pytest process graded in `root`, path of its results file).

    grading=False leaves the grading plugin out: pytest then sees every test, ungraded."""
    root = Path(root).resolve()
    with tempfile.TemporaryDirectory(prefix="minillm-grade-") as helper:
        Path(helper, "sitecustomize.py").write_text(_SITECUSTOMIZE, encoding="utf-8")
        Path(helper, "_minillm_grade_collector.py").write_text(_COLLECTOR_PLUGIN, encoding="utf-8")
        packages, extra_roots = _package_dirs(root)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("PYTEST_", "MINILLM_GRADE_")) and key != "PYTHONSTARTUP"}
        inherited = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
        results = Path(helper, "results.json")
        prefixes = [[prefix, n] for n in numbers for prefix in manifest.assignments[n].tests]
        env.update({
            "PYTHONPATH": os.pathsep.join([helper, str(root), *extra_roots, *inherited]),
            "MINILLM_GRADE_PACKAGES": json.dumps(packages),
            "MINILLM_GRADE_SELECT": json.dumps({"numbers": list(numbers), "prefixes": prefixes}),
            "MINILLM_GRADE_RESULTS": str(results),
        })
        if grading:
            env["PYTEST_PLUGINS"] = "_minillm_grade_collector"
        yield env, results


def _pytest_command(manifest: Manifest, extra) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *manifest.pytest_args, *extra,
            *manifest.test_paths]


def _xdist_args(workers: int) -> list[str]:
    if workers <= 1:
        return []
    try:
        import xdist  # noqa: F401
    except ModuleNotFoundError:
        return []
    return ["-n", str(workers)]


@dataclass
class RunResult:
    tests: dict[str, dict]         # nodeid -> {assignment, uses, outcome, message}
    collection_errors: list[dict]  # {nodeid, message}
    exit_status: int | None        # None when the run was stopped by the timeout
    output: str
    timed_out: bool = False


def run_tests(root, numbers, manifest: Manifest | None = None, *, workers: int = 1,
              timeout: float | None = None) -> RunResult:
    """Run the tests of assignments `numbers` in `root` (importing root's code) and collect
    outcomes. timeout: seconds for the whole run, after which it is stopped (an endless loop
    in a submission) and the tests it finished still count."""
    root = Path(root).resolve()
    manifest = manifest or load_manifest(root)
    with _test_environment(root, manifest, numbers) as (env, results):
        command = _pytest_command(manifest, ["-q", "-rN", "--continue-on-collection-errors",
                                             "--rootdir", str(root), *_xdist_args(workers)])
        output, returncode, timed_out = _run_with_timeout(command, root, env, timeout)
        if not results.is_file() and not timed_out:
            raise AssignmentError(f"pytest did not run in {root} (exit {returncode}):\n{_tail(output)}")
        data = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else \
            {"tests": {}, "collection_errors": [], "exit_status": None}
    for record in data["tests"].values():
        if record["outcome"] is None:   # interrupted before its call phase ended
            record["outcome"] = "error"
            record["message"] = record["message"] or ("stopped by the timeout" if timed_out else None)
    return RunResult(data["tests"], data["collection_errors"], data["exit_status"], output, timed_out)


def _run_with_timeout(command, cwd: Path, env, timeout) -> tuple[str, int, bool]:
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
        output, _ = proc.communicate()
        return output, proc.returncode, True

