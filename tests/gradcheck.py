"""Finite-difference gradient checks in float64, and source-level mutations of a function.

    numerical dL/dx_i = (L(x + h e_i) - L(x - h e_i)) / 2h,   L = sum(f(x) * dy)

with a random upstream gradient dy, so every output element's gradient is exercised. In
float64 with h = 1e-5 the central difference is accurate to ~1e-10 relative; a correct
backward agrees to far better than the 1e-6 these tests ask, and a wrong one (a dropped
term, a missing factor) misses by orders of magnitude.
"""
from __future__ import annotations

import inspect
import textwrap

import numpy as np

STEP = 1e-5


def numerical_gradient(loss, x: np.ndarray) -> np.ndarray:
    """dloss/dx by central differences, one element at a time (x is perturbed in place and restored)."""
    grad = np.zeros_like(x)
    flat, grad_flat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + STEP
        plus = loss()
        flat[i] = original - STEP
        minus = loss()
        flat[i] = original
        grad_flat[i] = (plus - minus) / (2 * STEP)
    return grad


def relative_error(numerical: np.ndarray, analytical: np.ndarray) -> float:
    """||numerical - analytical|| / (||numerical|| + ||analytical||): 0 when equal, 1 when unrelated."""
    denominator = np.linalg.norm(numerical) + np.linalg.norm(analytical)
    return float(np.linalg.norm(numerical - analytical) / max(denominator, 1e-300))


def mutate(function, *replacements: tuple[str, str]):
    """`function` recompiled from its source with each (old, new) replacement made (each old
    must occur): a plausible bug, to show that a test catches it."""
    source = textwrap.dedent(inspect.getsource(function))
    for old, new in replacements:
        assert old in source, f"{old!r} not found in {function.__name__}'s source"
        source = source.replace(old, new)
    namespace = dict(function.__globals__)
    exec(compile(source, inspect.getsourcefile(function), "exec"), namespace)
    return namespace[function.__name__]
