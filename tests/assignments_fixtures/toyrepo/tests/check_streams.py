import pytest

from toypkg.streams import countdown

pytestmark = pytest.mark.assignment(3)   # the whole module grades a3


def test_countdown():
    assert list(countdown(3)) == [3, 2, 1]


def test_countdown_is_lazy():
    numbers = countdown(10 ** 9)
    assert next(numbers) == 10 ** 9
