"""Solution markers: how regions are found, validated and rendered into stubs.

The rules are in minillm/course/markers.py; these tests pin each one down on small
sources, and on the manifest of tests/assignments_fixtures/toyrepo.
"""
from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest

from minillm import course as assignments
from minillm.course import load_manifest, render, scan_source

FIXTURE = Path(__file__).parent / "assignments_fixtures" / "toyrepo"


# ---------------------------------------------------------------------------- markers
def scan(source: str, **kwargs):
    return scan_source(textwrap.dedent(source), "pkg/mod.py", known={1, 2}, **kwargs)


def problems_of(source: str, **kwargs) -> str:
    regions, problems = scan(source, **kwargs)
    return "\n".join(problems)


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
    regions, problems = scan('''\
        DOC = """
        ### BEGIN SOLUTION a1: not a marker, just text
        """
        ''')
    assert regions == [] and problems == []


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    ### BEGIN SOLUTION a1: x\n    return 1\n",
     "pkg/mod.py:2: BEGIN SOLUTION is never closed"),
    ("def f():\n    return 1\n    ### END SOLUTION\n",
     "pkg/mod.py:3: END SOLUTION without a BEGIN SOLUTION"),
    ("def f():\n    ### BEGIN SOLUTION a1: x\n    ### BEGIN SOLUTION a1: y\n    return 1\n"
     "    ### END SOLUTION\n", "pkg/mod.py:3: BEGIN SOLUTION inside the region opened at line 2"),
    ("def f():\n    ### BEGIN SOLUTION a7: x\n    return 1\n    ### END SOLUTION\n",
     "pkg/mod.py:2: unknown assignment tag 'a7' (the manifest defines a1, a2)"),
    ("def f():\n    ### BEGIN SOLUTION: x\n    return 1\n    ### END SOLUTION\n",
     "pkg/mod.py:2: BEGIN SOLUTION needs an assignment tag"),
    ("def f():\n    ## BEGIN SOLUTION a1: x\n    return 1\n    ### END SOLUTION\n",
     "pkg/mod.py:2: malformed solution marker"),
    ("def f():\n    x = 1  ### BEGIN SOLUTION a1: x\n    return x\n    ### END SOLUTION\n",
     "pkg/mod.py:2: a solution marker must be on a line of its own"),
    ("def f():\n    ### BEGIN SOLUTION a1: x\n    return 1\n    ### END SOLUTION a2\n",
     "pkg/mod.py:4: END SOLUTION a2 closes the a1 region opened at line 2"),
    ("def f():\n    ### BEGIN SOLUTION a1: x\n    return 1\n  ### END SOLUTION\n",
     "pkg/mod.py:4: END SOLUTION is indented differently"),
])
def test_marker_errors_name_file_and_line(source, expected):
    assert expected in problems_of(source)


def test_module_and_class_level_regions_are_refused_in_python_files():
    module_level = "### BEGIN SOLUTION a1: x\nTABLE = 1\n### END SOLUTION\n"
    assert "pkg/mod.py:1: a region at module level would break `import`" in problems_of(module_level)
    class_level = "class C:\n    ### BEGIN SOLUTION a1: x\n    size = 1\n    ### END SOLUTION\n"
    assert "pkg/mod.py:2: a region in the body of class C" in problems_of(class_level)
    assert problems_of(module_level, allow_top_level=True) == ""   # as in a notebook cell


def test_regions_hold_whole_statements_of_one_block():
    crossing = '''\
        def f(x):
            ### BEGIN SOLUTION a1: part of an if
            if x:
                return 1
            ### END SOLUTION
            else:
                return 2
        '''
    assert "pkg/mod.py:3: the statement on lines 3-7 crosses the boundary" in problems_of(crossing)
    shallow = '''\
        def f(x):
            for item in x:
                ### BEGIN SOLUTION a1: loop and after
                item += 1
            return x
                ### END SOLUTION
        '''
    assert "pkg/mod.py:5: less indented than the BEGIN SOLUTION marker at line 3" in problems_of(shallow)
    misplaced = "def f():\n### BEGIN SOLUTION a1: x\n    return 1\n### END SOLUTION\n"
    assert "the marker is indented 0 but the region's first statement" in problems_of(misplaced)
    empty = "def f():\n    ### BEGIN SOLUTION a1: x\n    # nothing\n    ### END SOLUTION\n    return 1\n"
    assert "pkg/mod.py:2: empty solution region" in problems_of(empty)


def test_regions_in_methods_nested_functions_and_loop_bodies_are_allowed():
    regions, problems = scan('''\
        class C:
            def method(self, xs):
                def inner(x):
                    ### BEGIN SOLUTION a1: inner
                    return x + 1
                    ### END SOLUTION
                for x in xs:
                    if x:
                        ### BEGIN SOLUTION a2: loop body
                        total = inner(x)
                        print(total)
                        ### END SOLUTION
                return xs
        ''')
    assert problems == [] and [r.number for r in regions] == [1, 2]


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
    regions, problems = scan_source(source, "gen.py", known={1})
    assert problems == [] and regions[0].has_yield
    stubbed = render(source.splitlines(keepends=True), regions, {1}, load_manifest(FIXTURE))
    namespace = {}
    exec(compile(stubbed, "gen.py", "exec"), namespace)
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
    assert problems == [] and not regions[0].has_yield


def test_numba_specific_rules():
    jit_generator = '''\
        @njit
        def gen(n):
            ### BEGIN SOLUTION a1: x
            yield n
            ### END SOLUTION
        '''
    assert "numba cannot compile the stub of a region with `yield`" in problems_of(jit_generator)
    cuda_kernel = '''\
        @cuda.jit
        def kernel(x):
            ### BEGIN SOLUTION a1: x
            x[0] = 1
            ### END SOLUTION
        '''
    assert "@cuda.jit kernel, where a raised exception is not reported" in problems_of(cuda_kernel)
    name_used_after = '''\
        @njit(cache=True)
        def total(x):
            for i in range(x.shape[0]):
                ### BEGIN SOLUTION a1: x
                acc = x[i]
                ### END SOLUTION
                x[i] = acc
            return acc
        '''
    # `x[i] = acc` right after the region is dead code after the stub; `return acc` is not.
    assert "acc bound only inside the region but used after it in jitted total" in \
        problems_of(name_used_after)
    assert problems_of(name_used_after.replace("            return acc\n", "")) == ""


def test_render_keeps_indentation_and_line_endings_and_drops_unselected_markers():
    source = ("def f(x):\r\n\t'''doc'''\r\n\t### BEGIN SOLUTION a1: the thing\r\n\treturn x\r\n"
              "\t### END SOLUTION\r\n\r\ndef g(x):\r\n\t### BEGIN SOLUTION a2: other\r\n"
              "\treturn -x\r\n\t### END SOLUTION\r\n")
    regions, problems = scan_source(source, "m.py", known={1, 2})
    assert problems == []
    assert render(source.splitlines(keepends=True), regions, {1}, load_manifest(FIXTURE)) == (
        "def f(x):\r\n\t'''doc'''\r\n\traise NotImplementedError(\"Assignment 1 (basics): "
        "implement the thing — see assignments/01-basics.md\")\r\n\r\ndef g(x):\r\n\treturn -x\r\n")


def test_notebook_magics_do_not_hide_regions_or_shift_lines():
    view = assignments.python_view("%time x = 1\n!ls\ny = !pwd\n### BEGIN SOLUTION a1: z\nz = 1\n"
                                   "### END SOLUTION\n")
    regions, problems = scan_source(view, "n.ipynb", known={1}, cell=2, allow_top_level=True)
    assert problems == [] and regions[0].location == "n.ipynb[cell 2]:4"
    assert assignments.python_view("%%bash\necho hi\n") is None
