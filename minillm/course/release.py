"""Solution regions: finding and checking them, the student release that stubs them, and the
round trip that checks that regions and tests agree."""
from __future__ import annotations

import ast
import io
import json
import re
import shutil
import subprocess
import textwrap
import tempfile
import tokenize
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .grade import graded_environment, pytest_command, run_tests
from .manifest import MANIFEST_PATH, AssignmentError, Manifest, load_manifest, repo_files, under

_MARKER_WORDS = re.compile(r"\b(BEGIN|END)\s+SOLUTION\b", re.IGNORECASE)
_MARKER = re.compile(r"### (BEGIN|END) SOLUTION\b *(.*)")
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


@dataclass
class Region:
    path: str                 # repository-relative
    cell: int | None          # notebook cell number (1-based); None in a .py file
    begin: int                # line of the opening marker, 1-based in the file or cell
    end: int                  # line of the closing marker
    number: int
    what: str                 # what to implement, for the stub's message
    indent: str
    yields: bool = False      # the stub must keep its function a generator
    message: str | None = None   # a withheld function's stub message (regions: from `what`)

    @property
    def location(self) -> str:
        return _location(self.path, self.cell, self.begin)


def _location(path: str, cell: int | None, line: int) -> str:
    return f"{path}:{line}" if cell is None else f"{path}[cell {cell}]:{line}"


def _marker_comments(source: str) -> list[tokenize.TokenInfo]:
    """Every comment that mentions BEGIN/END SOLUTION (text in strings does not count)."""
    return [tok for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT and _MARKER_WORDS.search(tok.string)]


def scan_source(source: str, path: str, known,
                cell: int | None = None) -> tuple[list[Region], list[str]]:
    """The solution regions of one Python source (a file or a notebook cell), and its problems."""
    def at(line):
        return _location(path, cell, line)

    try:
        comments = _marker_comments(source)
    except (tokenize.TokenError, SyntaxError) as exc:
        return [], [f"{at(1)}: cannot be tokenized: {exc}"]
    regions, problems, current = [], [], None
    for tok in comments:
        line, indent = tok.start[0], tok.line[:tok.start[1]]
        marker = _MARKER.fullmatch(tok.string.rstrip())
        if marker is None or indent.strip():
            problems.append(f"{at(line)}: malformed solution marker {tok.string.strip()!r}; expected "
                            f"'### BEGIN SOLUTION aN: what to implement' or '### END SOLUTION' "
                            f"on a line of its own")
        elif marker[1] == "BEGIN":
            tag, _, what = marker[2].partition(":")
            if current is not None:
                problems.append(f"{at(line)}: BEGIN SOLUTION inside the region opened at line "
                                f"{current.begin}; regions cannot nest")
            else:
                valid = tag.strip() in {f"a{n}" for n in known}
                if not valid:
                    problems.append(f"{at(line)}: BEGIN SOLUTION needs a tag of the manifest "
                                    f"({', '.join(f'a{n}' for n in sorted(known))}), "
                                    f"got {tag.strip()!r}")
                current = Region(path, cell, line, 0, int(tag.strip()[1:]) if valid else 0,
                                 what.strip(), indent)
        elif current is None:
            problems.append(f"{at(line)}: END SOLUTION without a BEGIN SOLUTION before it")
        elif indent != current.indent or marker[2].strip() not in ("", f"a{current.number}"):
            problems.append(f"{at(line)}: END SOLUTION does not match the BEGIN SOLUTION at line "
                            f"{current.begin} (indentation or tag)")
        else:
            current.end = line
            problems += _check_body(current, source.splitlines()[current.begin:line - 1])
            regions.append(current)
            current = None
    if current is not None:
        problems.append(f"{at(current.begin)}: BEGIN SOLUTION is never closed by ### END SOLUTION")
    regions = [r for r in regions if r.number]   # 0: an invalid tag, reported above
    if cell is None:
        problems += [f"{r.location}: a region at module level would break `import`; put it "
                     f"inside a function" for r in regions if not r.indent]
    return regions, problems


def _check_body(region: Region, lines: list[str]) -> list[str]:
    """A region holds whole statements, at least one; notes whether it yields for its function."""
    try:
        body = ast.parse(textwrap.dedent("\n".join(lines))).body
    except SyntaxError:
        body = None
    if not body:
        return [f"{region.location}: a region holds whole statements of one block, at least one"]
    region.yields = any(_yields(statement) for statement in body)
    return []


def _yields(node: ast.AST) -> bool:
    """Whether `node` yields on behalf of its own function (nested scopes do not count)."""
    if isinstance(node, (ast.Yield, ast.YieldFrom)):
        return True
    return not isinstance(node, _SCOPES) and any(map(_yields, ast.iter_child_nodes(node)))


def render(source: str, regions: list[Region], selected, manifest: Manifest) -> str:
    """The source with each selected region stubbed, and every marker line removed."""
    lines, out, cursor = source.splitlines(keepends=True), [], 0
    for region in sorted(regions, key=lambda r: r.begin):
        out += lines[cursor:region.begin - 1]
        if region.number in selected:
            first = lines[region.begin - 1]
            newline = first[len(first.rstrip("\r\n")):] or "\n"
            message = region.message or manifest.assignments[region.number].stub_message(region.what)
            out.append(f"{region.indent}raise NotImplementedError("
                       f"{json.dumps(message, ensure_ascii=False)}){newline}")
            if region.yields:
                out.append(f"{region.indent}yield  # unreachable: keeps the function a generator{newline}")
        else:
            out += lines[region.begin:region.end - 1]
        cursor = region.end
    rendered = "".join(out + lines[cursor:])
    return rendered if source.endswith("\n") else rendered.rstrip("\r\n")


def _compiles(source: str) -> bool:
    try:
        compile(source, "<region check>", "exec", dont_inherit=True)
        return True
    except SyntaxError:
        return False


def _nbformat():
    try:
        import nbformat
    except ModuleNotFoundError:
        raise AssignmentError("notebooks need nbformat: pip install -e '.[dev]'") from None
    return nbformat


def _read_python(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:   # line endings as they are in the file
        return f.read()


def _sources(root: Path, rel: str):
    """(cell number or None, Python source) of a .py file or of a notebook's code cells."""
    if rel.endswith(".py"):
        yield None, _read_python(root / rel)
    else:
        cells = _nbformat().read(root / rel, as_version=4).cells
        yield from ((n, c.source) for n, c in enumerate(cells, 1) if c.cell_type == "code")


def scan_repository(root, manifest: Manifest | None = None, files=None) -> dict[str, list[Region]]:
    """Every solution region under `root`, by file; AssignmentError listing all marker problems.

    Besides the marker rules, each source must still compile with all its regions stubbed
    (a notebook cell only if it compiled before: magics are not Python)."""
    root = Path(root)
    manifest = manifest or load_manifest(root)
    if files is None:
        files = [rel for rel in repo_files(root) if not under(rel, manifest.exclude)]
    found, problems = {}, []
    for rel in files:
        if not rel.endswith((".py", ".ipynb")):
            continue
        try:
            for cell, source in _sources(root, rel):
                if "SOLUTION" not in source.upper():
                    continue
                regions, source_problems = scan_source(source, rel, manifest.assignments, cell)
                stubbed = render(source, regions, manifest.assignments, manifest)
                if not source_problems and _compiles(source) and not _compiles(stubbed):
                    source_problems.append(f"{_location(rel, cell, 1)}: does not compile with its "
                                           f"regions stubbed; a region holds whole statements")
                problems += source_problems
                found.setdefault(rel, []).extend(regions)
        except (OSError, UnicodeDecodeError, ValueError) as exc:   # ValueError: a broken notebook
            problems.append(f"{rel}: cannot be read: {exc}")
    problems += [f"{r.location}: a{r.number} region in a file that [assignments.a{r.number}] files "
                 f"in {MANIFEST_PATH} does not list"
                 for rel, regions in found.items() for r in regions
                 if rel not in manifest.assignments[r.number].files]
    withheld, withhold_problems = find_withheld(root, manifest, files)
    problems += withhold_problems + [
        f"{w.location}: {w.what}, which [assignments.a{w.number}] withhold lists, lies inside the "
        f"solution region at line {r.begin}; withhold the function around it or drop the entry"
        for rel, bodies in withheld.items() for w in bodies for r in found.get(rel, ())
        if r.begin < w.begin and w.end < r.end]
    if problems:
        raise AssignmentError(problems)
    return {rel: regions for rel, regions in found.items() if regions}


def coverage_warnings(found: dict[str, list[Region]], manifest: Manifest) -> list[str]:
    """Listed files without a region of their assignment (fine for a helper file, but say so)."""
    return [f"{rel}: listed for a{n} but holds no a{n} region"
            for n, assignment in sorted(manifest.assignments.items()) for rel in assignment.files
            if not any(r.number == n for r in found.get(rel, ()))]


# ---------------------------------------------------------------------------- withheld functions
def find_withheld(root, manifest: Manifest, files,
                  selected=None) -> tuple[dict[str, list[Region]], list[str]]:
    """The bodies of the functions that [assignments.aN] withhold lists (of the `selected`
    assignments; all when None), as regions to stub, by file; and the problems of the entries."""
    root, files = Path(root), set(files)
    found, problems, seen = {}, [], set()
    for number, assignment in sorted(manifest.assignments.items()):
        for entry in assignment.withhold:
            region, problem = _withheld_body(root, files, number, entry, manifest)
            if problem:
                problems.append(f"{MANIFEST_PATH} [assignments.a{number}] withhold {entry!r}: {problem}")
            elif (selected is None or number in selected) and (region.path, region.begin) not in seen:
                seen.add((region.path, region.begin))   # withheld by two assignments: stubbed once
                found.setdefault(region.path, []).append(region)
    return found, problems


def _withheld_body(root: Path, files, number: int, entry: str, manifest: Manifest):
    """(the region of the body of the function `entry` names, None) or (None, what is wrong)."""
    path, sep, qualname = entry.partition("::")
    if not sep or not path.endswith(".py") or not re.fullmatch(r"\w+(\.\w+)*", qualname):
        return None, "expected 'path/to/file.py::function' or 'path/to/file.py::Class.method'"
    if path not in files:
        return None, f"{path} is not a file of the release"
    try:
        source = _read_python(root / path)
        scope = ast.parse(source, path)
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        return None, f"cannot parse {path}: {exc}"
    for name in qualname.split("."):
        scope = next((node for node in getattr(scope, "body", ()) if isinstance(node, _SCOPES)
                      and not isinstance(node, ast.Lambda) and node.name == name), None)
        if scope is None:
            return None, f"{path} defines no {qualname} (looked for {name!r})"
    if isinstance(scope, ast.ClassDef):
        return None, f"{qualname} is a class; withhold its methods (Class.method)"
    body = scope.body
    if ast.get_docstring(scope, clean=False) is not None:
        body = body[1:]                             # the docstring stays, like a region's
    if not body:
        return None, f"{qualname} has no statements besides its docstring"
    first, lines = body[0], source.splitlines()
    indent = lines[first.lineno - 1][:first.col_offset]
    if first.lineno == scope.lineno or indent.strip():
        return None, f"the body of {qualname} must start on a line of its own"
    # The comments around the statements go too: they may be a region's markers.
    def comment(line):
        return line.strip().startswith("#") and line.startswith(indent)

    floor = scope.body[0].end_lineno if body is not scope.body else scope.lineno   # docstring or def
    begin, end = first.lineno, body[-1].end_lineno
    while begin - 1 > floor and comment(lines[begin - 2]):
        begin -= 1
    while end < len(lines) and comment(lines[end]):
        end += 1
    region = Region(path, None, begin, end, number, qualname, indent, any(map(_yields, body)),
                    manifest.assignments[number].withheld_message(entry))
    return region, None


def _merge_withheld(regions: list[Region], withheld: list[Region], selected) -> list[Region]:
    """A file's regions with its withheld bodies. A body that holds a region the release stubs
    is left to that stub (it no longer computes the answer, and the stub says what to write);
    any other region inside a withheld body goes with the body."""
    def inside(region, body):
        return body.begin <= region.begin and region.end <= body.end

    withheld = [w for w in withheld if not any(r.number in selected and inside(r, w) for r in regions)]
    return [r for r in regions if not any(inside(r, w) for w in withheld)] + withheld


class Release(NamedTuple):
    out: Path
    files: int
    stubbed: dict[int, int]        # assignment -> number of regions turned into stubs
    withheld: dict[int, int] = {}  # assignment -> number of withheld functions stubbed


def release(source, out, only=None, *, check: bool = True) -> Release:
    """Write the student copy of `source` to `out`: the selected assignments' regions stubbed,
    notebook outputs dropped (they can show what a solution prints), no marker left.

    check: verify that `pytest --collect-only` succeeds in the copy."""
    source, out = Path(source).resolve(), Path(out).resolve()
    manifest = load_manifest(source)
    selected = manifest.select(only)
    if source.is_relative_to(out):
        raise AssignmentError(f"{out}: the release cannot overwrite its source {source}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AssignmentError(f"{out}: already exists and is not empty; remove it or pick another --out")
    skipped = [*manifest.exclude]
    if out.is_relative_to(source):   # a release inside its source leaves itself out
        skipped.append(out.relative_to(source).as_posix())
    files = [rel for rel in repo_files(source) if not under(rel, skipped)]
    found = scan_repository(source, manifest, files)
    stubbed = {n: sum(r.number == n for regions in found.values() for r in regions) for n in selected}
    missing = [f"a{n}" for n, count in stubbed.items() if not count]
    if missing:
        raise AssignmentError(f"{', '.join(missing)}: no solution region in the source; the "
                              f"release would hand out the solution")
    withheld, _ = find_withheld(source, manifest, files, selected)   # checked by scan_repository
    withheld_count = dict.fromkeys(selected, 0)
    for rel in files:
        regions = _merge_withheld(found.get(rel, []), withheld.get(rel, []), selected)
        for body in (r for r in regions if r.message is not None):
            withheld_count[body.number] += 1
        _release_file(source / rel, out / rel, regions, selected, manifest)
    if check:
        _check_collection(out, manifest)
    return Release(out, len(files), stubbed, withheld_count)


def _release_file(src: Path, dst: Path, regions, selected, manifest) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".ipynb" and not src.is_symlink():
        nbformat = _nbformat()
        notebook = nbformat.read(src, as_version=4)
        for number, cell in enumerate(notebook.cells, 1):
            if cell.cell_type == "code":
                in_cell = [r for r in regions if r.cell == number]
                cell.source = render(cell.source, in_cell, selected, manifest)
                cell.outputs, cell.execution_count = [], None
        nbformat.write(notebook, dst)
    elif regions:
        dst.write_text(render(_read_python(src), regions, selected, manifest),
                       encoding="utf-8", newline="")
        shutil.copymode(src, dst)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


def _check_collection(root: Path, manifest: Manifest) -> None:
    with graded_environment(root, sorted(manifest.assignments)) as (env, _):
        proc = subprocess.run(pytest_command(manifest, ["--collect-only", "-q"]),
                              cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 5):   # 5: no tests at all, which is not the release's doing
        tail = "\n".join((proc.stdout + proc.stderr).rstrip().splitlines()[-40:])
        raise AssignmentError(f"the release in {root} is broken: pytest --collect-only fails "
                              f"(exit {proc.returncode}):\n{tail}")


# ---------------------------------------------------------------------------- round trip
def verify_round_trip(repo, assignments=None, *, jobs: int | None = None) -> list[str]:
    """What is wrong with the markers and tests of `repo` (empty when they agree): with the
    solutions every assignment test passes (or is skipped); in the release of assignment N
    alone (its regions and withheld functions stubbed) exactly the tests of N (and those
    declaring `uses=[N]`) raise NotImplementedError while every other assignment's tests pass.
    That is also the release check: a test of N that passes on N's student copy would give its
    points away. `assignments` defaults to every assignment of the manifest; `jobs` test runs
    go in parallel (default 2)."""
    repo = Path(repo).resolve()
    manifest = load_manifest(repo)
    released = manifest.select(assignments)
    with tempfile.TemporaryDirectory(prefix="minillm-roundtrip-") as scratch:
        trees = [repo] + [release(repo, Path(scratch) / f"a{n}", [n], check=False).out for n in released]
        with ThreadPoolExecutor(max_workers=jobs or 2) as pool:
            solutions, *runs = pool.map(lambda tree: run_tests(tree, sorted(manifest.assignments),
                                                               manifest), trees)
    problems = _run_problems("with the solutions", solutions, lambda test: "passed")
    problems += [f"a{n} has no tests" for n in released
                 if not any(t["assignment"] == n for t in solutions["tests"].values())]
    for number, run in zip(released, runs):
        def expected(test, n=number):
            return "not_implemented" if n in (test["assignment"], *test["uses"]) else "passed"
        problems += _run_problems(f"release of a{number}", run, expected, number, solutions)
    return problems


def _run_problems(label, run, expected, number=None, solutions=None) -> list[str]:
    problems = [f"{label}: {e['nodeid']} could not be collected: "
                f"{(e['message'].strip().splitlines() or [''])[-1]}" for e in run["collection_errors"]]
    for nodeid, test in sorted(run["tests"].items()):
        outcome, want = test["outcome"], expected(test)
        skipped = solutions is not None and solutions["tests"].get(nodeid, {}).get("outcome") == "skipped"
        if outcome in (want, "skipped") or skipped:
            continue
        if want == "not_implemented":
            problems.append(f"{label}: {nodeid} still passes: no a{number} region covers what it "
                            f"checks, or it reaches code that computes a{number}'s answer (withhold it)"
                            if outcome == "passed" else f"{label}: {nodeid} {outcome} instead of "
                            f"raising NotImplementedError: {test['message']}")
            continue
        hint = (f"; it runs a{number}'s code: declare @pytest.mark.assignment({test['assignment']}, "
                f"uses=[{number}]) or make it independent"
                if outcome == "not_implemented" and number else "")
        problems.append(f"{label}: {nodeid} (a{test['assignment']}) {outcome.replace('_', ' ')}: "
                        f"{test['message']}{hint}")
    if solutions is not None:
        missing = sorted(set(solutions["tests"]) - set(run["tests"]))
        problems += [f"{label}: {nodeid} did not run" for nodeid in missing]
    return problems
