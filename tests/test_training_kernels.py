"""The fused numba kernels for training against the NumPy references they replace: attention
(minillm.kernels.attention_backward_cpu vs minillm.model.attention) and the GELU and LayerNorm
backward passes (minillm.kernels.fused_cpu vs minillm.model.layers)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.model.attention import causal_attention, causal_attention_backward
from minillm.kernels import attention_backward_cpu as kernel
from minillm.kernels import fused_cpu
from minillm.model import layers
from minillm.kernels.workers import WorkerPool
from oracles import random_qkv


def qkv_and_dout(rng, B, H, T, d, scale=1.0):
    """A causal window's q, k, v (oracles.random_qkv, times scale) and an upstream gradient."""
    q, k, v = (scale * a for a in random_qkv(rng, B, H, T, T, d))
    return q, k, v, rng.standard_normal((B, H, T, d), dtype=np.float32)


def logsumexp_reference(q, k):
    T, d = q.shape[-2:]
    scores = (q.astype(np.float64) @ k.astype(np.float64).swapaxes(-1, -2)) / np.sqrt(d)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    top = scores.max(-1, keepdims=True)
    return (top + np.log(np.exp(scores - top).sum(-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("shape", [(1, 1, 1, 4), (2, 3, 13, 8), (1, 2, 33, 64), (3, 1, 7, 5)])
def test_forward_and_backward_match_the_reference(shape):
    rng = np.random.default_rng(sum(shape))
    q, k, v, dout = qkv_and_dout(rng, *shape)
    out, lse = kernel.attention_forward(q, k, v)
    np.testing.assert_allclose(out, causal_attention(q, k, v), rtol=0, atol=1e-5)
    np.testing.assert_allclose(lse, logsumexp_reference(q, k), rtol=0, atol=1e-5)
    for got, expected in zip(kernel.attention_backward(dout, q, k, v, out, lse),
                             causal_attention_backward(dout, q, k, v)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), H=st.integers(1, 3), T=st.integers(1, 20), d=st.integers(1, 17),
       scale=st.sampled_from([0.1, 1.0, 4.0]), seed=st.integers(0, 2**16))
def test_kernel_matches_reference_on_any_small_shape(B, H, T, d, scale, seed):
    q, k, v, dout = qkv_and_dout(np.random.default_rng(seed), B, H, T, d, scale)
    out, lse = kernel.attention_forward(q, k, v)
    reference = causal_attention_backward(dout, q, k, v)
    size = max(1.0, max(np.abs(r).max() for r in reference))
    for got, expected in zip(kernel.attention_backward(dout, q, k, v, out, lse), reference):
        np.testing.assert_allclose(got / size, expected / size, rtol=0, atol=1e-5)


def test_same_bits_on_any_number_of_threads():
    q, k, v, dout = qkv_and_dout(np.random.default_rng(1), 2, 3, 40, 16)
    results = []
    for pool in (None, WorkerPool(2), WorkerPool(3)):
        out, lse = kernel.attention_forward(q, k, v, pool=pool)
        results.append((out, lse, *kernel.attention_backward(dout, q, k, v, out, lse, pool=pool)))
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


def test_views_and_non_contiguous_inputs_are_accepted():
    """The model passes q, k, v as transposed views of the qkv projection."""
    rng = np.random.default_rng(2)
    qkv = rng.standard_normal((2, 9, 3, 3, 4)).astype(np.float32)     # (B, T, 3, H, d)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # (B, H, T, d) views
    out, _ = kernel.attention_forward(q, k, v)
    np.testing.assert_allclose(out, causal_attention(q, k, v), rtol=0, atol=1e-5)


def test_nan_in_a_query_row_gives_nan_in_that_row():
    q, k, v, dout = qkv_and_dout(np.random.default_rng(3), 1, 1, 6, 4)
    q[0, 0, 2, 1] = np.nan
    out, lse = kernel.attention_forward(q, k, v)
    assert np.isnan(out[0, 0, 2]).all() and np.isnan(lse[0, 0, 2])
    assert np.isfinite(out[0, 0, [0, 1, 3, 4, 5]]).all()


def assert_close_to_max(got, expected, tol=1e-5):
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol * max(np.abs(expected).max(), 1e-30))


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 33), (2, 9, 1027)])
@pytest.mark.parametrize("threads", [1, 3])
def test_gelu_backward_matches_the_reference(shape, threads):
    rng = np.random.default_rng(len(shape))
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    got = fused_cpu.gelu_backward(dy, x, pool=WorkerPool(threads) if threads > 1 else None)
    assert_close_to_max(got, layers.gelu_backward(dy, x))


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 11, 37), (2, 100, 256)])
@pytest.mark.parametrize("threads", [1, 3])
def test_layer_norm_backward_matches_the_reference(shape, threads):
    rng = np.random.default_rng(sum(shape))
    x = (2 * rng.standard_normal(shape) + 0.5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gain = rng.standard_normal(shape[-1]).astype(np.float32)
    pool = WorkerPool(threads) if threads > 1 else None
    got = fused_cpu.layer_norm_backward(dy, x, gain, 1e-5, pool=pool)
    for g, expected in zip(got, layers.layer_norm_backward(dy, x, gain, 1e-5)):
        assert_close_to_max(g, expected)


def test_layer_norm_backward_same_bits_on_any_number_of_threads():
    rng = np.random.default_rng(4)
    x, dy = (rng.standard_normal((300, 48)).astype(np.float32) for _ in range(2))
    gain = rng.standard_normal(48).astype(np.float32)
    results = [fused_cpu.layer_norm_backward(dy, x, gain, 1e-5, pool=pool)
               for pool in (None, WorkerPool(2), WorkerPool(3))]
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("threads", [1, 3])
def test_fused_cross_entropy_matches_the_reference(threads):
    from minillm.kernels import fused_cpu
    from minillm.model.loss import IGNORE_INDEX, cross_entropy
    rng = np.random.default_rng(threads)
    logits = (3 * rng.standard_normal((3, 7, 37))).astype(np.float32)
    targets = rng.integers(0, 37, (3, 7))
    targets[0, 2] = targets[2, 6] = IGNORE_INDEX
    expected_loss, expected_grad = cross_entropy(logits, targets)
    pool = WorkerPool(threads) if threads > 1 else None
    loss, grad = fused_cpu.cross_entropy(logits, targets, pool=pool)
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-7)
    assert np.all(grad[0, 2] == 0) and grad.dtype == np.float32
