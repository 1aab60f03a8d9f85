"""The exercise cells of the notebooks, graded with their assignment.

An exercise cell holds a solution region of assignment N under the comment
`# Exercise (assignment N): ...`, which, unlike the markers, is in every copy: the instructor's,
a release stubbing N, and a release of other assignments. Each test runs a notebook's code cells
in this process, from the top down to that cell, so the cell's own asserts decide, and a stub
raises NotImplementedError straight into the test. Running whole notebooks in a kernel is
tests/test_notebooks.py's job.
"""
from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the dev extra (nbformat)")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def is_exercise(source: str, assignment: int) -> bool:
    return f"# Exercise (assignment {assignment}):" in source


def code_cells_through_exercise(path: Path, assignment: int) -> list[tuple[int, str]]:
    """(cell number, source) of every code cell up to and including the first exercise cell."""
    cells = []
    for number, cell in enumerate(nbformat.read(path, as_version=4).cells, 1):
        if cell.cell_type == "code":
            cells.append((number, cell.source))
            if is_exercise(cell.source, assignment):
                return cells
    raise AssertionError(f"{path.name} has no exercise cell of assignment {assignment}")


def run_through_exercise(path: Path, assignment: int, monkeypatch) -> dict:
    """Execute the cells in one namespace with cwd = notebooks/, as a learner would; plots
    go to a non-interactive backend."""
    import matplotlib
    import matplotlib.pyplot as plt

    monkeypatch.chdir(NOTEBOOK_DIR)
    previous_backend = matplotlib.get_backend()
    plt.switch_backend("Agg")
    namespace: dict = {"__name__": "__main__"}
    try:
        for number, source in code_cells_through_exercise(path, assignment):
            exec(compile(source, f"{path.name}[cell {number}]", "exec"), namespace)
    finally:
        plt.close("all")
        plt.switch_backend(previous_backend)
    return namespace


# Section 2 of the notebook runs LayerNorm (a3) on the way to the exercise.
@pytest.mark.assignment(2, uses=[3])
def test_attention_notebook_scaled_masked_scores(monkeypatch):
    namespace = run_through_exercise(NOTEBOOK_DIR / "02_attention.ipynb", 2, monkeypatch)
    assert namespace["scores"].shape == (namespace["T"], namespace["T"])
