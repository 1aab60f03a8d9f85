"""Solution markers: finding the regions in a Python source or notebook and checking the rules."""
from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

from .manifest import MANIFEST_PATH, AssignmentError, Manifest, load_manifest
from .sources import _code_cells, _nbformat, _read_python, _release_files, python_view

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


