"""The assignment manifest (assignments/assignments.toml): what each assignment covers and how it
is graded, and the error type every part of the machinery reports problems with."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_PATH = "assignments/assignments.toml"


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
    handout: str | None             # repository-relative path of the hand-out
    files: tuple[str, ...]          # where its solution regions live
    points: float | None            # total; None: one point per test
    tests: tuple[str, ...]          # node-id prefixes graded for it besides its marked tests
    test_points: dict = field(default_factory=dict, hash=False)  # node-id prefix -> points

    @property
    def tag(self) -> str:
        return f"a{self.number}"

    def stub_message(self, what: str) -> str:
        task = f"implement {what}" if what else "implement this"
        see = f" — see {self.handout}" if self.handout else ""
        return f"Assignment {self.number} ({self.name}): {task}{see}"


@dataclass(frozen=True)
class Manifest:
    assignments: dict[int, Assignment]
    exclude: tuple[str, ...]        # paths never copied into a release (nor scanned for markers)
    test_paths: tuple[str, ...]     # where pytest looks for tests
    pytest_args: tuple[str, ...] = ()   # added to every pytest run, e.g. ("-p", "no:randomly")

    def select(self, only=None) -> list[int]:
        """The assignment numbers `only` names (all when empty), checked against the manifest."""
        if not only:
            return sorted(self.assignments)
        unknown = sorted(set(only) - set(self.assignments))
        if unknown:
            raise AssignmentError(f"no assignment {', '.join(f'a{n}' for n in unknown)} in the "
                                  f"manifest (it has {self.known_tags()})")
        return sorted(set(only))

    def known_tags(self) -> str:
        return ", ".join(f"a{n}" for n in sorted(self.assignments))


def parse_assignment_number(value) -> int:
    """2, "2", "a2" or "A2" -> 2."""
    match = re.fullmatch(r"[aA]?(\d+)", str(value).strip())
    if not match or int(match[1]) < 1:
        raise ValueError(f"not an assignment number: {value!r} (expected e.g. 2 or a2)")
    return int(match[1])


def parse_only(text: str) -> list[int]:
    """"1,3" or "a1,a3" -> [1, 3]; the type of every --only option."""
    try:
        return [parse_assignment_number(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10: pytest depends on tomli there
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise AssignmentError(f"{path}: not valid TOML: {exc}") from None


_ASSIGNMENT_KEYS = {"name", "title", "handout", "files", "points", "tests", "test_points"}


def _node_prefix(prefix: str) -> str:
    """A test node-id prefix as the matchers expect it: "tests/kernels/" names the folder."""
    return prefix.rstrip("/")


def load_manifest(repo) -> Manifest:
    path = Path(repo) / MANIFEST_PATH
    if not path.is_file():
        raise AssignmentError(f"{path}: no assignment manifest; expected {MANIFEST_PATH} in {repo}")
    data = _read_toml(path)
    problems, assignments = [], {}
    for tag, entry in data.get("assignments", {}).items():
        where = f"{MANIFEST_PATH} [assignments.{tag}]"
        if not re.fullmatch(r"a[1-9]\d*", tag):
            problems.append(f"{where}: assignment keys are a1, a2, ...")
            continue
        unknown = sorted(set(entry) - _ASSIGNMENT_KEYS)
        if unknown:
            problems.append(f"{where}: unknown keys {unknown}; allowed: {sorted(_ASSIGNMENT_KEYS)}")
        if not entry.get("name"):
            problems.append(f"{where}: needs a short `name` (it appears in every stub's message)")
        number = int(tag[1:])
        assignments[number] = Assignment(
            number=number, name=entry.get("name", tag), title=entry.get("title", entry.get("name", tag)),
            handout=entry.get("handout"), files=tuple(entry.get("files", ())),
            points=entry.get("points"), tests=tuple(map(_node_prefix, entry.get("tests", ()))),
            test_points={_node_prefix(k): v for k, v in entry.get("test_points", {}).items()})
    if not assignments and not problems:
        problems.append(f"{MANIFEST_PATH}: defines no [assignments.aN] tables")
    if problems:
        raise AssignmentError(problems)
    grading = data.get("grading", {})
    return Manifest(assignments=assignments,
                    exclude=tuple(data.get("release", {}).get("exclude", ())),
                    test_paths=tuple(grading.get("test_paths", ("tests",))),
                    pytest_args=tuple(grading.get("pytest_args", ())))


def find_repository(start=None) -> Path:
    """The nearest directory at or above `start` (default: cwd) holding the assignment manifest."""
    start = Path(start or Path.cwd()).resolve()
    for candidate in (start, *start.parents):
        if (candidate / MANIFEST_PATH).is_file():
            return candidate
    raise AssignmentError(f"no {MANIFEST_PATH} in {start} or above; pass the repository explicitly")

