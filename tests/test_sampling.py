"""Token choice: the filtered distributions against hand-computed ones and HF's outputs,
properties of top-k / top-p, and the empirical frequencies of seeded samples."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.inference.sampling import (TokenChooser, check_sampling_args, draw, filtered_probs, greedy, sample,
                              top_k_filter, top_p_filter)

# probabilities 0.1, 0.2, 0.3, 0.4
LOGITS_1234 = np.log(np.array([1.0, 2.0, 3.0, 4.0])).astype(np.float32)


def test_no_filter_is_plain_softmax():
    np.testing.assert_allclose(filtered_probs(LOGITS_1234), [0.1, 0.2, 0.3, 0.4], atol=1e-7)


def test_temperature_sharpens():
    # p^(1/T) renormalised: T = 0.5 squares the probabilities -> 1, 4, 9, 16 over 30
    np.testing.assert_allclose(filtered_probs(LOGITS_1234, temperature=0.5),
                               np.array([1, 4, 9, 16]) / 30, atol=1e-6)


@pytest.mark.parametrize("top_k, expected", [
    (1, [0, 0, 0, 1]),
    (2, [0, 0, 3 / 7, 4 / 7]),
    (4, [0.1, 0.2, 0.3, 0.4]),
    (100, [0.1, 0.2, 0.3, 0.4]),            # k larger than the vocabulary keeps everything
])
@pytest.mark.assignment(4)
def test_top_k(top_k, expected):
    np.testing.assert_allclose(filtered_probs(LOGITS_1234, top_k=top_k), expected, atol=1e-6)


@pytest.mark.parametrize("top_p, expected", [
    (0.35, [0, 0, 0, 1]),                   # 0.4 alone already reaches 0.35
    (0.65, [0, 0, 3 / 7, 4 / 7]),           # 0.4 < 0.65 <= 0.4 + 0.3
    (0.75, [0, 2 / 9, 3 / 9, 4 / 9]),       # 0.7 < 0.75 <= 0.9
    (1e-9, [0, 0, 0, 1]),                   # never fewer than one token
])
@pytest.mark.assignment(4)
def test_top_p(top_p, expected):
    np.testing.assert_allclose(filtered_probs(LOGITS_1234, top_p=top_p), expected, atol=1e-6)


def test_top_p_of_one_is_no_filter():
    np.testing.assert_allclose(filtered_probs(LOGITS_1234, top_p=1.0), [0.1, 0.2, 0.3, 0.4], atol=1e-6)


@pytest.mark.assignment(4)
def test_hf_order_temperature_then_top_k_then_top_p():
    # T = 0.5 -> 1, 4, 9, 16 (/30); top-k 3 -> 4, 9, 16 (/29); top-p 0.8: 16/29 = 0.55 < 0.8,
    # 25/29 = 0.86 >= 0.8 -> 9, 16 (/25)
    probs = filtered_probs(LOGITS_1234, temperature=0.5, top_k=3, top_p=0.8)
    np.testing.assert_allclose(probs, [0, 0, 0.36, 0.64], atol=1e-6)


@pytest.mark.assignment(4)
def test_top_k_keeps_every_logit_tied_with_the_kth():
    logits = np.array([1, 3, 3, 2, 3], np.float32)      # HF's TopKLogitsWarper keeps all three 3s
    np.testing.assert_allclose(filtered_probs(logits, top_k=2), [0, 1 / 3, 1 / 3, 0, 1 / 3], atol=1e-7)


@pytest.mark.parametrize("n, top_p, kept", [
    # HF's TopPLogitsWarper on uniform logits (recorded with transformers 5.24): the count
    # follows its float32 arithmetic (10 x 0.1 with p = 0.9 keeps 9, not 10), and tied tokens
    # are dropped lowest id first.
    (10, 0.9, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    (4, 0.5, [2, 3]),
    (3, 1 / 3, [2]),
    (8, 0.25, [6, 7]),
])
@pytest.mark.assignment(4)
def test_top_p_on_ties_matches_hf(n, top_p, kept):
    probs = filtered_probs(np.zeros(n, np.float32), top_p=top_p)
    assert np.flatnonzero(probs).tolist() == kept
    np.testing.assert_allclose(probs[kept], 1 / len(kept))


@pytest.mark.assignment(4)
def test_filters_work_row_by_row():
    logits = np.stack([LOGITS_1234, LOGITS_1234[::-1]])
    probs = filtered_probs(logits, top_p=0.65)
    np.testing.assert_allclose(probs, [[0, 0, 3 / 7, 4 / 7], [4 / 7, 3 / 7, 0, 0]], atol=1e-6)


# ---- properties --------------------------------------------------------------------------------
logit_vectors = st.lists(st.floats(-20, 20, width=32), min_size=1, max_size=40).map(
    lambda xs: np.array(xs, np.float32))
probabilities = st.floats(1e-6, 1.0)


def _softmax(x):
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


@settings(max_examples=300, deadline=None)
@given(logit_vectors, probabilities)
def test_top_p_keeps_the_smallest_top_set_with_mass_p(logits, top_p):
    probs = _softmax(logits)
    kept = filtered_probs(logits, top_p=top_p) > 0
    assert kept.any()
    if (~kept).any():
        assert logits[kept].min() >= logits[~kept].max()          # the most likely tokens
    mass = probs[kept].sum()
    assert mass >= top_p - 1e-5                                     # enough mass ...
    assert mass - probs[kept].min() < top_p + 1e-5                  # ... and no token to spare
    np.testing.assert_allclose(filtered_probs(logits, top_p=top_p)[kept], probs[kept] / mass, rtol=1e-5)


@settings(max_examples=200, deadline=None)
@given(logit_vectors, st.integers(1, 50))
def test_top_k_keeps_everything_at_least_the_kth_largest(logits, top_k):
    kept = np.isfinite(top_k_filter(logits, top_k))
    kth_largest = np.sort(logits)[::-1][min(top_k, len(logits)) - 1]
    assert (kept == (logits >= kth_largest)).all()
    assert kept.sum() >= min(top_k, len(logits))


@settings(max_examples=100, deadline=None)
@given(logit_vectors, st.floats(0.05, 5.0), st.integers(1, 10), probabilities)
def test_filtered_probs_is_a_distribution(logits, temperature, top_k, top_p):
    probs = filtered_probs(logits, temperature, top_k, top_p)
    assert probs.dtype == np.float64
    assert probs.min() >= 0 and abs(probs.sum() - 1) < 1e-12
    assert logits[probs > 0].max() == logits.max()                  # a most likely token survives


@pytest.mark.assignment(4)
def test_top_p_filter_on_a_gpt2_sized_row_keeps_a_prefix_of_the_sorted_tokens():
    logits = np.random.default_rng(0).standard_normal(50257).astype(np.float32) * 3
    kept = np.isfinite(top_p_filter(logits, 0.9))
    order = np.argsort(-logits)
    assert kept[order].tolist() == [True] * kept.sum() + [False] * (~kept).sum()


# ---- drawing tokens ----------------------------------------------------------------------------
@pytest.mark.parametrize("settings_", [
    dict(),
    dict(temperature=0.7),
    dict(temperature=1.5, top_k=4),
    dict(top_p=0.8),
    dict(temperature=0.8, top_k=5, top_p=0.9),
])
def test_sample_frequencies_match_filtered_probs(settings_):
    logits = np.array([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], np.float32)
    expected = filtered_probs(logits, **settings_)
    n = 40_000
    draws = draw(np.tile(expected, (n, 1)), np.random.default_rng(1))
    counts = np.bincount(draws, minlength=len(logits))
    assert (counts[expected == 0] == 0).all()                        # filtered: never drawn
    support = expected > 0
    chi2 = (((counts - n * expected)[support]) ** 2 / (n * expected[support])).sum()
    dof = support.sum() - 1
    assert chi2 < dof + 6 * np.sqrt(2 * max(dof, 1)) + 6, (chi2, dof)   # p < 1e-4 for these dof
    # sample() is exactly draw(filtered_probs(...)): same generator state, same tokens
    rows = np.tile(logits, (500, 1))
    np.testing.assert_array_equal(sample(rows, np.random.default_rng(2), **settings_),
                                  draw(np.tile(expected, (500, 1)), np.random.default_rng(2)))


def test_sampling_a_point_mass_always_returns_it():
    logits = np.array([[0.0, 50.0, -50.0, 0.0]], np.float32)
    assert sample(np.repeat(logits, 1000, 0), np.random.default_rng(0), top_k=1).tolist() == [1] * 1000


def test_seeded_chooser_is_reproducible_and_leaves_the_global_rng_alone():
    logits = np.random.default_rng(0).standard_normal((3, 100)).astype(np.float32)
    np.random.seed(123)
    global_state = np.random.get_state()[1].copy()

    def twenty_steps(seed):
        choose = TokenChooser(do_sample=True, seed=seed)
        return [choose(logits).tolist() for _ in range(20)]

    assert twenty_steps(7) == twenty_steps(7)
    assert twenty_steps(7) != twenty_steps(8)
    assert (np.random.get_state()[1] == global_state).all()


def test_greedy_and_temperature_zero_take_the_first_argmax():
    logits = np.array([[0.0, 2.0, 2.0, 1.0]], np.float32)
    assert greedy(logits).tolist() == [1]
    assert TokenChooser(do_sample=False, temperature=5.0)(logits).tolist() == [1]
    assert TokenChooser(do_sample=True, temperature=0.0, seed=0)(logits).tolist() == [1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.5), r"temperature must be a finite number >= 0 \(0 means greedy\), got -0.5"),
    (dict(temperature=float("nan")), r"temperature must be .* got nan"),
    (dict(temperature="hot"), r"temperature must be .* got 'hot'"),
    (dict(top_k=0), r"top_k must be an int >= 1 \(or None for no top-k filter\), got 0"),
    (dict(top_k=2.5), r"top_k must be an int >= 1 .* got 2.5"),
    (dict(top_k=True), r"top_k must be an int >= 1 .* got True"),
    (dict(top_p=0.0), r"top_p must be a number in \(0, 1\] \(or None for no top-p filter\), got 0.0"),
    (dict(top_p=1.5), r"top_p must be a number in \(0, 1\] .* got 1.5"),
    (dict(top_p=-0.1), r"top_p must be .* got -0.1"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    args = dict(temperature=1.0, top_k=None, top_p=None) | kwargs
    with pytest.raises(ValueError, match=message):
        check_sampling_args(**args)
    with pytest.raises(ValueError, match=message):
        TokenChooser(do_sample=True, **kwargs)


def test_bad_seed():
    with pytest.raises(ValueError, match=r"seed must be an int >= 0 or None, got -1"):
        TokenChooser(True, seed=-1)
