"""Which files a repository copy holds, and reading them: Python text with its encoding, notebook
cells as Python."""
from __future__ import annotations

import io
import os
import re
import subprocess
import tokenize
from fnmatch import fnmatch
from pathlib import Path

from .manifest import AssignmentError, Manifest

# Never part of a release when the source is not a git checkout (a git checkout uses .gitignore).
_SKIPPED_DIRS = {".git", ".hg", ".venv", "venv", "__pycache__", "build", "dist", ".pytest_cache",
                 ".hypothesis", ".ipynb_checkpoints", ".mypy_cache", ".ruff_cache", ".tox",
                 ".nox", "node_modules", ".eggs"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".nbi", ".nbc", ".egg-info")


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

