"""The fast paths compute what the reference computes: each fused kernel against minillm/model/layers.py
(and float64), within the stated tolerances. No timing here: speed is benchmarks/' business."""
import math

import numpy as np
import pytest

from minillm.model.layers import gelu, layer_norm

from oracles import float32_normals

fused = pytest.importorskip("minillm.kernels.fused_cpu")

randn = float32_normals(seed=0)


def gelu_f64(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


# ------------------------------------------------------------------------------ exp
def test_exp_f32_relative_error_below_float32_epsilon():
    x = np.linspace(-87, 88, 200_001, dtype=np.float32)
    out = np.empty_like(x)
    _exp_loop(x, out)
    truth = np.exp(x.astype(np.float64))
    relative = np.abs(out - truth) / truth
    assert relative.max() <= np.finfo(np.float32).eps      # 2^-23; NumPy's float32 exp: 2e-7


def _exp_loop(x, out):
    from numba import njit

    @njit
    def loop(x, out):
        for i in range(x.size):
            out[i] = fused.exp_f32(x[i])
    loop(x, out)


# ------------------------------------------------------------------------------ GELU
@pytest.mark.parametrize("shape", [(1, 1, 3072), (2, 7, 96), (5,)])
def test_gelu_matches_reference(shape):
    x = randn(*shape, scale=3.0)
    out = fused.gelu(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, gelu(x), rtol=1e-6, atol=1e-6)
    # no further from the float64 formula than the reference itself
    assert np.abs(out - gelu_f64(x)).max() <= 2 * max(np.abs(gelu(x) - gelu_f64(x)).max(), 1e-7)


def test_gelu_extremes_match_reference():
    x = np.array([-1e4, -100, -20, -1e-30, 0, 1e-30, 20, 100, 1e4, np.inf, np.nan], np.float32)
    with np.errstate(all="ignore"):
        expected = gelu(x)
    np.testing.assert_array_equal(fused.gelu(x), expected)


def test_gelu_reads_strided_input():
    x = randn(4, 16, scale=2.0)[:, ::2]
    np.testing.assert_allclose(fused.gelu(x), gelu(x), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ LayerNorm
@pytest.mark.parametrize("shape", [(1, 1, 768), (2, 33, 768), (3, 5, 13)])
def test_layer_norm_matches_reference(shape):
    C = shape[-1]
    x, gain, bias = randn(*shape, scale=3.0, shift=1.0), randn(C), randn(C)
    out = fused.layer_norm(x, gain, bias, 1e-5)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, layer_norm(x, gain, bias, 1e-5), rtol=0, atol=1e-5)


def test_layer_norm_large_offset_is_more_accurate_than_float32_sums():
    """A row with mean 1e3 and spread 1: float64 sums keep the variance right."""
    x, gain, bias = randn(4, 768, shift=1e3), np.ones(768, np.float32), np.zeros(768, np.float32)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    assert np.abs(fused.layer_norm(x, gain, bias, 1e-5) - expected).max() <= 1e-3


def test_layer_norm_eps_matters_for_a_constant_row():
    x = np.full((1, 8), 2.0, np.float32)
    out = fused.layer_norm(x, np.ones(8, np.float32), np.full(8, 0.5, np.float32), 1e-5)
    np.testing.assert_array_equal(out, np.full((1, 8), 0.5, np.float32))


# ------------------------------------------------------------------------------ the numba backend
@pytest.fixture(scope="module")
def numba_backend():
    from minillm.model.backends import get_backend
    try:
        return get_backend("numba")
    except ImportError as error:
        pytest.skip(f"numba backend not available: {error}")


@pytest.mark.parametrize("n_rows", [1, 100, 700])  # the calling thread; numba's threads; the pool
def test_numba_backend_brings_the_fused_kernels(numba_backend, n_rows):
    assert (n_rows >= numba_backend.pool_min_rows) == (n_rows == 700)
    numba_backend.linear(randn(n_rows, 64), randn(64, 16))       # 100 rows: numba's threads next
    """The backend's LayerNorm and GELU are the fused kernels, not the reference: their results
    are bit-identical to fused_cpu's, while the reference's differ in the last bits."""
    x, gain, bias = randn(n_rows, 768, scale=3.0, shift=1.0), randn(768), randn(768)
    ln = numba_backend.layer_norm(x, gain, bias, 1e-5)
    np.testing.assert_array_equal(ln, fused.layer_norm(x, gain, bias, 1e-5))
    h = randn(n_rows, 3072, scale=3.0)
    np.testing.assert_array_equal(numba_backend.gelu(h), fused.gelu(h))
    if n_rows > 1:
        assert not np.array_equal(ln, layer_norm(x, gain, bias, 1e-5))
        assert not np.array_equal(numba_backend.gelu(h), gelu(h))


@pytest.mark.parametrize("shape", [(3072, 768), (768, 768), (768, 3072)])
def test_one_row_linear_matches_blas(numba_backend, shape):
    """Decoding's x @ W + b, including the narrowing weights it runs through a transposed copy."""
    x, weight, bias = randn(1, 1, shape[0]), randn(*shape), randn(shape[1])
    out = numba_backend.linear(x, weight, bias)
    assert out.shape == (1, 1, shape[1]) and out.dtype == np.float32
    np.testing.assert_allclose(out, x @ weight + bias, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(numba_backend.linear(x[0], weight), x[0] @ weight,
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n_batch", [2, 5, 16])
@pytest.mark.parametrize("shape", [(3072, 768), (768, 2304)])
def test_batched_decoding_linear_matches_blas(numba_backend, n_batch, shape):
    """One token for each of a few sequences, (B, 1, in): the 4 x 16 register-tile kernel on
    a packed copy of the weight (whole groups of four sequences, and a padded last group)."""
    x, weight, bias = randn(n_batch, 1, shape[0]), randn(*shape), randn(shape[1])
    out = numba_backend.linear(x, weight, bias)
    assert out.shape == (n_batch, 1, shape[1]) and out.dtype == np.float32
    expected = x.astype(np.float64) @ weight.astype(np.float64) + bias
    # Each output is one float32 sum over k in order: its rounding error grows with
    # sum_k |x_k w_k| (~2500 here), not with the (often much smaller) result.
    scale = np.abs(x) @ np.abs(weight) + np.abs(bias)
    assert np.all(np.abs(out - expected) <= 1e-6 * scale)
    assert numba_backend._products_on == "numba"                 # it ran on numba's threads


def test_linear_routes_by_number_of_rows(numba_backend):
    """One row on OpenBLAS; 2-16 sequences of one token on the 4 x 16 tile; prompts of 2 rows
    up to the pool's size on the 6 x 16 prompt tile (numba's threads); longer prompts on the
    worker pool."""
    from minillm.kernels.backend import BATCHED_DECODE_MAX, ON_NUMBA, ON_OPENBLAS, ON_POOL

    weight = randn(64, 48)
    pool_rows = numba_backend.pool_min_rows
    for shape, where in [((1, 1, 64), ON_OPENBLAS), ((2, 1, 64), ON_NUMBA),
                         ((BATCHED_DECODE_MAX, 1, 64), ON_NUMBA), ((2, 3, 64), ON_NUMBA), ((1, 2, 64), ON_NUMBA),
                         ((BATCHED_DECODE_MAX + 1, 1, 64), ON_NUMBA), ((1, 100, 64), ON_NUMBA),
                         ((1, pool_rows - 1, 64), ON_NUMBA), ((1, pool_rows, 64), ON_POOL)]:
        x = randn(*shape)
        np.testing.assert_allclose(numba_backend.linear(x, weight), x @ weight, rtol=1e-5, atol=1e-4)
        assert numba_backend._products_on == where, shape


@pytest.mark.parametrize("shape", [(1, 2, 768, 96), (1, 16, 768, 2304), (1, 17, 768, 2304),
                                   (2, 40, 3072, 768), (1, 383, 768, 96), (1, 30, 64, 50)])
def test_prompt_linear_on_the_prompt_tile_matches_float64(numba_backend, shape):
    """A prompt's rows times a float32 weight: the 6 x 16 tile on a packed copy of the weight
    (made once, like batched decoding's), within 1e-6 of sum_k |x_k w_k|."""
    n_batch, n_rows, n_in, n_out = shape
    x, weight, bias = randn(n_batch, n_rows, n_in), randn(n_in, n_out), randn(n_out)
    out = numba_backend.linear(x, weight, bias)
    assert out.shape == (n_batch, n_rows, n_out) and out.dtype == np.float32
    assert numba_backend._products_on == "numba"
    expected = x.astype(np.float64) @ weight.astype(np.float64) + bias
    scale = np.abs(x) @ np.abs(weight) + np.abs(bias)
    assert np.all(np.abs(out - expected) <= 1e-6 * scale)


def test_the_prompt_tile_is_chosen_by_the_cpu_and_both_give_the_same_bits():
    """prompt_tile="auto" takes the AVX-512 tile exactly where the CPU has AVX-512; forced
    either way, a prompt's products are bit for bit the same; a name it does not know is
    refused."""
    from minillm.kernels import matmul_prompt_avx512
    from minillm.kernels.backend import NumbaBackend

    expected = "avx512" if matmul_prompt_avx512.HOST_HAS_AVX512 else "avx2"
    assert NumbaBackend(threads=2).prompt_tile == expected
    x, weight, bias = randn(1, 40, 768), randn(768, 2304), randn(2304)
    outs = [NumbaBackend(threads=2, prompt_tile=tile).linear(x, weight, bias)
            for tile in ("avx2", "avx512")]
    np.testing.assert_array_equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="prompt_tile must be one of 'auto', 'avx2', 'avx512', got 'avx1024'"):
        NumbaBackend(prompt_tile="avx1024")


@pytest.mark.parametrize("n_batch", [2, 7, 8, 16])
def test_batched_decoding_takes_the_avx512_tile_from_its_minimum_batch(monkeypatch, n_batch):
    """With the AVX-512 tile, batches of BATCH_MIN_ROWS sequences and more run their block
    products on it, smaller ones on the 4 x 16 tile; both within 1e-6 of sum_k |x_k w_k|."""
    from minillm.kernels import matmul_prompt_avx512
    from minillm.kernels.backend import NumbaBackend

    backend = NumbaBackend(threads=2, prompt_tile="avx512")
    calls = []
    wide = backend._matmul_prompt
    monkeypatch.setattr(backend, "_matmul_prompt", lambda *a: calls.append(1) or wide(*a))
    x, weight, bias = randn(n_batch, 1, 768), randn(768, 2304), randn(2304)
    out = backend.linear(x, weight, bias)
    assert bool(calls) == (n_batch >= matmul_prompt_avx512.BATCH_MIN_ROWS)
    expected = x.astype(np.float64) @ weight.astype(np.float64) + bias
    scale = np.abs(x) @ np.abs(weight) + np.abs(bias)
    assert np.all(np.abs(out - expected) <= 1e-6 * scale)


def test_after_a_prompt_the_lm_head_and_kernels_stay_on_numba_threads(numba_backend):
    """Once a prompt's products ran on numba's threads, its last position's LM head reads wte's
    rows with the matrix-vector kernel (no copy of wte), and LayerNorm, GELU and attention of
    prompt size take every numba thread; after an OpenBLAS product, one thread."""
    numba_backend.clear()
    x, weight, wte = randn(1, 50, 64), randn(64, 48), randn(300, 64)
    numba_backend.linear(x, weight)
    assert numba_backend._numba_threads(50) == numba_backend.pool.n_threads
    last = x[:, -1:]
    np.testing.assert_allclose(numba_backend.linear(last, wte.T), last @ wte.T, rtol=1e-5, atol=1e-4)
    assert numba_backend._products_on == "numba" and not numba_backend._transposed
    numba_backend.linear(randn(1, 1, 64), randn(64, 80))               # one row: OpenBLAS
    assert numba_backend._products_on == "OpenBLAS" and numba_backend._numba_threads(50) == 1
    numba_backend.linear(last, wte.T)
    assert numba_backend._products_on == "OpenBLAS"


def test_a_weight_changed_in_place_gets_a_new_packed_copy(numba_backend):
    """An optimiser's step or a scaled matrix changes the weight's fingerprint: the prompt tile
    and batched decoding never multiply by a stale packed copy (clear() is for few-element
    edits, which the fingerprint can miss)."""
    numba_backend.clear()
    x, weight = randn(1, 20, 64), randn(64, 48)
    numba_backend.linear(x, weight)
    copy = numba_backend._packed_copy(weight)
    assert numba_backend._packed_copy(weight) is copy                  # unchanged: kept
    weight *= np.float32(-1.5)
    np.testing.assert_allclose(numba_backend.linear(x, weight), x @ weight, rtol=1e-5, atol=1e-4)
    rows = randn(3, 1, 64)                                             # batched decoding
    np.testing.assert_allclose(numba_backend.linear(rows, weight), rows @ weight, rtol=1e-5,
                               atol=1e-4)
    assert numba_backend._packed_copy(weight) is not copy and len(numba_backend._packed) == 1


@pytest.mark.parametrize("n_batch", [3, 6, 16])
def test_batched_decoding_lm_head_reads_the_embedding_rows(numba_backend, monkeypatch, n_batch):
    """The LM head passes wte.T (a transposed view): its rows are used as they are, no copy;
    from ROWS_TILE_MIN_ROWS sequences on by the tile on wte's rows (matmul_by_rows), below it
    by the matrix-vector kernel."""
    from minillm.kernels import matmul_packed_cpu, matvec_cpu

    numba_backend.clear()
    wte = randn(300, 64)
    x = randn(n_batch, 1, 64)
    calls = []
    for module, name in ((matmul_packed_cpu, "matmul_by_rows"), (matvec_cpu, "matvec")):
        kernel = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *args, kernel=kernel, name=name: calls.append(name) or kernel(*args))
    out = numba_backend.linear(x, wte.T)
    expected = x.astype(np.float64) @ wte.T.astype(np.float64)
    assert np.all(np.abs(out - expected) <= 1e-6 * (np.abs(x) @ np.abs(wte.T)))
    tile = n_batch >= matmul_packed_cpu.ROWS_TILE_MIN_ROWS
    assert calls == ["matmul_by_rows" if tile else "matvec"]
    assert not numba_backend._packed and not numba_backend._transposed


def test_batched_decoding_packs_each_block_weight_once_until_clear(numba_backend):
    numba_backend.clear()
    x, weight = randn(4, 1, 96), randn(96, 80)
    before = numba_backend.linear(x, weight)
    numba_backend.linear(randn(7, 1, 96), weight)
    assert len(numba_backend._packed) == 1                    # one packed copy, reused
    weight *= 2                                   # changed in place: packed again
    np.testing.assert_allclose(numba_backend.linear(x, weight), 2 * before, rtol=1e-6)
    assert len(numba_backend._packed) == 1
    numba_backend.clear()
    assert not numba_backend._packed


def test_transposed_copies_follow_the_weight_and_clear(numba_backend):
    x, weight = randn(1, 3072), randn(3072, 768)
    before = numba_backend.linear(x, weight)
    weight *= 2                                   # changed in place: the fingerprint notices
    np.testing.assert_allclose(numba_backend.linear(x, weight), 2 * before, rtol=1e-6)
    weight[1, 1] += 100                           # one element off the fingerprint: stale ...
    assert not np.allclose(numba_backend.linear(x, weight), x @ weight, rtol=1e-5, atol=1e-3)
    numba_backend.clear()                         # ... until the copies are dropped
    np.testing.assert_allclose(numba_backend.linear(x, weight), x @ weight, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("n_queries, n_keys", [(1, 50), (40, 40), (200, 200)])
def test_attention_matches_reference_and_leaves_numba_threads_alone(numba_backend, n_queries,
                                                                     n_keys):
    import numba

    from minillm.model.attention import causal_attention

    q, k, v = randn(1, 12, n_queries, 64), randn(1, 12, n_keys, 64), randn(1, 12, n_keys, 64)
    threads = numba.get_num_threads()
    out = numba_backend.attention(q, k, v)
    assert numba.get_num_threads() == threads
    np.testing.assert_allclose(out, causal_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def pooled_backend(numba_backend):
    """A numba backend that sends every call of 16 rows or more to its worker pool."""
    from minillm.kernels.backend import NumbaBackend
    return NumbaBackend(threads=2, pool_min_rows=16)


@pytest.mark.parametrize("shape", [(2, 40, 768, 2304), (1, 300, 3072, 768), (1, 17, 768, 50)])
def test_prompt_sized_linear_on_the_pool_matches_blas(pooled_backend, shape):
    """Row blocks on the worker pool, bias added per block: the same as one x @ W + b."""
    n_batch, n_rows, n_in, n_out = shape
    x, weight, bias = randn(n_batch, n_rows, n_in), randn(n_in, n_out), randn(n_out)
    out = pooled_backend.linear(x, weight, bias)
    assert out.shape == (n_batch, n_rows, n_out) and out.dtype == np.float32
    np.testing.assert_allclose(out, x @ weight + bias, rtol=1e-5, atol=1e-4)
    transposed = np.ascontiguousarray(weight.T).T             # the LM head's wte.T view
    np.testing.assert_allclose(pooled_backend.linear(x, transposed), x @ weight,
                               rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------ whole model
# Measured: <= 7.2e-6 on the reference model's logits (std 1.7); each backend is 3-5e-6 from HF.
NUMBA_VS_NUMPY_TOLERANCE = 2e-5


@pytest.fixture(params=["pool for long prompts", "pool from 16 rows"])
def fast_backend(request, numba_backend, pooled_backend):
    """The default numba backend, and one whose pool takes every prompt of the tests."""
    return numba_backend if request.param == "pool for long prompts" else pooled_backend


@pytest.mark.parametrize("name", ["english", "long"])
def test_numba_model_matches_numpy_model(fast_backend, reference_model, reference, name):
    from minillm.inference.kv_cache import KVCache
    from minillm.model.gpt2 import GPT2

    fast = GPT2(reference_model.config, reference_model.params, backend=fast_backend)
    ids = reference[f"{name}.ids"]
    tolerance = dict(rtol=0, atol=NUMBA_VS_NUMPY_TOLERANCE)
    np.testing.assert_allclose(fast(ids), reference_model(ids), **tolerance)
    cache = KVCache.for_model(fast.config, max_len=len(ids))
    fast.forward(ids[None, :-1], cache=cache)
    last = fast.forward(ids[None, -1:], cache=cache, last_only=True).logits[0, -1]
    np.testing.assert_allclose(last, reference_model(ids)[-1], **tolerance)


def test_numba_greedy_generation_matches_hf(fast_backend, reference_model, reference):
    from minillm.model.gpt2 import GPT2

    fast = GPT2(reference_model.config, reference_model.params, backend=fast_backend)
    expected = reference["english.greedy"]
    prompt = reference["english.ids"]
    got = fast.generate(prompt, len(expected) - len(prompt))
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_prompt_linear_on_quantized_weights_widens_panels_on_numba_threads(numba_backend, dtype):
    """A prompt's rows times float16 / int8 weights: panels widened inside the prompt kernel
    (matmul_prompt_quantized), against the dequantised float32 weight in float64."""
    from minillm.model.quantize import quantize

    x, weight_t, bias = randn(1, 50, 768), randn(96, 768), randn(96)
    quantized = quantize(weight_t, dtype)
    out = numba_backend.linear(x, quantized, bias)
    assert numba_backend._products_on == "numba"
    w = quantized.dequantize().T.astype(np.float64)
    expected = x.astype(np.float64) @ w + bias
    assert np.all(np.abs(out - expected) <= 1e-6 * (np.abs(x) @ np.abs(w) + np.abs(bias)))


@pytest.mark.parametrize("n_batch", [3, 6, 16])
@pytest.mark.parametrize("dtype, block", [("float16", None), ("int8", None), ("int8", 32)])
def test_batched_decoding_on_quantized_weights(numba_backend, monkeypatch, n_batch, dtype, block):
    """A few sequences' rows times float16 / int8 W^T: the matrix-vector kernel at every batch
    size (the tile over the weight's rows, which the float32 LM head takes from 6 rows on, was
    slower here: widening each broadcast value costs more than it saves)."""
    from minillm.kernels import matmul_packed_cpu, matvec_cpu
    from minillm.model.quantize import quantize

    calls = []
    for module, name in ((matmul_packed_cpu, "matmul_by_rows"), (matvec_cpu, "matvec")):
        kernel = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *args, kernel=kernel, name=name: calls.append(name) or kernel(*args))
    x, bias = randn(n_batch, 1, 768), randn(200)
    quantized = quantize(randn(200, 768), dtype, block)
    out = numba_backend.linear(x, quantized, bias)
    w = quantized.dequantize().T.astype(np.float64)
    expected = x.astype(np.float64) @ w + bias
    assert np.all(np.abs(out - expected) <= 1e-6 * (np.abs(x) @ np.abs(w) + np.abs(bias)))
    assert calls == ["matvec"]
