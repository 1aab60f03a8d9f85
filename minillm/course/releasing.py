"""The student release: a copy of the repository with the selected regions stubbed, and its checks."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .manifest import AssignmentError, Manifest, load_manifest
from .markers import Region, _location, _marker_comments, coverage_warnings, scan_repository
from .runner import _pytest_command, _tail, _test_environment
from .sources import _code_cells, _nbformat, _read_python, _release_files, python_view


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


@dataclass
class ReleaseResult:
    out: Path
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
    return ReleaseResult(out, stubbed, len(files), coverage_warnings(found, manifest, selected))


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
    with _test_environment(root, manifest, numbers=[], grading=False) as (env, _):
        proc = subprocess.run(_pytest_command(manifest, ["--collect-only", "-q"]),
                              cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode in (0, 5):   # 5: no tests at all, which is not the release's doing
        return []
    return [f"pytest --collect-only fails in the release (exit {proc.returncode}):\n"
            + _tail(proc.stdout + proc.stderr)]


