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
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

MANIFEST_PATH = "assignments/assignments.toml"

# Never part of a release when the source is not a git checkout (a git checkout uses .gitignore).
_SKIPPED_DIRS = {".git", ".hg", ".venv", "venv", "__pycache__", "build", "dist", ".pytest_cache",
                 ".hypothesis", ".ipynb_checkpoints", ".mypy_cache", ".ruff_cache", ".tox",
                 ".nox", "node_modules", ".eggs"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".nbi", ".nbc", ".egg-info")

OUTCOMES = ("passed", "failed", "not_implemented", "error", "skipped")


class AssignmentError(Exception):
    """Problems the instructor (or student) must fix, one per line, each naming file:line if known."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# ================================================================================== manifest
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
            points=entry.get("points"), tests=tuple(entry.get("tests", ())),
            test_points=dict(entry.get("test_points", {})))
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


# ================================================================================== markers
_MARKER_WORDS = re.compile(r"\b(BEGIN|END)\s+SOLUTION\b", re.IGNORECASE)
_BEGIN = re.compile(r"###\s*BEGIN SOLUTION\b(?P<rest>.*)")
_END = re.compile(r"###\s*END SOLUTION\b(?P<rest>.*)")
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_SCOPES = (*_DEFINITIONS, ast.Lambda)


@dataclass
class Region:
    path: str                 # repository-relative
    cell: int | None          # notebook cell number (1-based); None in a .py file
    begin: int                # line of the opening marker, 1-based in the file or cell
    end: int                  # line of the closing marker
    number: int | None        # None when the tag is invalid (already reported)
    what: str
    indent: str
    has_yield: bool = False

    @property
    def location(self) -> str:
        return _location(self.path, self.cell, self.begin)


def _location(path: str, cell: int | None, line: int) -> str:
    return f"{path}:{line}" if cell is None else f"{path}[cell {cell}]:{line}"


def _marker_comments(source: str) -> list[tokenize.TokenInfo]:
    """Every comment token that mentions BEGIN/END SOLUTION (text in strings does not count)."""
    return [tok for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT and _MARKER_WORDS.search(tok.string)]


def scan_source(source: str, path: str, *, known=(), cell: int | None = None,
                allow_top_level: bool = False) -> tuple[list[Region], list[str]]:
    """The solution regions of one Python source (a file or a notebook cell), and its problems."""
    def at(line):
        return _location(path, cell, line)

    try:
        comments = _marker_comments(source)
    except (tokenize.TokenError, SyntaxError) as exc:
        line = exc.args[1][0] if isinstance(exc, tokenize.TokenError) else exc.lineno
        return [], [f"{at(line or 1)}: cannot be tokenized: {exc.args[0]}"]
    if not comments:
        return [], []
    regions, problems = _pair_markers(comments, path, cell, set(known), at)
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return regions, problems + [f"{at(exc.lineno or 1)}: does not parse: {exc.msg}"]
    starts = _logical_line_starts(source)
    for region in regions:
        problems += _check_region(region, tree, starts, at, allow_top_level)
    return regions, problems


def _pair_markers(comments, path, cell, known, at) -> tuple[list[Region], list[str]]:
    regions, problems, open_region = [], [], None
    for tok in comments:
        line, column = tok.start
        text = tok.string.rstrip()
        if tok.line[:column].strip():
            problems.append(f"{at(line)}: a solution marker must be on a line of its own: {text}")
            continue
        begin, end = _BEGIN.fullmatch(text), _END.fullmatch(text)
        if begin:
            if open_region is not None:
                problems.append(f"{at(line)}: BEGIN SOLUTION inside the region opened at line "
                                f"{open_region.begin}; regions cannot nest")
                continue
            number, what, problem = _parse_begin(begin["rest"], known)
            if problem:
                problems.append(f"{at(line)}: {problem}")
            open_region = Region(path, cell, line, 0, number, what, tok.line[:column])
        elif end:
            if open_region is None:
                problems.append(f"{at(line)}: END SOLUTION without a BEGIN SOLUTION before it")
                continue
            problems += _check_end(end["rest"].strip(), open_region, tok.line[:column], line, at)
            open_region.end = line
            regions.append(open_region)
            open_region = None
        else:
            problems.append(f"{at(line)}: malformed solution marker {text!r}; expected "
                            f"'### BEGIN SOLUTION aN: what to implement' or '### END SOLUTION'")
    if open_region is not None:
        problems.append(f"{at(open_region.begin)}: BEGIN SOLUTION is never closed by ### END SOLUTION")
    return [r for r in regions if r.number is not None], problems


def _parse_begin(rest: str, known) -> tuple[int | None, str, str | None]:
    """(assignment number, what to implement, problem) from the text after BEGIN SOLUTION."""
    tag, _, what = rest.partition(":")
    tag = tag.strip()
    if not re.fullmatch(r"a\d+", tag):
        return None, "", (f"BEGIN SOLUTION needs an assignment tag: "
                          f"'### BEGIN SOLUTION aN: what to implement', got tag {tag!r}")
    number = int(tag[1:])
    if number not in known:
        tags = ", ".join(f"a{n}" for n in sorted(known))
        return None, "", f"unknown assignment tag {tag!r} (the manifest defines {tags})"
    return number, what.strip(), None


def _check_end(tag: str, region: Region, indent: str, line: int, at) -> list[str]:
    problems = []
    if tag and region.number is not None and tag != f"a{region.number}":
        problems.append(f"{at(line)}: END SOLUTION {tag} closes the a{region.number} region "
                        f"opened at line {region.begin}")
    if indent != region.indent:
        problems.append(f"{at(line)}: END SOLUTION is indented differently from its BEGIN "
                        f"SOLUTION (line {region.begin})")
    return problems


def _logical_line_starts(source: str) -> dict[int, int]:
    """line -> column of the first token of every logical line (continuation lines excluded)."""
    starts, depth, at_start = {}, 0, True
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NEWLINE or (tok.type == tokenize.NL and depth == 0):
            at_start = True
            continue
        if tok.type == tokenize.NL:   # a line break inside brackets: the logical line goes on
            continue
        if tok.type in (tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
            continue
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        if at_start:
            starts[tok.start[0]] = tok.start[1]
            at_start = False
    return starts


def _statement_start(node: ast.stmt) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", ())])


def _check_region(region: Region, tree: ast.Module, starts: dict[int, int], at,
                  allow_top_level: bool) -> list[str]:
    width, inside = len(region.indent), range(region.begin + 1, region.end)
    shallow = [line for line in inside if line in starts and starts[line] < width]
    if shallow:
        return [f"{at(shallow[0])}: less indented than the BEGIN SOLUTION marker at line "
                f"{region.begin}; a region holds whole statements of a single block"]
    problems, body = [], []
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        first, last = _statement_start(node), node.end_lineno
        starts_in, ends_in = region.begin < first < region.end, region.begin < last < region.end
        # A block that ends inside the region is fine when the region is the tail of its body.
        tail_of_body = ends_in and not starts_in and _holds_statement_in(node, region)
        if starts_in != ends_in and not tail_of_body:
            problems.append(f"{at(first)}: the statement on lines {first}-{last} crosses the "
                            f"boundary of the region at line {region.begin}; regions hold whole statements")
        elif starts_in:
            body.append(node)
    if problems:
        return problems
    if not body:
        return [f"{region.location}: empty solution region (no statement between the markers)"]
    first_statement = min(body, key=_statement_start)
    if first_statement.col_offset != width:
        return [f"{region.location}: the marker is indented {width} but the region's first "
                f"statement (line {first_statement.lineno}) starts at column {first_statement.col_offset}"]
    return _check_scope(region, tree, body, allow_top_level)


def _holds_statement_in(node: ast.stmt, region: Region) -> bool:
    return any(isinstance(child, ast.stmt) and child is not node
               and region.begin < _statement_start(child) < region.end for child in ast.walk(node))


def _enclosing_scope(tree: ast.Module, region: Region):
    """The innermost function or class whose body holds the region, or None at module level."""
    holders = [node for node in ast.walk(tree) if isinstance(node, _DEFINITIONS)
               and node.lineno < region.begin and node.end_lineno > region.begin]
    return max(holders, key=lambda node: node.lineno, default=None)


def _check_scope(region, tree, body, allow_top_level) -> list[str]:
    scope = _enclosing_scope(tree, region)
    if scope is None:
        if allow_top_level:
            return []
        return [f"{region.location}: a region at module level would break `import`; "
                f"put it inside a function"]
    if isinstance(scope, ast.ClassDef):
        return [f"{region.location}: a region in the body of class {scope.name} would break "
                f"`import`; put it inside a method"]
    region.has_yield = any(_yields(node) for node in _region_statements(scope, body, region))
    decorators = [ast.unparse(d) for d in scope.decorator_list]
    if any("cuda.jit" in d for d in decorators):
        return [f"{region.location}: {scope.name} is a @cuda.jit kernel, where a raised exception "
                f"is not reported; mark the Python function that launches it instead"]
    if not any("jit" in d for d in decorators):
        return []
    if region.has_yield:
        return [f"{region.location}: numba cannot compile the stub of a region with `yield` "
                f"in the jitted generator {scope.name}"]
    leaked = _names_bound_only_inside(scope, region, body)
    if leaked:
        return [f"{region.location}: {', '.join(sorted(leaked))} bound only inside the region but "
                f"used after it in jitted {scope.name}; numba would fail to compile the stub. "
                f"Extend the region over those uses"]
    return []


def _yields(node: ast.AST) -> bool:
    """Whether `node` yields on behalf of its own function (nested scopes do not count)."""
    if isinstance(node, (ast.Yield, ast.YieldFrom)):
        return True
    if isinstance(node, _SCOPES):
        return False
    return any(_yields(child) for child in ast.iter_child_nodes(node))


def _names_bound_only_inside(scope, region: Region, body: list[ast.stmt]) -> set[str]:
    """Names the region binds that live code after it reads. The statements that follow the
    region in its own block are dead after the stub's raise (CPython does not compile them)."""
    dead = [(s.lineno, s.end_lineno) for s in _rest_of_block(scope, body, region)]
    bound_in, loaded_out = set(), set()
    bound_out = {a.arg for a in ast.walk(scope.args) if isinstance(a, ast.arg)}
    for node in ast.walk(scope):
        if not isinstance(node, ast.Name):
            continue
        inside = region.begin < node.lineno < region.end
        if isinstance(node.ctx, ast.Store):
            (bound_in if inside else bound_out).add(node.id)
        elif not inside and not any(first <= node.lineno <= last for first, last in dead):
            loaded_out.add(node.id)
    return (bound_in - bound_out) & loaded_out


def _block_of(scope, body: list[ast.stmt]) -> list[ast.stmt]:
    """The statement list (a body, an orelse...) that holds the region's first statement."""
    first = min(body, key=_statement_start)
    for node in ast.walk(scope):
        for _, value in ast.iter_fields(node):
            if isinstance(value, list) and any(s is first for s in value):
                return value
    return [first]


def _region_statements(scope, body, region: Region) -> list[ast.stmt]:
    """The region's own statements, without the ones nested in them."""
    return [s for s in _block_of(scope, body) if region.begin < _statement_start(s) < region.end]


def _rest_of_block(scope, body: list[ast.stmt], region: Region) -> list[ast.stmt]:
    return [s for s in _block_of(scope, body) if _statement_start(s) > region.end]


def render(lines: list[str], regions: list[Region], selected, manifest: Manifest) -> str:
    """The source with each selected region stubbed, and every marker line removed."""
    out, cursor = [], 0
    for region in sorted(regions, key=lambda r: r.begin):
        out += lines[cursor:region.begin - 1]
        if region.number in selected:
            newline = _line_ending(lines[region.begin - 1])
            message = manifest.assignments[region.number].stub_message(region.what)
            out.append(f"{region.indent}raise NotImplementedError("
                       f"{json.dumps(message, ensure_ascii=False)}){newline}")
            if region.has_yield:
                out.append(f"{region.indent}yield  # unreachable: keeps this function a generator{newline}")
        else:
            out += lines[region.begin:region.end - 1]
        cursor = region.end
    return "".join(out + lines[cursor:])


def _line_ending(line: str) -> str:
    return line[len(line.rstrip("\r\n")):] or "\n"


# ================================================================================== files
def _read_python(path: Path) -> tuple[str, str]:
    """(text, encoding) with line endings kept as they are in the file."""
    data = path.read_bytes()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding), encoding


# Magics and shell escapes are not Python; they become `pass` so a cell keeps its line numbers.
_MAGIC_LINE = re.compile(r"^(\s*)(?:[%!]|[\w.,\s]+=\s*[%!])")
_PYTHON_CELL_MAGICS = {"time", "timeit", "capture", "prun", "debug"}


def python_view(cell_source: str) -> str | None:
    """A notebook cell as parseable Python, line for line; None for a non-Python cell magic."""
    lines = cell_source.splitlines(keepends=True)
    if lines and lines[0].lstrip().startswith("%%"):
        magic = lines[0].strip()[2:].split(maxsplit=1)
        if not magic or magic[0] not in _PYTHON_CELL_MAGICS:
            return None
        lines[0] = "pass\n"
    return "".join(_MAGIC_LINE.sub(r"\1pass  # ", line, count=1) if _MAGIC_LINE.match(line)
                   else line for line in lines)


def _nbformat():
    try:
        import nbformat
    except ModuleNotFoundError:
        raise AssignmentError("notebooks need nbformat: pip install -e '.[dev]'") from None
    return nbformat


def _code_cells(notebook):
    return [(number, cell) for number, cell in enumerate(notebook.cells, 1)
            if cell.cell_type == "code"]


def _read_gitignore(root: Path) -> list[str]:
    path = root / ".gitignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith(("#", "!"))]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """A simplified .gitignore match: `name` patterns match any path part, `a/b` ones the path."""
    parts = rel.split("/")
    for pattern in patterns:
        anchored = pattern.strip("/")
        if "/" in anchored:
            if any(fnmatch("/".join(parts[:i]), anchored) for i in range(1, len(parts) + 1)):
                return True
        elif any(fnmatch(part, anchored) for part in parts):
            return True
    return False


def list_repo_files(root: Path) -> list[str]:
    """Repository-relative paths of the files a copy of `root` should hold.

    A git checkout: the tracked files plus the untracked ones .gitignore does not exclude (so a
    new module not yet added is not silently left out). Otherwise a walk that skips VCS, venv,
    cache and build folders and what the top-level .gitignore excludes.
    """
    root = Path(root)
    if (root / ".git").exists():
        try:
            listing = subprocess.run(
                ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                check=True, capture_output=True).stdout.decode("utf-8", "surrogateescape")
            paths = {rel for rel in listing.split("\0") if rel}
            # a tracked file deleted from the working tree, or a submodule, is not copied
            return sorted(rel for rel in paths if (root / rel).is_file() or (root / rel).is_symlink())
        except (OSError, subprocess.CalledProcessError):
            pass   # no usable git: walk instead
    return _walk(root, _read_gitignore(root))


def _walk(root: Path, patterns: list[str]) -> list[str]:
    found = []
    for directory, subdirs, files in os.walk(root):
        rel_dir = Path(directory).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        subdirs[:] = sorted(d for d in subdirs if d not in _SKIPPED_DIRS
                            and not d.endswith(".egg-info")
                            and not (Path(directory, d, "pyvenv.cfg")).exists()
                            and not _ignored(prefix + d, patterns))
        found += [prefix + f for f in sorted(files) if not f.endswith(_SKIPPED_SUFFIXES)
                  and f != ".DS_Store" and not _ignored(prefix + f, patterns)]
    return found


def _under(rel: str, prefixes) -> bool:
    return any(rel == p.rstrip("/") or rel.startswith(p.rstrip("/") + "/") for p in prefixes)


def _release_files(root: Path, manifest: Manifest, out: Path | None = None) -> list[str]:
    files = [rel for rel in list_repo_files(root) if not _under(rel, manifest.exclude)]
    if out is not None and out.is_relative_to(root):
        files = [rel for rel in files if not _under(rel, [out.relative_to(root).as_posix()])]
    return files


# ================================================================================== scanning
def scan_repository(root, manifest: Manifest | None = None, files=None) -> dict[str, list[Region]]:
    """Every solution region under `root`, by file; AssignmentError listing all marker problems."""
    root = Path(root)
    manifest = manifest or load_manifest(root)
    files = _release_files(root, manifest) if files is None else files
    found, problems = {}, []
    for rel in files:
        if not rel.endswith((".py", ".ipynb")):
            continue
        try:
            if rel.endswith(".py"):
                regions, file_problems = scan_source(_read_python(root / rel)[0], rel,
                                                     known=manifest.assignments)
            else:
                regions, file_problems = _scan_notebook(root / rel, rel, manifest)
        except (UnicodeDecodeError, SyntaxError, ValueError) as exc:   # ValueError: bad JSON
            regions, file_problems = [], [f"{rel}: cannot be read: {exc}"]
        problems += file_problems
        if regions:
            found[rel] = regions
    problems += _misplaced_regions(found, manifest)
    if problems:
        raise AssignmentError(problems)
    return found


def _scan_notebook(path: Path, rel: str, manifest: Manifest) -> tuple[list[Region], list[str]]:
    notebook = _nbformat().read(path, as_version=4)
    regions, problems = [], []
    for number, cell in _code_cells(notebook):
        view = python_view(cell.source)
        if view is not None:
            cell_regions, cell_problems = scan_source(view, rel, known=manifest.assignments,
                                                      cell=number, allow_top_level=True)
            regions += cell_regions
            problems += cell_problems
    return regions, problems


def _misplaced_regions(found: dict[str, list[Region]], manifest: Manifest) -> list[str]:
    """Regions in files their assignment does not list: the hand-out would send students elsewhere."""
    return [f"{region.location}: a{region.number} region in a file that "
            f"[assignments.a{region.number}] files in {MANIFEST_PATH} does not list"
            for rel, regions in found.items() for region in regions
            if rel not in manifest.assignments[region.number].files]


def coverage_warnings(found: dict[str, list[Region]], manifest: Manifest, selected) -> list[str]:
    """Listed files without a region of their assignment (fine for a helper file, but say so)."""
    warnings = []
    for number in selected:
        for rel in manifest.assignments[number].files:
            if not any(r.number == number for r in found.get(rel, ())):
                warnings.append(f"{rel}: listed for a{number} but holds no a{number} region")
    return warnings


# ================================================================================== release
@dataclass
class ReleaseResult:
    out: Path
    selected: list[int]
    stubbed: dict[int, int]        # assignment -> number of regions turned into stubs
    files: int
    warnings: list[str]


def release(source, out, only=None, *, check: bool = True, collect: bool = True) -> ReleaseResult:
    """Write the student copy of `source` to `out`: the selected assignments' regions stubbed.

    check: verify the copy (no marker left, every .py compiles, every notebook cell parses);
    collect: also verify `pytest --collect-only` succeeds in it.
    """
    source, out = Path(source).resolve(), Path(out).resolve()
    manifest = load_manifest(source)
    selected = manifest.select(only)
    if source.is_relative_to(out):
        raise AssignmentError(f"{out}: the release cannot overwrite its source {source}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AssignmentError(f"{out}: already exists and is not empty; remove it or pick another --out")
    files = _release_files(source, manifest, out)
    found = scan_repository(source, manifest, files)
    missing = [f"a{n}" for n in selected if not any(r.number == n for rs in found.values() for r in rs)]
    if missing:
        raise AssignmentError(f"{', '.join(missing)}: no solution region in the source; the "
                              f"release would hand out the solution")
    out.mkdir(parents=True, exist_ok=True)
    for rel in files:
        _release_file(source / rel, out / rel, rel, found.get(rel, []), selected, manifest)
    if check:
        problems = check_release(out, manifest, collect=collect)
        if problems:
            raise AssignmentError([f"the release in {out} is broken:"] + problems)
    stubbed = {n: sum(r.number == n for rs in found.values() for r in rs) for n in selected}
    return ReleaseResult(out, selected, stubbed, len(files), coverage_warnings(found, manifest, selected))


def _release_file(src: Path, dst: Path, rel: str, regions, selected, manifest) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif rel.endswith(".ipynb"):
        _release_notebook(src, dst, regions, selected, manifest)
    elif regions:
        text, encoding = _read_python(src)
        dst.write_bytes(render(text.splitlines(keepends=True), regions, selected, manifest).encode(encoding))
        shutil.copymode(src, dst)
    else:
        shutil.copy2(src, dst)


def _release_notebook(src: Path, dst: Path, regions, selected, manifest) -> None:
    """Stub the cells' regions and drop every output: outputs can show what the solution prints."""
    nbformat = _nbformat()
    notebook = nbformat.read(src, as_version=4)
    for number, cell in _code_cells(notebook):
        cell_regions = [r for r in regions if r.cell == number]
        if cell_regions:
            rendered = render(cell.source.splitlines(keepends=True), cell_regions, selected, manifest)
            cell.source = rendered if cell.source.endswith("\n") else rendered.rstrip("\r\n")
        cell.outputs = []
        cell.execution_count = None
    nbformat.write(notebook, dst)


def check_release(out, manifest: Manifest | None = None, *, collect: bool = True) -> list[str]:
    """What is wrong with a student copy: leftover markers, code that does not compile, tests
    that do not collect. Empty when it is fine."""
    out = Path(out)
    problems = []
    for path in sorted(out.rglob("*.py")):
        problems += _check_python_file(path, path.relative_to(out).as_posix())
    for path in sorted(out.rglob("*.ipynb")):
        if ".ipynb_checkpoints" not in path.parts:
            problems += _check_notebook(path, path.relative_to(out).as_posix())
    if collect and not problems:
        problems += _check_collection(out, manifest or load_manifest(out))
    return problems


def _check_python_file(path: Path, rel: str) -> list[str]:
    text = _read_python(path)[0]
    try:
        compile(text, rel, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return [f"{rel}:{exc.lineno}: does not compile: {exc.msg}"]
    return [f"{rel}:{tok.start[0]}: solution marker left in the release" for tok in _marker_comments(text)]


def _check_notebook(path: Path, rel: str) -> list[str]:
    problems = []
    for number, cell in _code_cells(_nbformat().read(path, as_version=4)):
        view = python_view(cell.source)
        if view is None:
            continue
        try:
            ast.parse(view)
        except SyntaxError as exc:
            problems.append(f"{_location(rel, number, exc.lineno or 1)}: does not parse: {exc.msg}")
            continue
        problems += [f"{_location(rel, number, tok.start[0])}: solution marker left in the release"
                     for tok in _marker_comments(view)]
    return problems


def _check_collection(root: Path, manifest: Manifest) -> list[str]:
    with _test_environment(root, manifest, numbers=[]) as (env, _):
        del env["PYTEST_PLUGINS"]   # collect every test, not only the graded ones
        proc = subprocess.run(_pytest_command(manifest, ["--collect-only", "-q"]),
                              cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode in (0, 5):   # 5: no tests at all, which is not the release's doing
        return []
    return [f"pytest --collect-only fails in the release (exit {proc.returncode}):\n"
            + _tail(proc.stdout + proc.stderr)]


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ================================================================================== running tests
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
    seen = seen if seen is not None else set()
    if exc is None or id(exc) in seen:
        return False
    seen.add(id(exc))
    if isinstance(exc, NotImplementedError) or getattr(exc, "ename", None) == "NotImplementedError":
        return True   # ename: nbclient's CellExecutionError for an error raised inside a notebook
    inner = list(getattr(exc, "exceptions", ()) or ()) + [exc.__cause__, exc.__context__]
    return any(_not_implemented(e, seen) for e in inner)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and call.excinfo is not None:
        first_line = (call.excinfo.exconly().strip().splitlines() or [""])[0]
        report.user_properties += [("minillm_not_implemented", _not_implemented(call.excinfo.value)),
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
def _test_environment(root: Path, manifest: Manifest, numbers):
    """(environment for a pytest process graded in `root`, path of its results file)."""
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
            "PYTEST_PLUGINS": "_minillm_grade_collector",
        })
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


# ================================================================================== grading
def _nodeid_matches(nodeid: str, prefix: str) -> bool:
    return nodeid == prefix or (nodeid.startswith(prefix) and nodeid[len(prefix)] in ":[/")


def allocate_points(assignment: Assignment, nodeids) -> dict[str, float]:
    """Points per test: test_points entries (most specific first) split over the tests they
    match; the rest of `points` split evenly over the other tests; 1 each when no total."""
    points = {}
    for prefix in sorted(assignment.test_points, key=len, reverse=True):
        matched = [n for n in nodeids if n not in points and _nodeid_matches(n, prefix)]
        for nodeid in matched:
            points[nodeid] = float(assignment.test_points[prefix]) / len(matched)
    rest = [n for n in nodeids if n not in points]
    if rest:
        left = 1.0 * len(rest) if assignment.points is None else \
            max(float(assignment.points) - sum(points.values()), 0.0)
        points.update((nodeid, left / len(rest)) for nodeid in rest)
    return points


@dataclass
class ScoredTest:
    nodeid: str
    outcome: str
    points: float
    message: str | None = None

    @property
    def earned(self) -> float:
        return self.points if self.outcome == "passed" else 0.0


@dataclass
class AssignmentScore:
    assignment: Assignment
    tests: list[ScoredTest]
    possible: float
    errors: list[str] = field(default_factory=list)   # a test file that could not be imported

    @property
    def earned(self) -> float:
        return 0.0 if self.errors else sum(t.earned for t in self.tests)


@dataclass
class GradeReport:
    root: Path
    scores: list[AssignmentScore]
    collection_errors: list[dict]
    timed_out: bool = False        # the run was stopped: tests it did not reach are missing

    @property
    def earned(self) -> float:
        return sum(s.earned for s in self.scores)

    @property
    def possible(self) -> float:
        return sum(s.possible for s in self.scores)

    @property
    def all_passed(self) -> bool:
        return not self.timed_out and all(
            not s.errors and s.tests and all(t.outcome == "passed" for t in s.tests)
            for s in self.scores)

    def to_dict(self) -> dict:
        return {
            "schema": 1, "root": str(self.root),
            "earned": round(self.earned, 4), "possible": round(self.possible, 4),
            "assignments": [{
                "assignment": s.assignment.number, "tag": s.assignment.tag,
                "name": s.assignment.name, "title": s.assignment.title,
                "earned": round(s.earned, 4), "possible": round(s.possible, 4),
                "counts": {o: sum(t.outcome == o for t in s.tests) for o in OUTCOMES},
                "errors": s.errors,
                "tests": [{"nodeid": t.nodeid, "outcome": t.outcome, "points": round(t.points, 4),
                           "earned": round(t.earned, 4), "message": t.message} for t in s.tests],
            } for s in self.scores],
            "collection_errors": self.collection_errors,
            "timed_out": self.timed_out,
        }


def _assignments_named_in(root: Path, rel: str, manifest: Manifest) -> set[int]:
    """Assignments a test file that failed to import grades, from its marker text and the manifest."""
    numbers = {n for n, a in manifest.assignments.items()
               if any(_nodeid_matches(p, rel) or _nodeid_matches(rel, p) for p in a.tests)}
    try:
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return numbers
    found = re.findall(r"assignment\(\s*(?:n\s*=\s*)?[\"']?a?(\d+)", text)
    return numbers | {int(n) for n in found}


def score_run(root: Path, run: RunResult, manifest: Manifest, numbers) -> GradeReport:
    scores = []
    for number in numbers:
        assignment = manifest.assignments[number]
        nodeids = sorted(n for n, r in run.tests.items() if r["assignment"] == number)
        points = allocate_points(assignment, nodeids)
        tests = [ScoredTest(n, run.tests[n]["outcome"], points[n], run.tests[n]["message"])
                 for n in nodeids]
        possible = sum(points.values()) if assignment.points is None else float(assignment.points)
        scores.append(AssignmentScore(assignment, tests, possible))
    for error in run.collection_errors:
        graded = _assignments_named_in(root, error["nodeid"].split("::")[0], manifest)
        for score in scores:
            if score.assignment.number in graded:
                score.errors.append(f"{error['nodeid']} could not be collected: "
                                    f"{_last_line(error['message'])}")
    return GradeReport(root, scores, run.collection_errors, run.timed_out)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def grade(root=None, only=None, *, workers: int = 1, tests_from=None,
          timeout: float | None = None) -> GradeReport:
    """Grade the tree `root`. tests_from: grade with that repository's tests, manifest and pytest
    configuration instead of root's own (the submission is copied; it is not modified).
    timeout: seconds for the whole test run (see run_tests)."""
    root = Path(root).resolve() if root else find_repository()
    if tests_from is None:
        manifest = load_manifest(root)
        numbers = manifest.select(only)
        run = run_tests(root, numbers, manifest, workers=workers, timeout=timeout)
        return score_run(root, run, manifest, numbers)
    reference = Path(tests_from).resolve()
    manifest = load_manifest(reference)
    numbers = manifest.select(only)
    with tempfile.TemporaryDirectory(prefix="minillm-submission-") as scratch:
        copy = _overlay_reference_tests(root, reference, manifest, Path(scratch) / root.name)
        run = run_tests(copy, numbers, manifest, workers=workers, timeout=timeout)
        report = score_run(copy, run, manifest, numbers)
    report.root = root
    return report


def _overlay_reference_tests(submission: Path, reference: Path, manifest: Manifest, copy: Path) -> Path:
    """Copy the submission, then replace whatever decides how it is tested with the reference's."""
    for rel in list_repo_files(submission):
        _copy_file(submission / rel, copy / rel)
    graded_by = [*manifest.test_paths, "conftest.py", "pyproject.toml", MANIFEST_PATH]
    for rel in graded_by:
        target = copy / rel
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for rel in list_repo_files(reference):
        if _under(rel, graded_by):
            _copy_file(reference / rel, copy / rel)
    return copy


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _fmt(points: float) -> str:
    return f"{points:.2f}".rstrip("0").rstrip(".")


def format_report(report: GradeReport) -> str:
    lines, width = [], 78
    for score in report.scores:
        a = score.assignment
        head = f"Assignment {a.number} ({a.name}): {a.title}"
        lines.append(f"{head:<{width}} {_fmt(score.earned):>6} / {_fmt(score.possible)}")
        for error in score.errors:
            lines.append(f"  ERROR  {error}")
        if not score.tests and not score.errors:
            lines.append("  no tests found for this assignment")
        for test in score.tests:
            shown = test.outcome.replace("_", " ")
            lines.append(f"  {shown:<16} {_fmt(test.earned):>6} / {_fmt(test.points):<6} {test.nodeid}")
            if test.outcome != "passed" and test.message:
                lines.append(f"{'':<19}{test.message[:150]}")
        lines.append("")
    if report.timed_out:
        lines.append("The test run was stopped by the timeout; the tests it did not reach earn nothing.")
    lines.append(f"{'Total':<{width}} {_fmt(report.earned):>6} / {_fmt(report.possible)}")
    return "\n".join(lines)


# ================================================================================== round trip
@dataclass
class RoundTripReport:
    released: list[int]
    problems: list[str]
    notes: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (f"round trip of {', '.join(f'a{n}' for n in self.released)}: "
                f"{'ok' if self.ok else f'{len(self.problems)} problem(s)'} in {self.seconds:.0f}s")
        return "\n".join([head, *(f"  PROBLEM {p}" for p in self.problems),
                          *(f"  note {n}" for n in self.notes)])


def verify_round_trip(repo, assignments=None, *, jobs: int | None = None,
                      workers: int = 1) -> RoundTripReport:
    """Check that the markers and the tests agree, on any repository with a manifest.

    With the solutions in place every assignment test passes; in the release of assignment N
    alone (one release per N) exactly the tests of N (and those declaring `uses=[N]`) fail with
    NotImplementedError while every other assignment's tests pass. Each run executes all the
    assignment tests once; `jobs` runs go in parallel (default: up to 2), each with `workers`
    xdist workers.
    """
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    repo = Path(repo).resolve()
    manifest = load_manifest(repo)
    released = manifest.select(assignments)
    everything = sorted(manifest.assignments)
    jobs = jobs or max(1, min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="minillm-roundtrip-") as scratch:
        trees = {0: repo}
        for number in released:
            trees[number] = release(repo, Path(scratch) / f"a{number}", [number], collect=False).out
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            runs = dict(zip(trees, pool.map(
                lambda tree: run_tests(tree, everything, manifest, workers=workers), trees.values()),
                strict=True))
    problems, notes = _solution_problems(runs[0], released)
    for number in released:
        problems += _release_problems(number, runs[number], runs[0])
    return RoundTripReport(released, problems, notes, time.monotonic() - started)


def _collection_problems(label: str, run: RunResult) -> list[str]:
    return [f"{label}: {e['nodeid']} could not be collected: {_last_line(e['message'])}"
            for e in run.collection_errors]


def _solution_problems(run: RunResult, numbers) -> tuple[list[str], list[str]]:
    problems = _collection_problems("with the solutions", run)
    notes = [f"{n} skipped with the solutions ({r['message']}); not verified"
             for n, r in sorted(run.tests.items()) if r["outcome"] == "skipped"]
    problems += [f"with the solutions: {n} {r['outcome'].replace('_', ' ')}: {r['message']}"
                 for n, r in sorted(run.tests.items()) if r["outcome"] not in ("passed", "skipped")]
    problems += [f"a{n} has no tests" for n in numbers
                 if not any(r["assignment"] == n for r in run.tests.values())]
    return problems, notes


def _release_problems(number: int, run: RunResult, solutions: RunResult) -> list[str]:
    label = f"release of a{number}"
    problems = _collection_problems(label, run)
    for nodeid, record in sorted(run.tests.items()):
        outcome, message = record["outcome"], record["message"]
        if solutions.tests.get(nodeid, {}).get("outcome") == "skipped" or outcome == "skipped":
            continue
        if record["assignment"] == number or number in record["uses"]:
            if outcome == "passed":
                problems.append(f"{label}: {nodeid} still passes: no a{number} region covers what it checks")
            elif outcome != "not_implemented":
                problems.append(f"{label}: {nodeid} {outcome} instead of raising "
                                f"NotImplementedError: {message}")
        elif outcome != "passed":
            hint = (f"; it runs a{number}'s code: declare @pytest.mark.assignment("
                    f"{record['assignment']}, uses=[{number}]) or make it independent"
                    if outcome == "not_implemented" else "")
            problems.append(f"{label}: {nodeid} (a{record['assignment']}) "
                            f"{outcome.replace('_', ' ')}: {message}{hint}")
    missing = sorted(set(solutions.tests) - set(run.tests))
    problems += [f"{label}: {nodeid} did not run" for nodeid in missing]
    return problems


# ================================================================================== CLI
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
