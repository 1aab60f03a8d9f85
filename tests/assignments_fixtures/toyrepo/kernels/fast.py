"""Assignment 2 of the toy course: a region in the loop of a numba kernel."""
import numpy as np
from numba import njit


@njit(cache=False)
def sum_of_squares(x):
    """sum(x ** 2), one element at a time."""
    total = 0.0
    for i in range(x.shape[0]):
        ### BEGIN SOLUTION a2: the square-and-accumulate step
        square = x[i] * x[i]
        total += square
        ### END SOLUTION
    return total


def norm(x):
    """Euclidean norm through the kernel."""
    return np.sqrt(sum_of_squares(np.ascontiguousarray(x, dtype=np.float64)))
