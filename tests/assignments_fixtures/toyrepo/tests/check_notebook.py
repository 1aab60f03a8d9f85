from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "demo.ipynb"


class CellError(Exception):
    """Like nbclient's CellExecutionError: the kernel's error known by name only."""

    def __init__(self, ename, evalue):
        super().__init__(f"{ename}: {evalue}")
        self.ename, self.evalue = ename, evalue


def run_notebook(path):
    """Execute the code cells in one namespace, skipping IPython magics."""
    namespace = {}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        code = "".join(line for line in cell.source.splitlines(keepends=True)
                       if not line.lstrip().startswith("%"))
        error = None
        try:
            exec(compile(code, str(path), "exec"), namespace)
        except Exception as exc:   # a kernel reports its error by name, not as an exception
            error = CellError(type(exc).__name__, str(exc))
        if error is not None:
            raise error
    return namespace


@pytest.mark.assignment(1)
def test_demo_notebook():
    namespace = run_notebook(NOTEBOOK)
    assert namespace["probs"].sum() == pytest.approx(1.0)
    assert namespace["double"](4) == 8
