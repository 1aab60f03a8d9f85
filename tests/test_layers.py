"""The building blocks, each against a float64 formula written out the slow, plain way."""
import math

import numpy as np
import pytest

from minillm.model.attention import (attention_mask_bias, causal_attention, causal_mask, merge_heads,
                               split_heads)
from minillm.model.layers import gelu, layer_norm, linear, softmax

from oracles import float32_normals, naive_attention

randn = float32_normals(seed=0)
erf = np.vectorize(math.erf)


def gelu_tanh_f64(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_erf_f64(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


# ------------------------------------------------------------------------------ layer_norm
@pytest.mark.assignment(3)
def test_layer_norm_matches_formula():
    x, gain, bias = randn(3, 5, 16, scale=3.0), randn(16), randn(16)
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdims=True)          # biased, as in PyTorch
    expected = (x64 - mean) / np.sqrt(var + 1e-5) * gain + bias
    out = layer_norm(x, gain, bias, 1e-5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


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
    x = np.linspace(-8, 8, 10001, dtype=np.float32)
    out = gelu(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, gelu_tanh_f64(x), rtol=0, atol=2e-6)


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
@pytest.mark.parametrize("n_queries, n_keys", [(6, 6), (1, 7), (3, 8)])
def test_attention_matches_naive_loop(n_queries, n_keys):
    q, k, v = randn(2, 3, n_queries, 8, scale=2.0), randn(2, 3, n_keys, 8, scale=2.0), randn(2, 3, n_keys, 8)
    out = causal_attention(q, k, v)
    assert out.dtype == np.float32 and out.shape == q.shape
    np.testing.assert_allclose(out, naive_attention(q, k, v), atol=1e-5)


@pytest.mark.assignment(2)
def test_attention_with_left_padding_matches_naive_loop():
    q, k, v = randn(2, 2, 5, 4, scale=2.0), randn(2, 2, 5, 4, scale=2.0), randn(2, 2, 5, 4)
    key_valid = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    out = causal_attention(q, k, v, key_valid)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, naive_attention(q, k, v, key_valid), atol=1e-5)
    np.testing.assert_array_equal(out[0, :, :2], 0)          # padding queries see no key


@pytest.mark.assignment(2)
def test_causal_mask_values():
    mask = causal_mask(2, 4)                                   # queries at positions 2 and 3
    expected = np.array([[0, 0, 0, -np.inf], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == np.float32
    assert attention_mask_bias(np.ones((3, 4), bool), 2, 4).shape == (3, 1, 2, 4)


@pytest.mark.assignment(2)
def test_split_merge_heads_round_trip():
    x = randn(2, 5, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(heads[:, 1], x[:, :, 4:8])   # head h owns features h*d:(h+1)*d
    np.testing.assert_array_equal(merge_heads(heads), x)
