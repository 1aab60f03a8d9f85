"""The assignment manifest (assignments/assignments.toml), and which files a repository copy holds."""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

MANIFEST_PATH = "assignments/assignments.toml"
_ASSIGNMENT_KEYS = {"name", "title", "handout", "files", "points", "test_points", "withhold"}
# Never copied, even from a tree whose .gitignore does not say so.
_NEVER_COPIED = ["__pycache__/", "*.py[co]", "*.so", ".venv/", "venv/", ".ipynb_checkpoints/",
                 ".pytest_cache/", "*.egg-info/", ".DS_Store"]


class AssignmentError(Exception):
    """Problems the instructor (or student) must fix, one per line, each naming file:line if known."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Assignment:
    number: int
    name: str                       # short, goes into stub messages: "Assignment 2 (attention)"
    title: str
    handout: str | None
    files: tuple[str, ...]          # where its solution regions live
    points: float | None            # total; None: one point per test
    test_points: dict = field(default_factory=dict, hash=False)  # node-id prefix -> points
    # "path/to/file.py::qualname": functions outside the regions that compute what this
    # assignment asks for; its release stubs their bodies too
    withhold: tuple[str, ...] = ()

    def stub_message(self, what: str) -> str:
        return f"Assignment {self.number} ({self.name}): implement {what or 'this'}{self._see()}"

    def withheld_message(self, entry: str) -> str:
        path, _, qualname = entry.partition("::")
        return (f"Assignment {self.number} ({self.name}): {qualname} in {path} is withheld from "
                f"the student copy because it computes what this assignment asks for{self._see()}")

    def _see(self) -> str:
        return f" — see {self.handout}" if self.handout else ""


@dataclass(frozen=True)
class Manifest:
    assignments: dict[int, Assignment]
    exclude: tuple[str, ...] = ()       # paths never copied into a release
    test_paths: tuple[str, ...] = ("tests",)
    pytest_args: tuple[str, ...] = ()   # added to every pytest run, e.g. ("-p", "no:randomly")

    def select(self, only=None) -> list[int]:
        """The assignment numbers `only` names (all when empty), checked against the manifest."""
        unknown = sorted(set(only or ()) - set(self.assignments))
        if unknown:
            known = ", ".join(f"a{n}" for n in sorted(self.assignments))
            raise AssignmentError(f"no assignment {', '.join(f'a{n}' for n in unknown)} in the "
                                  f"manifest (it has {known})")
        return sorted(set(only or self.assignments))


def parse_assignment_number(value) -> int:
    """2, "2", "a2" or "A2" -> 2."""
    match = re.fullmatch(r"[aA]?([1-9]\d*)", str(value).strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not an assignment number: {value!r} (expected e.g. 2 or a2)")
    return int(match[1])


def parse_only(text: str) -> list[int]:
    """"1,3" or "a1,a3" -> [1, 3]; the type of every --only option."""
    return [parse_assignment_number(part) for part in text.split(",") if part.strip()]


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise AssignmentError(f"{path}: not valid TOML: {exc}") from None


def load_manifest(repo) -> Manifest:
    path = Path(repo) / MANIFEST_PATH
    if not path.is_file():
        raise AssignmentError(f"{path}: no assignment manifest; expected {MANIFEST_PATH} in {repo}")
    data = read_toml(path)
    problems, assignments = [], {}
    for tag, entry in data.get("assignments", {}).items():
        where = f"{MANIFEST_PATH} [assignments.{tag}]"
        unknown = sorted(set(entry) - _ASSIGNMENT_KEYS)
        if not re.fullmatch(r"a[1-9]\d*", tag) or unknown or not entry.get("name"):
            problems.append(f"{where}: keys are a1, a2, ...; each needs a short `name` and may "
                            f"have {sorted(_ASSIGNMENT_KEYS - {'name'})}")
            continue
        withhold = entry.get("withhold", [])
        if not isinstance(withhold, list) or not all(isinstance(e, str) for e in withhold):
            problems.append(f"{where}: withhold is a list of \"path/to/file.py::function\" "
                            f"strings, got {withhold!r}")
            continue
        number = int(tag[1:])
        assignments[number] = Assignment(
            number, entry["name"], entry.get("title", entry["name"]), entry.get("handout"),
            tuple(entry.get("files", ())), entry.get("points"),
            {prefix.rstrip("/"): points for prefix, points in entry.get("test_points", {}).items()},
            tuple(entry.get("withhold", ())))
    if problems or not assignments:
        raise AssignmentError(problems or f"{MANIFEST_PATH}: defines no [assignments.aN] tables")
    grading = data.get("grading", {})
    return Manifest(assignments, tuple(data.get("release", {}).get("exclude", ())),
                    tuple(grading.get("test_paths", ("tests",))), tuple(grading.get("pytest_args", ())))


def find_repository(start=None) -> Path:
    """The nearest directory at or above `start` (default: cwd) holding the assignment manifest."""
    start = Path(start or Path.cwd()).resolve()
    for candidate in (start, *start.parents):
        if (candidate / MANIFEST_PATH).is_file():
            return candidate
    raise AssignmentError(f"no {MANIFEST_PATH} in {start} or above; pass the repository explicitly")


def under(rel: str, prefixes) -> bool:
    return any(rel == p.rstrip("/") or rel.startswith(p.rstrip("/") + "/") for p in prefixes)


def repo_files(root: Path) -> list[str]:
    """Repository-relative paths of the files a copy of `root` holds: what git tracks plus the
    untracked files .gitignore does not exclude (so a new module not yet added is not left out).
    A tree that is not a git checkout is listed as git would list it after `git init`."""
    root = Path(root)
    with tempfile.TemporaryDirectory(prefix="minillm-files-") as scratch:
        git = ["git", "-C", str(root)]
        try:
            if not (root / ".git").exists():
                subprocess.run(["git", "init", "-q", scratch], check=True, capture_output=True)
                git += ["--git-dir", f"{scratch}/.git", "--work-tree", str(root)]
            listing = subprocess.run(
                [*git, "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                 *(f"--exclude={pattern}" for pattern in _NEVER_COPIED)],
                check=True, capture_output=True).stdout.decode("utf-8", "surrogateescape")
        except (OSError, subprocess.CalledProcessError) as exc:
            raise AssignmentError(f"{root}: cannot list the files with git: {exc}") from None
    # A tracked file deleted from the working tree, or a submodule, is not copied.
    return sorted(rel for rel in set(listing.split("\0"))
                  if rel and ((root / rel).is_file() or (root / rel).is_symlink()))
