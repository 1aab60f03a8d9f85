"""Solution markers: how regions are found, checked and rendered into stubs (minillm/course/release.py)."""
from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest

from minillm.course import load_manifest, render, scan_source

FIXTURE = Path(__file__).parent / "assignments_fixtures" / "toyrepo"


def scan(source: str, **kwargs):
    return scan_source(textwrap.dedent(source), "pkg/mod.py", {1, 2}, **kwargs)


def problems_of(source: str, **kwargs) -> str:
    return "\n".join(scan(source, **kwargs)[1])


def test_a_valid_region_is_found_with_its_tag_description_and_indentation():
    regions, problems = scan('''\
        def softmax(x):
            """doc"""
            ### BEGIN SOLUTION a2: numerically stable softmax
            return x
            ### END SOLUTION
        ''')
    assert problems == []
    (region,) = regions
    assert (region.begin, region.end, region.number, region.what, region.indent) == \
        (3, 5, 2, "numerically stable softmax", "    ")


def test_marker_text_inside_strings_is_not_a_marker():
    assert scan('DOC = """\n### BEGIN SOLUTION a1: not a marker, just text\n"""\n') == ([], [])


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    ### BEGIN SOLUTION a1: x\n    return 1\n",
     "pkg/mod.py:2: BEGIN SOLUTION is never closed"),
    ("def f():\n    return 1\n    ### END SOLUTION\n",
     "pkg/mod.py:3: END SOLUTION without a BEGIN SOLUTION"),
    ("def f():\n    ### BEGIN SOLUTION a1: x\n    ### BEGIN SOLUTION a1: y\n    return 1\n"
     "    ### END SOLUTION\n", "pkg/mod.py:3: BEGIN SOLUTION inside the region opened at line 2"),
    ("def f():\n    ### BEGIN SOLUTION a7: x\n    return 1\n    ### END SOLUTION\n",
     "pkg/mod.py:2: BEGIN SOLUTION needs a tag of the manifest (a1, a2), got 'a7'"),
    ("def f():\n    ### BEGIN SOLUTION: x\n    return 1\n    ### END SOLUTION\n",
     "pkg/mod.py:2: BEGIN SOLUTION needs a tag of the manifest (a1, a2), got ''"),
    ("def f():\n    ## BEGIN SOLUTION a1: x\n    return 1\n    ### END SOLUTION\n",
     "pkg/mod.py:2: malformed solution marker"),
    ("def f():\n    x = 1  ### BEGIN SOLUTION a1: x\n    return x\n    ### END SOLUTION\n",
     "pkg/mod.py:2: malformed solution marker"),
    ("def f():\n    ### BEGIN SOLUTION a1: x\n    return 1\n    ### END SOLUTION a2\n",
     "pkg/mod.py:4: END SOLUTION does not match the BEGIN SOLUTION at line 2"),
    ("def f():\n    ### BEGIN SOLUTION a1: x\n    return 1\n  ### END SOLUTION\n",
     "pkg/mod.py:4: END SOLUTION does not match the BEGIN SOLUTION at line 2"),
    ("def f():\n    ### BEGIN SOLUTION a1: x\n    # nothing\n    ### END SOLUTION\n    return 1\n",
     "pkg/mod.py:2: a region holds whole statements of one block, at least one"),
    ("def f(x):\n    ### BEGIN SOLUTION a1: x\n    if x:\n    ### END SOLUTION\n        return 1\n",
     "pkg/mod.py:2: a region holds whole statements of one block, at least one"),
])
def test_marker_errors_name_file_and_line(source, expected):
    assert expected in problems_of(source)


def test_module_level_regions_are_refused_in_python_files_but_not_in_notebook_cells():
    module_level = "### BEGIN SOLUTION a1: x\nTABLE = 1\n### END SOLUTION\n"
    assert "pkg/mod.py:1: a region at module level would break `import`" in problems_of(module_level)
    regions, problems = scan_source("%time x = 1\n!ls\n" + module_level, "n.ipynb", {1}, cell=2)
    assert problems == [] and regions[0].location == "n.ipynb[cell 2]:3"   # magics are no obstacle


def test_a_generator_stays_a_generator_once_stubbed():
    source = textwrap.dedent('''\
        def countdown(n):
            """doc"""
            ### BEGIN SOLUTION a1: the loop
            while n:
                yield n
                n -= 1
            ### END SOLUTION
        ''')
    regions, problems = scan_source(source, "gen.py", {1})
    assert problems == [] and regions[0].yields
    namespace = {}
    exec(compile(render(source, regions, {1}, load_manifest(FIXTURE)), "gen.py", "exec"), namespace)
    assert inspect.isgeneratorfunction(namespace["countdown"])
    with pytest.raises(NotImplementedError, match="Assignment 1"):
        next(namespace["countdown"](3))


def test_a_yield_in_a_nested_function_does_not_make_a_generator():
    regions, problems = scan('''\
        def f():
            ### BEGIN SOLUTION a1: x
            def helper():
                yield 1
            return list(helper())
            ### END SOLUTION
        ''')
    assert problems == [] and not regions[0].yields


def test_render_keeps_indentation_and_line_endings_and_drops_unselected_markers():
    source = ("def f(x):\r\n\t'''doc'''\r\n\t### BEGIN SOLUTION a1: the thing\r\n\treturn x\r\n"
              "\t### END SOLUTION\r\n\r\ndef g(x):\r\n\t### BEGIN SOLUTION a2: other\r\n"
              "\treturn -x\r\n\t### END SOLUTION\r\n")
    regions, problems = scan_source(source, "m.py", {1, 2})
    assert problems == []
    assert render(source, regions, {1}, load_manifest(FIXTURE)) == (
        "def f(x):\r\n\t'''doc'''\r\n\traise NotImplementedError(\"Assignment 1 (basics): "
        "implement the thing — see assignments/01-basics.md\")\r\n\r\ndef g(x):\r\n\treturn -x\r\n")
