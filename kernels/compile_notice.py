"""One line on stderr before numba compiles, so a first run does not wait in silence.

numba caches each compiled function (`cache=True`) as an index file named
`<module>.<function>-<line>.py<version>.nbi`, in the `__pycache__` folder beside the source or
under NUMBA_CACHE_DIR, and recompiles when the source is newer than the index. Reading the
source with `ast` tells which index files a module's kernels need, without importing the module:
importing it is what compiles its eagerly typed kernels.
"""
from __future__ import annotations

import ast
import os
import sys
from pathlib import Path


def cached_kernels_missing(source: Path, names: tuple[str, ...] | None = None) -> bool:
    """Whether numba will compile one of `source`'s kernels (those in `names`, default all)."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    for name, line in _cached_kernels(source):
        if names is not None and name not in names:
            continue
        index = f"{source.stem}.{name}-{line}.{tag}.nbi"
        if not any(path.stat().st_mtime >= source.stat().st_mtime for path in _index_files(source, index)):
            return True
    return False


def announce_compilation(what: str, kernels: dict[Path, tuple[str, ...] | None]) -> None:
    """Print "compiling <what> ..." if any of `kernels` (module -> function names, None for
    all of them) is not cached, before the caller imports or first calls them."""
    if any(cached_kernels_missing(source, names) for source, names in kernels.items()):
        print(f"minillm: compiling {what}, first run only (up to ~20 s) ...", file=sys.stderr, flush=True)


def _cached_kernels(source: Path):
    """(name, first decorator line) of each top-level @njit(..., cache=True) function that is
    compiled on its own (inline="always" ones are compiled into their callers)."""
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.FunctionDef) or not node.decorator_list:
            continue
        decorator = node.decorator_list[0]
        keywords = {k.arg: k.value for k in getattr(decorator, "keywords", [])}
        func = getattr(decorator, "func", None)                 # njit(...) or numba.njit(...)
        name = getattr(func, "id", None) or getattr(func, "attr", None)
        inline = keywords.get("inline")
        if name == "njit" and isinstance(keywords.get("cache"), ast.Constant) and keywords["cache"].value \
                and not (isinstance(inline, ast.Constant) and inline.value == "always"):
            yield node.name, decorator.lineno


def _index_files(source: Path, index: str):
    """Where numba looks for an index: only under NUMBA_CACHE_DIR when it is set, else beside
    the source (the first of numba's cache locators that applies)."""
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    if cache_dir:
        yield from Path(cache_dir).rglob(index)
    elif (source.parent / "__pycache__" / index).is_file():
        yield source.parent / "__pycache__" / index
