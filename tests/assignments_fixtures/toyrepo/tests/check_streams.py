# No markers: the manifest grades this whole file for a3.
from toypkg.streams import countdown


def test_countdown():
    assert list(countdown(3)) == [3, 2, 1]


def test_countdown_is_lazy():
    numbers = countdown(10 ** 9)
    assert next(numbers) == 10 ** 9
