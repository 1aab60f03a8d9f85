"""Copied as `sitecustomize.py` into a helper folder at the head of a grading run's PYTHONPATH,
so that every Python process of the run (pytest, xdist workers, subprocesses) imports it first.

- It maps the packages that pyproject's package-dir relocates (minillm.kernels -> kernels/) to
  the tree being graded, ahead of an editable install that maps them elsewhere.
- Loaded by pytest as a plugin too (PYTEST_PLUGINS), it keeps the tests marked
  `assignment(N)` of the selected assignments and appends one JSON line per test phase to
  MINILLM_GRADE_RESULTS, so a run stopped by the grader's timeout keeps what it finished.

It imports nothing from minillm: the graded tree's copy of minillm/course must not decide its grade.
"""
import importlib.util
import json
import os
import re
import sys

_STUB = re.compile(r"NotImplementedError: Assignment \d+ \(.*")
_PACKAGES = json.loads(os.environ.get("MINILLM_GRADE_PACKAGES", "{}"))
_WRITER = []   # non-empty in the process that writes the results (not in an xdist worker)


class _GradedTreeFinder:
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        directory = _PACKAGES.get(fullname)
        if directory is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory])


sys.meta_path.insert(0, _GradedTreeFinder)


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        _WRITER.append(True)


def _write(record):
    if _WRITER:
        with open(os.environ["MINILLM_GRADE_RESULTS"], "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def pytest_collection_modifyitems(config, items):
    selected = json.loads(os.environ["MINILLM_GRADE_SELECT"])
    keep = []
    for item in items:
        marker = item.get_closest_marker("assignment")
        if marker is not None and marker.args and marker.args[0] in selected:
            item.user_properties += [("assignment", marker.args[0]),
                                     ("uses", list(marker.kwargs.get("uses", ())))]
            keep.append(item)
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def pytest_runtest_logreport(report):
    properties = dict(report.user_properties)
    if "assignment" not in properties:
        return
    message = None
    if report.failed:
        # A stub reached in numba's parallel threads surfaces as a SystemError caused by it, one
        # in a notebook kernel by its name only: the text of the report shows it either way.
        stub = _STUB.search(report.longreprtext)
        crash = getattr(report.longrepr, "reprcrash", None)
        outcome = "not_implemented" if stub else "failed" if report.when == "call" else "error"
        message = stub[0] if stub else crash.message if crash else report.longreprtext.strip()[-300:]
    elif report.skipped:
        outcome = "skipped"
        message = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else None
    elif report.when in ("setup", "call"):
        outcome = "started" if report.when == "setup" else "passed"
    else:
        return
    _write({"nodeid": report.nodeid, "outcome": outcome, "message": message and message[:300],
            **properties})


def pytest_collectreport(report):
    if report.failed:
        _write({"collection_error": report.nodeid, "message": report.longreprtext.strip()[-1500:]})
