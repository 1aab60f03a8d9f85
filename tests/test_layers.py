"""The building blocks, each against a float64 formula written out the slow, plain way."""
import math
from pathlib import Path

import numpy as np
import pytest

from minillm.model.attention import (attention_mask_bias, causal_attention, causal_mask, merge_heads,
                               split_heads)
from minillm.model.layers import gelu, layer_norm, linear, softmax

from oracles import float32_normals

randn = float32_normals(seed=0)
erf = np.vectorize(math.erf)
# What the oracles of tests/oracles.py (withheld from the student copy) computed, recorded with
# their inputs by scripts/record_oracles.py
RECORDED = Path(__file__).parent / "data" / "oracles"


def recorded_case(file: str, name: str) -> dict[str, np.ndarray]:
    with np.load(RECORDED / file) as data:
        return {key.split("/")[1]: data[key] for key in data.files if key.startswith(name + "/")}


def attention_case(name: str) -> dict[str, np.ndarray]:
    return recorded_case("attention.npz", name)


def assert_attention_close(out, expected, n_keys, key_valid=None, atol=1e-5):
    """Says which (batch, head, query) row is wrong first, and how, not only that some are."""
    assert out.shape == expected.shape, f"output shape {out.shape}, expected {expected.shape}"
    wrong = ~(np.abs(out.astype(np.float64) - expected).max(axis=-1) <= atol)   # (B, H, Tq); nan too
    if wrong.any():
        b, h, i = np.argwhere(wrong)[0]
        last_key = n_keys - out.shape[2] + i                   # the queries are the last Tq positions
        padding = "" if key_valid is None else f", of which valid: {key_valid[b].astype(int)}"
        raise AssertionError(
            f"{wrong.sum()} of {wrong.size} output rows differ by more than {atol}; the first is "
            f"batch {b}, head {h}, query {i}, which sees keys 0..{last_key}{padding}\n"
            f"  got      {np.array2string(out[b, h, i], precision=4)}\n"
            f"  expected {np.array2string(expected[b, h, i].astype(np.float32), precision=4)}")


def gelu_erf_f64(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


# ------------------------------------------------------------------------------ layer_norm
@pytest.mark.assignment(3)
def test_layer_norm_matches_formula():
    case = recorded_case("layers.npz", "layer_norm")            # the variance is the biased one
    out = layer_norm(case["x"], case["gain"], case["bias"], 1e-5)
    assert out.dtype == np.float32, f"output dtype {out.dtype}, expected float32"
    np.testing.assert_allclose(out, case["expected"], rtol=0, atol=1e-5)


@pytest.mark.assignment(3)
def test_layer_norm_normalises_and_uses_eps():
    x = randn(4, 32, scale=5.0) + 7.0
    out = layer_norm(x, np.ones(32, np.float32), np.zeros(32, np.float32))
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(out.var(-1), 1, atol=1e-3)
    # For a small-variance input eps is not negligible: 1e-5 vs 1e-6 must differ.
    small = randn(4, 32, scale=0.01)
    ones, zeros = np.ones(32, np.float32), np.zeros(32, np.float32)
    assert np.abs(layer_norm(small, ones, zeros, 1e-5) - layer_norm(small, ones, zeros, 1e-6)).max() > 1e-3


@pytest.mark.assignment(3)
def test_layer_norm_of_constant_row_is_bias():
    out = layer_norm(np.full((2, 8), 3.0, np.float32), randn(8), np.arange(8, dtype=np.float32))
    np.testing.assert_array_equal(out, np.broadcast_to(np.arange(8, dtype=np.float32), (2, 8)))


# ------------------------------------------------------------------------------------ gelu
@pytest.mark.assignment(3)
def test_gelu_is_the_tanh_form():
    case = recorded_case("layers.npz", "gelu")                  # x from -8 to 8
    out = gelu(case["x"])
    assert out.dtype == np.float32, f"output dtype {out.dtype}, expected float32"
    np.testing.assert_allclose(out, case["expected"], rtol=0, atol=2e-6)


@pytest.mark.assignment(3)
def test_gelu_differs_from_the_erf_form():
    # GPT-2 uses the tanh approximation; the exact erf GELU is a different function, and the
    # difference is big enough for a 1e-4 check to notice.
    x = np.linspace(-5, 5, 10001, dtype=np.float32)
    assert np.abs(gelu(x) - gelu_erf_f64(x)).max() > 1e-4


@pytest.mark.assignment(3)
def test_gelu_limits_and_no_overflow():
    x = np.array([0.0, 30.0, -30.0, 1e20, -1e20, 3e38, -3e38], np.float32)
    with np.errstate(over="ignore"):    # x**3 overflows to inf; tanh(inf) = 1 is still right
        out = gelu(x)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[[0, 2, 4, 6]], 0)
    np.testing.assert_array_equal(out[[1, 3, 5]], x[[1, 3, 5]])


# --------------------------------------------------------------------------------- softmax
@pytest.mark.assignment(2)
def test_softmax_matches_formula_and_sums_to_one():
    x = randn(6, 50, scale=4.0)
    x64 = x.astype(np.float64)
    expected = np.exp(x64) / np.exp(x64).sum(-1, keepdims=True)
    out = softmax(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out.sum(-1), 1, atol=1e-6)


@pytest.mark.assignment(2)
def test_softmax_large_values_do_not_overflow():
    x = np.array([[1e4, 1e4 - 1, 0.0], [1e30, 1e30, -1e30]], np.float32)
    out = softmax(x)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0],
                               atol=1e-6)
    np.testing.assert_allclose(out[1], [0.5, 0.5, 0], atol=1e-6)


@pytest.mark.assignment(2)
def test_softmax_masked_entries_and_all_masked_row():
    x = np.array([[1.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf]], np.float32)
    out = softmax(x)
    np.testing.assert_array_equal(out, [[0.5, 0, 0.5], [0, 0, 0]])


@pytest.mark.assignment(2)
def test_softmax_other_axis():
    x = randn(5, 7)
    np.testing.assert_allclose(softmax(x, axis=0), softmax(x.T).T, atol=1e-7)


# ---------------------------------------------------------------------------------- linear
def test_linear_uses_in_out_layout():
    x, w, b = randn(2, 3, 4), randn(4, 5), randn(5)
    expected = np.einsum("bti,io->bto", x.astype(np.float64), w) + b
    np.testing.assert_allclose(linear(x, w, b), expected, atol=1e-5)
    np.testing.assert_allclose(linear(x, w), expected - b, atol=1e-5)


# ------------------------------------------------------------------------------- attention
@pytest.mark.assignment(2)
@pytest.mark.parametrize("case", ["queries_6_keys_6", "queries_1_keys_7", "queries_3_keys_8"])
def test_attention_matches_naive_loop(case):
    q, k, v, expected = (attention_case(case)[key] for key in ("q", "k", "v", "expected"))
    out = causal_attention(q, k, v)
    assert out.dtype == np.float32, f"output dtype {out.dtype}, expected float32"
    assert_attention_close(out, expected, k.shape[2])


@pytest.mark.assignment(2)
def test_attention_with_left_padding_matches_naive_loop():
    case = attention_case("left_padding")
    q, k, v, key_valid = case["q"], case["k"], case["v"], case["key_valid"]
    out = causal_attention(q, k, v, key_valid)
    assert np.all(np.isfinite(out)), "attention with padding keys returned nan or inf"
    assert_attention_close(out, case["expected"], k.shape[2], key_valid)
    np.testing.assert_array_equal(out[0, :, :2], 0)          # padding queries see no key


@pytest.mark.assignment(2)
def test_causal_mask_values():
    mask = causal_mask(2, 4)                                   # queries at positions 2 and 3
    expected = np.array([[0, 0, 0, -np.inf], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == np.float32, f"mask dtype {mask.dtype}, expected float32"


@pytest.mark.assignment(2)
def test_causal_mask_with_padding_broadcasts_over_heads():
    bias = attention_mask_bias(np.array([[False, True, True, True]] * 3), 2, 4)
    assert bias.shape == (3, 1, 2, 4), f"shape {bias.shape}, expected (batch, 1, queries, keys)"
    np.testing.assert_array_equal(bias[0, 0], [[-np.inf, 0, 0, -np.inf], [-np.inf, 0, 0, 0]])


@pytest.mark.assignment(2)
def test_split_heads_gives_each_head_its_slice_of_features():
    x = randn(2, 5, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4), f"shape {heads.shape}, expected (B, H, T, C/H) = (2, 3, 5, 4)"
    for h in range(3):                                          # head h owns features h*d:(h+1)*d
        np.testing.assert_array_equal(heads[:, h], x[:, :, 4 * h:4 * (h + 1)], err_msg=f"head {h}")


@pytest.mark.assignment(2)
def test_merge_heads_concatenates_the_heads():
    heads = randn(2, 3, 5, 4)                                   # (B, H, T, d)
    merged = merge_heads(heads)
    assert merged.shape == (2, 5, 12), f"shape {merged.shape}, expected (B, T, H*d) = (2, 5, 12)"
    for h in range(3):
        np.testing.assert_array_equal(merged[:, :, 4 * h:4 * (h + 1)], heads[:, h], err_msg=f"head {h}")
