"""Assignment 1 of the toy course: regions in a function, a method, a loop body, a closure."""
import numpy as np


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along axis."""
    ### BEGIN SOLUTION a1: numerically stable softmax
    shifted = x - x.max(axis=axis, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=axis, keepdims=True)
    ### END SOLUTION


class RunningMean:
    """Mean of the values seen so far."""

    def __init__(self):
        self.total = 0.0
        self.count = 0

    def add(self, value):
        """Fold one value in."""
        ### BEGIN SOLUTION a1: the update of total and count
        self.total += value
        self.count += 1
        ### END SOLUTION a1

    @property
    def mean(self):
        return self.total / self.count if self.count else 0.0


def cumulative(values):
    """Prefix sums of values."""
    out, total = [], 0
    for value in values:
        ### BEGIN SOLUTION a1: the loop body of the prefix sum
        total += value
        out.append(total)
        ### END SOLUTION
    return out


def make_scaler(factor):
    """A function that multiplies by factor."""
    def scale(x):
        ### BEGIN SOLUTION a1: the scaling
        return x * factor
        ### END SOLUTION
    return scale
