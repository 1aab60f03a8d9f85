import numpy as np
import pytest

from toypkg.kernels.fast import norm, sum_of_squares
from toypkg.mathops import softmax


@pytest.mark.assignment(2)
def test_sum_of_squares_matches_numpy():
    x = np.arange(5.0)
    assert sum_of_squares(x) == pytest.approx(np.sum(x * x))


@pytest.mark.assignment(2)
def test_norm_of_ones():
    assert norm(np.ones(4)) == pytest.approx(2.0)


@pytest.mark.assignment(2, uses=[1])
def test_norm_of_softmax_is_at_most_one():
    assert norm(softmax(np.array([0.0, 1.0, 2.0]))) <= 1.0
