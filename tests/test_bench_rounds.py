"""The engine benchmark's round order (benchmarks/bench_engines.py round_order): every round
runs every variant once, and no variant always follows the same one (the variant after a
heavy run, or after another process, starts at a disadvantage on a shared machine)."""
import importlib.util
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_engines.py"
_SPEC = importlib.util.spec_from_file_location("bench_engines_under_test", _PATH)
bench_engines = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench_engines          # its dataclasses look their module up there
_SPEC.loader.exec_module(bench_engines)          # standard-library imports only at the top


@given(st.integers(1, 12), st.integers(0, 50))
def test_every_round_runs_every_variant_once(n, round_index):
    variants = list(range(n))
    assert sorted(bench_engines.round_order(variants, round_index)) == variants


def _predecessors(n: int, rounds: int) -> dict[int, set[int]]:
    """Which variants ran just before each one (a round's first follows the last round's last)."""
    runs = [v for r in range(rounds) for v in bench_engines.round_order(list(range(n)), r)]
    seen = {v: set() for v in range(n)}
    for before, after in zip(runs, runs[1:]):
        seen[after].add(before)
    return seen


def test_seven_variants_follow_most_of_the_others_within_seven_rounds():
    """bench_engines' seven columns: in 7 rounds each runs after at least 5 of the other 6
    (turning one fixed order gave each the same one, bar a round's first)."""
    for v, before in _predecessors(7, 7).items():
        assert len(before - {v}) >= 5


@given(st.integers(3, 12))
def test_no_variant_always_follows_the_same_one(n):
    assert all(len(before - {v}) >= 2 for v, before in _predecessors(n, n).items())
