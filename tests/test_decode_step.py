"""The whole decoding step as one kernel (minillm/kernels/decode_step_cpu.py) against the model's
own loop over its blocks on the "numpy" backend: logits, and the keys and values it caches."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minillm.inference.kv_cache import KVCache
from minillm.model.config import GPT2Config
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params
from minillm.model.quantize import quantize

pytest.importorskip("numba")
from minillm.kernels import decode_step_cpu                    # noqa: E402
from minillm.kernels.backend import NumbaBackend               # noqa: E402

CONFIG = GPT2Config(vocab_size=301, n_positions=40, n_embd=48, n_layer=3, n_head=4)
# Logits differ from the reference by float32 rounding only: ~1e-6 of their scale here (sums
# reassociated, another exp); a wrong formula (no 1/sqrt(d), erf GELU, eps 1e-6) is >= 1e-3.
RTOL = 2e-5


def _params(config, seed):
    """Random weights with activations of order 1 (std 0.1) and every bias and LayerNorm gain
    random too (random_params leaves them 0 and 1), so that each term of the step shows."""
    params = random_params(config, seed=seed, std=0.1)
    rng = np.random.default_rng(seed + 100)
    vectors = [getattr(b, name) for b in params.blocks for name in decode_step_cpu.VECTORS]
    for v in vectors + [params.ln_f_gain, params.ln_f_bias]:
        v += rng.normal(0, 0.3, v.shape).astype(np.float32)
    return params


def _models(config, dtype, threads, seed=0):
    """(reference on "numpy", the same weights on a numba backend with `threads` workers)."""
    reference = GPT2(config, _params(config, seed), backend="numpy")
    if dtype != "float32":
        reference = reference.quantized(dtype)
    return reference, GPT2(config, reference.params, backend=NumbaBackend(threads=threads))


def _decode_both(reference, fast, prompt, new_ids):
    """Run the prompt, then each new id, through both models with a cache each; assert the logits
    of every step agree; return both caches."""
    config = reference.config
    caches = [KVCache.for_model(config, 1, max_len=len(prompt) + len(new_ids)) for _ in range(2)]
    for model, cache in zip((reference, fast), caches):
        model.forward(np.asarray(prompt)[None], cache=cache, last_only=True)
    for token in new_ids:
        want = reference.forward(np.array([[token]]), cache=caches[0]).logits
        got = fast.forward(np.array([[token]]), cache=caches[1]).logits
        assert got.shape == want.shape == (1, 1, config.vocab_size) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * np.abs(want).max())
    return caches


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_step_matches_the_models_loop(dtype, threads):
    reference, fast = _models(CONFIG, dtype, threads)
    want, got = _decode_both(reference, fast, [3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5])
    assert fast.backend._step_weights[1] is not None                 # the kernel did the steps
    assert got.length == want.length == 11
    for a, b in zip(want.keys + want.values, got.keys + got.values):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


@settings(max_examples=12, deadline=None)
@given(n_head=st.integers(1, 3), head_dim=st.integers(1, 9), n_layer=st.integers(1, 2),
       vocab=st.integers(2, 40), prompt_len=st.integers(1, 6), threads=st.integers(1, 3),
       dtype=st.sampled_from(["float32", "float16", "int8"]), seed=st.integers(0, 9))
def test_step_on_odd_shapes(n_head, head_dim, n_layer, vocab, prompt_len, threads, dtype, seed):
    """Widths that no thread count divides evenly (C = 1..27, shares of 1 row), one-key
    attention, a vocabulary smaller than the thread count's shares."""
    config = GPT2Config(vocab_size=vocab, n_positions=16, n_embd=n_head * head_dim,
                        n_layer=n_layer, n_head=n_head)
    reference, fast = _models(config, dtype, threads, seed)
    rng = np.random.default_rng(seed)
    _decode_both(reference, fast, rng.integers(0, vocab, prompt_len), rng.integers(0, vocab, 3))


def test_greedy_generation_is_the_same_with_and_without_the_step_kernel():
    params = _params(CONFIG, seed=1)
    with_kernel = GPT2(CONFIG, params, backend=NumbaBackend(threads=2))
    without = GPT2(CONFIG, params, backend=NumbaBackend(threads=2, whole_step=False))
    prompt = np.array([7, 7, 3])
    np.testing.assert_array_equal(with_kernel.generate(prompt, 20), without.generate(prompt, 20))
    assert with_kernel.backend._step_weights is not None and without.backend._step_weights is None


def test_the_step_sees_weights_updated_in_place():
    """StepWeights holds the model's own arrays, no copies: an optimiser's in-place update shows."""
    reference, fast = _models(CONFIG, "float32", 2)
    _decode_both(reference, fast, [1, 2], [3])
    for block in fast.params.blocks:
        block.mlp_fc_weight *= np.float32(1.5)
        block.ln_2_bias += np.float32(0.25)
    _decode_both(reference, fast, [1, 2], [3, 4])


def test_where_the_kernel_does_not_apply_the_model_runs_its_layers():
    params = _params(CONFIG, seed=2)
    blocked = GPT2(CONFIG, params, backend="numpy").quantized("int8")
    for block in blocked.params.blocks:                           # int8 with blocks of 16
        block.mlp_fc_weight = quantize(block.mlp_fc_weight.dequantize(), "int8", block=16)
    assert "blocked scales" in decode_step_cpu.unsupported_reason(blocked.params)
    fast = GPT2(CONFIG, blocked.params, backend=NumbaBackend(threads=2))
    _decode_both(blocked, fast, [5, 6], [7, 8])
    assert fast.backend._step_weights == (fast.params, None)
    assert fast.backend.decode_step(fast.params, CONFIG, np.zeros((1, 1, 48), np.float32),
                                    KVCache.for_model(CONFIG, 1)) is None


def test_a_full_cache_is_refused():
    reference, fast = _models(CONFIG, "float16", 2)
    cache = KVCache.for_model(CONFIG, 1, max_len=3)
    fast.forward(np.array([[1, 2, 3]]), cache=cache)
    with pytest.raises(ValueError, match="KV cache is full: 3 cached"):
        fast.forward(np.array([[4]]), cache=cache)


def test_padding_and_batches_take_the_layer_by_layer_path():
    """A mask or several sequences are not the kernel's: the results still match the reference."""
    reference, fast = _models(CONFIG, "float32", 2)
    mask = np.array([[0, 1, 1, 1]])
    caches = [KVCache.for_model(CONFIG, 1, max_len=5) for _ in range(2)]
    for model, cache in zip((reference, fast), caches):
        model.forward(np.array([[0, 4, 5, 6]]), attention_mask=mask, cache=cache)
    step_mask = np.array([[0, 1, 1, 1, 1]])
    want = reference.forward(np.array([[7]]), attention_mask=step_mask, cache=caches[0]).logits
    got = fast.forward(np.array([[7]]), attention_mask=step_mask, cache=caches[1]).logits
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * np.abs(want).max())
    assert fast.backend._step_weights is None                       # never asked
