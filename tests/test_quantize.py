"""Reduced-precision weights: the quantisers' error bounds, the numba kernels against the
dequantised reference, and the quantised model against the float32 one."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minillm.inference.kv_cache import KVCache
from minillm.model.config import GPT2Config
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params
from minillm.model.quantize import (INT8_MAX, QuantizedMatrix, quantize,
                                    quantize_params, weight_bytes)

INT8_BLOCK_TESTED = 32        # several blocks per row on small matrices
finite_weights = st.floats(-4, 4, width=32, allow_subnormal=False)


# ---- the quantisers --------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.sampled_from([32, 64, 96])),
              elements=finite_weights))
def test_int8_error_is_at_most_half_a_step_and_block_maxima_are_exact(w):
    q = quantize(w, "int8", block=INT8_BLOCK_TESTED)
    assert q.data.dtype == np.int8 and q.scales.dtype == np.float32
    assert np.abs(q.data.astype(int)).max() <= INT8_MAX
    step = np.repeat(q.scales, INT8_BLOCK_TESTED, axis=1)                  # (rows, cols): each weight's scale
    error = np.abs(q.dequantize() - w)
    assert np.all(error <= step / 2 * (1 + 1e-5) + 1e-12)
    blocks = np.abs(w).reshape(w.shape[0], -1, INT8_BLOCK_TESTED)
    # the largest weight of each block is +-127 steps, i.e. exact up to float32 rounding
    largest = np.take_along_axis(q.data.reshape(blocks.shape), blocks.argmax(2)[..., None], 2)
    assert np.all(np.abs(largest.astype(int)) == np.where(blocks.max(2, keepdims=True) > 0, INT8_MAX, 0))


def test_int8_all_zero_block_stays_zero_and_scale_is_per_block():
    w = np.zeros((2, 64), np.float32)
    w[0, 40] = 3.0                                                 # only the second block of row 0
    q = quantize(w, "int8", block=32)
    assert q.scales.tolist() == [[0.0, pytest.approx(3.0 / 127)], [0.0, 0.0]]
    np.testing.assert_array_equal(q.dequantize(), w)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, (3, 32), elements=finite_weights))
def test_float16_is_round_to_nearest(w):
    h = quantize(w, "float16")
    np.testing.assert_array_equal(h.dequantize(), w.astype(np.float16).astype(np.float32))
    assert np.all(np.abs(h.dequantize() - w) <= np.abs(w) * 2.0 ** -11 + 2.0 ** -25)


def test_take_rows_is_the_dequantised_rows():
    w = np.random.default_rng(0).standard_normal((10, 64), dtype=np.float32)
    ids = np.array([[3, 3, 9], [0, 1, 2]])
    for dtype in ("float16", "int8"):
        q = quantize(w, dtype)
        np.testing.assert_array_equal(q.take_rows(ids), q.dequantize()[ids])


def test_int8_scale_defaults_to_one_per_output_channel_or_per_block_if_asked():
    assert quantize(np.ones((2, 256), np.float32), "int8").scales.shape == (2, 1)   # per channel
    assert quantize(np.ones((2, 256), np.float32), "int8").block == 256
    assert quantize(np.ones((2, 256), np.float32), "int8", block=128).scales.shape == (2, 2)
    assert quantize(np.ones((2, 64), np.float32), "int8", block=32).scales.shape == (2, 2)
    for block in (32, 0, 128):
        with pytest.raises(ValueError, match=f"blocks of {block} must divide the row length, got 33"):
            quantize(np.zeros((4, 33), np.float32), "int8", block=block)


@pytest.mark.parametrize("matrix, dtype, message", [
    (np.zeros((4, 32), np.float64), "int8", "2-D float32 matrix, got float64"),
    (np.zeros(32, np.float32), "int8", "2-D float32 matrix"),
    (np.full((1, 32), 1e5, np.float32), "float16", "do not fit float16"),
    (np.zeros((1, 32), np.float32), "int4", "unknown weight dtype 'int4'"),
])
def test_bad_input_is_named(matrix, dtype, message):
    with pytest.raises(ValueError, match=message):
        quantize(matrix, dtype)


# ---- the numba kernels against the reference -------------------------------------------------
@pytest.fixture(scope="module")
def matvec():
    from minillm.kernels import matvec_cpu
    return matvec_cpu


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "int8 per channel"])
@pytest.mark.parametrize("n_rows", [1, 3, 7, 16])     # 7: a group of four x rows, then three single
@pytest.mark.parametrize("with_bias", [True, False])
def test_matvec_matches_dequantised_reference(matvec, dtype, n_rows, with_bias):
    rng = np.random.default_rng(n_rows)
    w_t = rng.standard_normal((37, 96), dtype=np.float32)          # 37 outputs: uneven shares
    x = rng.standard_normal((n_rows, 96), dtype=np.float32)
    bias = rng.standard_normal(37, dtype=np.float32) if with_bias else None
    # "int8": blocks of 32, three per row, each with its own scale; "int8 per channel": one
    # scale per row (the default, its own code path in the kernel)
    weights = {"float32": lambda: w_t, "float16": lambda: quantize(w_t, "float16"),
               "int8": lambda: quantize(w_t, "int8", block=32),
               "int8 per channel": lambda: quantize(w_t, "int8")}
    weight = weights[dtype]()
    dense = w_t if dtype == "float32" else weight.dequantize()
    expected = x.astype(np.float64) @ dense.T.astype(np.float64) + (0 if bias is None else bias)
    out = matvec.matvec(weight, x, bias)
    assert out.shape == (n_rows, 37) and out.dtype == np.float32
    # float32 sums of 96 products of unit-scale numbers: a few ulps of sqrt(96) ~ 10
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


_TILE_SHAPES = [(2, 96), (4, 96), (5, 100), (8, 7), (13, 100), (16, 768)]     # (M, K)


@pytest.mark.parametrize("dtype, n_rows, n_in", [
    (dtype, n_rows, n_in) for dtype in ("float32", "float16", "int8", "int8 per channel")
    for n_rows, n_in in _TILE_SHAPES if not (dtype == "int8" and n_in % 4)])   # blocks of 4 or 16
def test_matvec_tiles_of_four_by_four_match_the_reference(matvec, dtype, n_rows, n_in):
    """Batches of x rows through the 4 x 4 tiles: whole groups of four x rows and the rest,
    rows of W^T by fours and the rest (37 outputs in three uneven shares), and inputs that
    are not a multiple of 16 (the scalar tail after the vectors)."""
    rng = np.random.default_rng(n_rows * 1000 + n_in)
    w_t = rng.standard_normal((37, n_in), dtype=np.float32)
    x = rng.standard_normal((n_rows, n_in), dtype=np.float32)
    bias = rng.standard_normal(37, dtype=np.float32)
    weight = {"float32": lambda: w_t, "float16": lambda: quantize(w_t, "float16"),
              "int8": lambda: quantize(w_t, "int8", block=4 if n_in % 16 else 16),
              "int8 per channel": lambda: quantize(w_t, "int8")}[dtype]()
    dense = w_t if dtype == "float32" else weight.dequantize()
    expected = x.astype(np.float64) @ dense.T.astype(np.float64) + bias
    out = matvec.matvec(weight, x, bias, 3)
    assert out.shape == (n_rows, 37) and out.dtype == np.float32
    # float32 sums of n_in unit-scale products: a few ulps of sqrt(n_in)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6 * np.sqrt(n_in) + 1e-6)


def test_matvec_takes_x_that_is_not_contiguous(matvec):
    rng = np.random.default_rng(7)
    w_t = rng.standard_normal((9, 32), dtype=np.float32)
    x = rng.standard_normal((32, 6), dtype=np.float32).T                    # (6, 32), a view
    for weight in (w_t, quantize(w_t, "float16"), quantize(w_t, "int8")):
        dense = w_t if isinstance(weight, np.ndarray) else weight.dequantize()
        np.testing.assert_allclose(matvec.matvec(weight, x, None), x @ dense.T, atol=1e-5)


@pytest.mark.parametrize("n_rows", [1, 5])            # one x row, and the 4 x 4 tiles + one
def test_matvec_propagates_nan(matvec, n_rows):
    w_t = np.ones((4, 32), np.float32)
    x = np.ones((n_rows, 32), np.float32)
    x[:, 5] = np.nan
    for weight in (w_t, quantize(w_t, "float16"), quantize(w_t, "int8")):
        assert np.isnan(matvec.matvec(weight, x, None)).all()


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_widen_rows_is_dequantize(matvec, dtype):
    q = quantize(np.random.default_rng(1).standard_normal((20, 64), dtype=np.float32), dtype,
                 block=32 if dtype == "int8" else None)
    out = np.full((8, 64), np.nan, np.float32)
    matvec.widen_rows(q, 5, 12, out)
    np.testing.assert_array_equal(out[:7], q.dequantize()[5:12])
    assert np.isnan(out[7]).all()                                  # rows past the tile untouched


# ---- the quantised model ---------------------------------------------------------------------
CONFIG = GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def float32_model():
    return GPT2(CONFIG, random_params(CONFIG, seed=3))


@pytest.mark.parametrize("dtype", ["float16", "int8"])
@pytest.mark.parametrize("n_tokens", [1, 5, 40])        # matvec kernels, and widened tiles + BLAS
def test_numba_quantised_model_matches_numpy_reference(float32_model, dtype, n_tokens):
    ids = np.random.default_rng(n_tokens).integers(0, CONFIG.vocab_size, (2, n_tokens))
    reference = float32_model.quantized(dtype)                     # numpy backend: dequantise, @
    fast = GPT2(CONFIG, reference.params, backend="numba")
    np.testing.assert_allclose(fast(ids), reference(ids), rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype, bound", [("float16", 2e-3), ("int8", 3e-2)])
def test_quantised_logits_stay_close_to_float32(float32_model, dtype, bound):
    """The price of the smaller weights, on a random model whose logits are ~0.3 in size."""
    ids = np.arange(40) % CONFIG.vocab_size
    exact = float32_model(ids)
    difference = np.abs(float32_model.quantized(dtype)(ids) - exact).max()
    assert 0 < difference < bound


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_cached_decoding_equals_recompute_when_quantised(float32_model, dtype):
    model = GPT2(CONFIG, quantize_params(float32_model.params, dtype), backend="numba")
    ids = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (1, 12))
    cache = KVCache.for_model(CONFIG, batch_size=1)
    model(ids[:, :8], cache=cache)
    steps = [model(ids[:, t:t + 1], cache=cache)[:, -1] for t in range(8, 12)]
    np.testing.assert_allclose(np.concatenate(steps), model(ids)[0, 8:], rtol=0, atol=2e-5)


def test_memory_shrinks_by_the_bytes_per_weight(float32_model):
    C, L = CONFIG.n_embd, CONFIG.n_layer
    n_quantised = CONFIG.vocab_size * C + L * 12 * C * C      # wte + qkv, proj, fc, mlp proj
    f32 = weight_bytes(float32_model.params)
    kept = f32 - 4 * n_quantised                              # biases, LayerNorms, wpe: float32
    assert weight_bytes(float32_model.quantized("float16").params) == kept + 2 * n_quantised
    # one float32 scale per row of W^T (out, in): per output channel
    scales = CONFIG.vocab_size + L * (3 * C + C + 4 * C + C)
    assert weight_bytes(float32_model.quantized("int8").params) == kept + n_quantised + 4 * scales


def test_quantised_weights_are_refused_where_they_cannot_work(float32_model):
    model = float32_model.quantized("int8")
    assert isinstance(model.params.wte, QuantizedMatrix) and model.weight_dtype == "int8"
    with pytest.raises(ValueError, match="already int8"):
        model.quantized("float16")
    with pytest.raises(ValueError, match="unknown weight dtype 'bf8'"):
        float32_model.quantized("bf8")


def test_from_pretrained_dtype(tmp_path, float32_model):
    from minillm.checkpoint.weights import save_checkpoint

    save_checkpoint(float32_model.params, float32_model.config, tmp_path)
    model = GPT2.from_pretrained(tmp_path, dtype="float16")
    assert model.weight_dtype == "float16"
    np.testing.assert_allclose(model(np.arange(10)), float32_model(np.arange(10)), atol=2e-3)


def test_training_and_saving_refuse_quantised_weights(tmp_path, float32_model):
    from minillm.checkpoint.weights import save_checkpoint

    model = float32_model.quantized("float16")
    with pytest.raises(ValueError, match="held as float16, for inference only"):
        model.named_parameters()
    with pytest.raises(ValueError, match="cannot save float16 weights"):
        save_checkpoint(model.params, CONFIG, tmp_path)


@pytest.mark.parametrize("n_shares", [1, 3, 50])           # 50 shares of 37 rows: most are empty
def test_matvec_any_number_of_shares(matvec, n_shares):
    w_t = np.random.default_rng(2).standard_normal((37, 64), dtype=np.float32)
    x = np.random.default_rng(3).standard_normal((2, 64), dtype=np.float32)
    q = quantize(w_t, "int8", block=32)
    np.testing.assert_allclose(matvec.matvec(q, x, None, n_shares), x @ q.dequantize().T, atol=1e-5)


@pytest.mark.parametrize("n_in", [1, 15, 16, 100, 768])     # vectors of 16, and what is left
@pytest.mark.parametrize("n_shares", [1, 3, 50])
def test_matvec_of_one_row_four_weight_rows_at_a_time(matvec, n_in, n_shares):
    """One x row against float32 W^T (the LM head of a prompt's last position): four rows
    of W^T per pass in 16-float vectors, then the rows and the inputs left over."""
    rng = np.random.default_rng(n_in)
    w_t = rng.standard_normal((39, n_in), dtype=np.float32)          # 39: shares not of four
    x = rng.standard_normal((1, n_in), dtype=np.float32)
    bias = rng.standard_normal(39, dtype=np.float32)
    expected = x.astype(np.float64) @ w_t.T.astype(np.float64) + bias
    out = matvec.matvec(w_t, x, bias, n_shares)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6 * np.sqrt(n_in) * 4)
