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
from minillm.kernels import decode_step_cpu, step_weights      # noqa: E402
from minillm.kernels.backend import NumbaBackend               # noqa: E402
from minillm.kernels.workers import WorkerPool                 # noqa: E402

# eps 1e-3, not GPT-2's 1e-5, so that the kernel must take the model's: a fixed 1e-5 moves the
# logits by ~1e-3 of their scale here.
CONFIG = GPT2Config(vocab_size=301, n_positions=40, n_embd=48, n_layer=3, n_head=4,
                    layer_norm_epsilon=1e-3)
# Logits differ from the reference by float32 rounding only: ~1e-6 of their scale here (sums
# reassociated, another exp); each wrong formula tried (no 1/sqrt(d), erf GELU, another eps, a
# bias left out, a share of W's rows skipped) made these tests fail.
RTOL = 2e-5


def _params(config, seed):
    """Random weights with activations of order 1 (std 0.1) and every bias and LayerNorm gain
    random too (random_params leaves them 0 and 1), so that each term of the step shows."""
    params = random_params(config, seed=seed, std=0.1)
    rng = np.random.default_rng(seed + 100)
    vectors = [getattr(b, name) for b in params.blocks for name in step_weights.VECTORS]
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
    """Run the prompt (T,) or prompts (B, T), then each new id (B ids per step for B prompts),
    through both models with a cache each; assert the logits of every step agree and that the
    fast model's steps ran the step kernel; return both caches."""
    config = reference.config
    prompts = np.asarray(prompt).reshape(-1, np.shape(prompt)[-1])         # (B, T)
    steps = np.asarray(new_ids).reshape(len(new_ids), -1)                  # (steps, B)
    B, max_len = prompts.shape[0], prompts.shape[1] + len(steps)
    caches = [KVCache.for_model(config, B, max_len=max_len) for _ in range(2)]
    for model, cache in zip((reference, fast), caches):
        model.forward(prompts, cache=cache, last_only=True)
    for tokens in steps:
        want = reference.forward(tokens[:, None], cache=caches[0]).logits
        got = fast.forward(tokens[:, None], cache=caches[1]).logits
        assert got.shape == want.shape == (B, 1, config.vocab_size) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * np.abs(want).max())
    assert _ran_the_kernel(fast) or fast.backend._step_weights == (_key(fast), None)
    return caches


def _key(model):
    return step_weights.key(model.params)


def _ran_the_kernel(model) -> bool:
    """Whether the backend's last decoding step went through the step kernel."""
    held = model.backend._step_weights
    return held is not None and held[1] is not None and held[0] == _key(model)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_step_matches_the_models_loop(dtype, threads):
    reference, fast = _models(CONFIG, dtype, threads)
    want, got = _decode_both(reference, fast, [3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5])
    assert _ran_the_kernel(fast)
    assert got.length == want.length == 11
    for a, b in zip(want.keys + want.values, got.keys + got.values):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_batch_of_sequences_in_one_step(dtype, threads):
    """B sequences of one length, one token each per step, in one call: every sequence's
    logits, keys and values as the model's loop gives them (each sequence its own attention,
    the weights shared)."""
    reference, fast = _models(CONFIG, dtype, threads)
    prompts = [[3, 1, 4, 1], [5, 9, 2, 6], [0, 7, 7, 1]]
    want, got = _decode_both(reference, fast, prompts, [[9, 2, 6], [5, 3, 5], [8, 9, 7]])
    assert _ran_the_kernel(fast)
    for a, b in zip(want.keys + want.values, got.keys + got.values):
        assert b.shape == (3, CONFIG.n_head, 7, CONFIG.n_embd // CONFIG.n_head)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_each_sequence_of_a_batch_is_its_own():
    """A batch's logits are each sequence's alone: the same as decoding it by itself (a step
    that mixed sequences' keys, or rows of the products, would differ)."""
    reference, fast = _models(CONFIG, "float32", 2)
    _, batch = _models(CONFIG, "float32", 2)
    prompts, new = np.array([[1, 2, 3], [4, 5, 6]]), np.array([[7, 8], [9, 10]])
    caches = [KVCache.for_model(CONFIG, 2, max_len=5)] + [KVCache.for_model(CONFIG, 1, max_len=5)
                                                           for _ in range(2)]
    batch.forward(prompts, cache=caches[0])
    for b in range(2):
        fast.forward(prompts[b:b + 1], cache=caches[1 + b])
    for tokens in new:
        together = batch.forward(tokens[:, None], cache=caches[0]).logits         # (2, 1, V)
        for b in range(2):
            alone = fast.forward(tokens[b:b + 1, None], cache=caches[1 + b]).logits
            np.testing.assert_allclose(together[b], alone[0], rtol=0,
                                       atol=RTOL * np.abs(alone).max())
    assert _ran_the_kernel(batch)


@settings(max_examples=12, deadline=None)
@given(n_head=st.integers(1, 3), head_dim=st.integers(1, 9), n_layer=st.integers(1, 2),
       vocab=st.integers(2, 40), prompt_len=st.integers(1, 6), threads=st.integers(1, 3),
       dtype=st.sampled_from(["float32", "float16", "int8"]), seed=st.integers(0, 9),
       batch=st.integers(1, 8))
def test_step_on_odd_shapes(n_head, head_dim, n_layer, vocab, prompt_len, threads, dtype, seed,
                            batch):
    """Widths that no thread count divides evenly (C = 1..27, shares of 1 row), one-key
    attention, a vocabulary smaller than the thread count's shares or than the LM head's tile
    of 16 rows, batches of 1 to 8 (float32 from 2 on, on the panels; from 6, the LM head's
    turned-around tile)."""
    config = GPT2Config(vocab_size=vocab, n_positions=16, n_embd=n_head * head_dim,
                        n_layer=n_layer, n_head=n_head)
    reference, fast = _models(config, dtype, threads, seed)
    rng = np.random.default_rng(seed)
    _decode_both(reference, fast, rng.integers(0, vocab, (batch, prompt_len)),
                 rng.integers(0, vocab, (3, batch)))
    assert _ran_the_kernel(fast)


def test_greedy_generation_is_the_same_with_and_without_the_step_kernel():
    params = _params(CONFIG, seed=1)
    with_kernel = GPT2(CONFIG, params, backend=NumbaBackend(threads=2))
    without = GPT2(CONFIG, params, backend=NumbaBackend(threads=2, whole_step=False))
    prompt = np.array([7, 7, 3])
    np.testing.assert_array_equal(with_kernel.generate(prompt, 20), without.generate(prompt, 20))
    assert _ran_the_kernel(with_kernel) and without.backend._step_weights is None
    teaching = GPT2(CONFIG, params, backend=NumbaBackend(threads=2, matmul="numba"))
    np.testing.assert_array_equal(teaching.generate(prompt, 5), without.generate(prompt, 5))
    assert teaching.backend._step_weights is None           # the teaching matmul runs every step


def test_the_step_sees_weights_updated_in_place_or_replaced():
    """StepWeights holds the model's own arrays, no copies: an optimiser's in-place update
    shows, and a weight replaced by another array is noticed at the next step."""
    reference, fast = _models(CONFIG, "float32", 2)
    _decode_both(reference, fast, [1, 2], [3])
    for block in fast.params.blocks:
        block.mlp_fc_weight *= np.float32(1.5)
        block.ln_2_bias += np.float32(0.25)
    _decode_both(reference, fast, [1, 2], [3, 4])
    block = fast.params.blocks[1]
    block.attn_proj_weight = block.attn_proj_weight * np.float32(-2.0)     # a new array
    block.ln_1_gain = block.ln_1_gain + np.float32(1.0)
    _decode_both(reference, fast, [1, 2], [3, 4])
    assert _ran_the_kernel(fast)


def test_where_the_kernel_does_not_apply_the_model_runs_its_layers():
    params = _params(CONFIG, seed=2)
    blocked = GPT2(CONFIG, params, backend="numpy").quantized("int8")
    for block in blocked.params.blocks:                           # int8 with blocks of 16
        block.mlp_fc_weight = quantize(block.mlp_fc_weight.dequantize(), "int8", block=16)
    assert "blocked scales" in step_weights.unsupported_reason(blocked.params)
    fast = GPT2(CONFIG, blocked.params, backend=NumbaBackend(threads=2))
    _decode_both(blocked, fast, [5, 6], [7, 8])
    assert fast.backend._step_weights == (_key(fast), None)
    assert fast.backend.decode_step(fast.params, CONFIG, np.zeros((1, 1, 48), np.float32),
                                    KVCache.for_model(CONFIG, 1)) is None


def test_a_full_or_foreign_cache_is_refused():
    _, fast = _models(CONFIG, "float16", 2)
    weights, pool = step_weights.StepWeights(fast.params), fast.backend.pool
    x, eps, n_head = np.zeros(CONFIG.n_embd, np.float32), CONFIG.layer_norm_epsilon, CONFIG.n_head
    cache = KVCache.for_model(CONFIG, 1, max_len=3)
    cache.length = 3
    with pytest.raises(ValueError, match="KV cache is full: 3 cached"):
        decode_step_cpu.decode_step(weights, x, cache, eps, n_head, pool)
    other = GPT2Config(vocab_size=301, n_positions=40, n_embd=48, n_layer=2, n_head=4)
    for foreign in (KVCache.for_model(other, 1), KVCache.for_model(CONFIG, 2)):
        with pytest.raises(ValueError, match="KV cache of 3 layers"):
            decode_step_cpu.decode_step(weights, x, foreign, eps, n_head, pool)
    with pytest.raises(ValueError, match="48 embedding values"):
        decode_step_cpu.decode_step(weights, x[:40], KVCache.for_model(CONFIG, 1), eps, n_head, pool)
    with pytest.raises(ValueError, match=r"KV cache of 3 layers .* \(3 sequence\(s\)"):
        decode_step_cpu.decode_step(weights, np.zeros((3, 48), np.float32),
                                    KVCache.for_model(CONFIG, 2), eps, n_head, pool)


def test_a_failing_worker_opens_the_barriers_and_its_error_reaches_the_caller(monkeypatch):
    """One worker raising (here before its kernel starts) must not leave the others spinning."""
    _, fast = _models(CONFIG, "float32", 2)
    weights = step_weights.StepWeights(fast.params)
    kernel = decode_step_cpu._WORKERS["float32"]

    def worker_one_fails(worker, *args):
        if worker == 1:
            raise RuntimeError("worker 1 failed")
        kernel(worker, *args)

    monkeypatch.setitem(decode_step_cpu._WORKERS, "float32", worker_one_fails)
    cache = KVCache.for_model(CONFIG, 1)
    with pytest.raises(RuntimeError, match="worker 1 failed"):
        decode_step_cpu.decode_step(weights, np.zeros(48, np.float32), cache, 1e-3, 4,
                                    WorkerPool(2))


def test_a_mask_a_large_batch_and_hidden_states_take_the_layer_by_layer_path(monkeypatch):
    """A mask, more sequences than whole_step_max_sequences or hidden states are not the
    kernel's: the results still match the reference, and the kernel is never run."""
    steps = []
    kernel = decode_step_cpu.decode_step
    monkeypatch.setattr(decode_step_cpu, "decode_step", lambda *args: steps.append(1) or kernel(*args))
    reference, fast = _models(CONFIG, "float32", 2)
    fast.backend.whole_step_max_sequences = 1
    two = [KVCache.for_model(CONFIG, 2, max_len=4) for _ in range(2)]
    for model, cache in zip((reference, fast), two):
        model.forward(np.array([[1, 2, 3], [4, 5, 6]]), cache=cache)
    want = reference.forward(np.array([[7], [8]]), cache=two[0]).logits
    np.testing.assert_allclose(fast.forward(np.array([[7], [8]]), cache=two[1]).logits, want,
                               rtol=0, atol=RTOL * np.abs(want).max())
    assert steps == []
    one = [KVCache.for_model(CONFIG, 1, max_len=4) for _ in range(2)]
    for model, cache in zip((reference, fast), one):
        model.forward(np.array([[1, 2, 3]]), cache=cache)
    want = reference.forward(np.array([[7]]), cache=one[0], output_hidden_states=True)
    got = fast.forward(np.array([[7]]), cache=one[1], output_hidden_states=True)
    assert len(got.hidden_states) == CONFIG.n_layer + 1
    np.testing.assert_allclose(got.logits, want.logits, rtol=0, atol=RTOL * np.abs(want.logits).max())
    assert steps == []
    mask = np.array([[0, 1, 1, 1]])
    caches = [KVCache.for_model(CONFIG, 1, max_len=5) for _ in range(2)]
    for model, cache in zip((reference, fast), caches):
        model.forward(np.array([[0, 4, 5, 6]]), attention_mask=mask, cache=cache)
    step_mask = np.array([[0, 1, 1, 1, 1]])
    want = reference.forward(np.array([[7]]), attention_mask=step_mask, cache=caches[0]).logits
    got = fast.forward(np.array([[7]]), attention_mask=step_mask, cache=caches[1]).logits
    np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * np.abs(want).max())
    assert steps == []                                              # never run


def test_unsupported_weights_are_named():
    params = _params(CONFIG, seed=3)
    assert step_weights.unsupported_reason(params) is None
    params.blocks[0].mlp_fc_weight = np.asfortranarray(params.blocks[0].mlp_fc_weight)
    assert "not C-contiguous" in step_weights.unsupported_reason(params)
    mixed = GPT2(CONFIG, _params(CONFIG, seed=3)).quantized("float16").params
    mixed.blocks[2].attn_qkv_weight = quantize(mixed.blocks[2].attn_qkv_weight.dequantize(), "int8")
    assert "mixed kinds" in step_weights.unsupported_reason(mixed)


# n_embd 40: block products of 40, 120 and 160 columns, none a whole number of the tile's four
# 16-column panels and two with 8 columns past the last whole panel
ODD_WIDTH = GPT2Config(vocab_size=97, n_positions=12, n_embd=40, n_layer=2, n_head=4,
                       layer_norm_epsilon=1e-3)


@pytest.mark.parametrize("config", [CONFIG, ODD_WIDTH], ids=["n_embd48", "n_embd40"])
@pytest.mark.parametrize("batch, threads", [(1, 1), (1, 2), (1, 3), (2, 1), (6, 2), (7, 2),
                                           (13, 3), (16, 2)])
def test_float32_steps_on_packed_panels(config, batch, threads, monkeypatch):
    """Float32 steps from WHOLE_STEP_PANELS_MIN_SEQUENCES sequences on read the block
    weights' packed copies: one sequence a panel at a time, in blocks of panels taken by 1-3
    workers; batches under the 6 x 64 tile, one group of six sequences or several (7, 13, 16:
    a last group short of six), tiles short of four panels. Both with columns past the last
    whole panel (n_embd 40). The kernels run on any CPU (16-float vectors split into 8-float
    halves without AVX-512), so prompt_tile="avx512" tests them everywhere."""
    from minillm.kernels import backend as backend_module

    handed = []
    kernel = decode_step_cpu.decode_step
    monkeypatch.setattr(decode_step_cpu, "decode_step",
                        lambda *args: handed.append(args[6]) or kernel(*args))
    assert backend_module.WHOLE_STEP_PANELS_MIN_SEQUENCES == 1
    reference = GPT2(config, _params(config, seed=batch), backend="numpy")
    fast = GPT2(config, reference.params, backend=NumbaBackend(threads=threads, prompt_tile="avx512"))
    rng = np.random.default_rng(batch)
    want, got = _decode_both(reference, fast, rng.integers(0, config.vocab_size, (batch, 3)),
                             rng.integers(0, config.vocab_size, (3, batch)))
    assert len(handed) == 3 and all(panels is not None for panels in handed)
    for a, b in zip(want.keys + want.values, got.keys + got.values):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


# Wide enough that one sequence's products take several blocks of panels each (the MLP's
# down-projection, depth 1064: two panels a block, eight blocks), with 10 columns past the
# last whole panel, depths of 4k + 2 (266: the panel loop's last k one at a time), and LM head
# rows of 266 through _dot_vectors's 64-wide loop and its scalar end.
WIDE = GPT2Config(vocab_size=301, n_positions=12, n_embd=266, n_layer=2, n_head=7,
                  layer_norm_epsilon=1e-3)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_sequence_on_panels_in_blocks_of_panels(threads, monkeypatch):
    """One float32 sequence on the panels, each product in several blocks of panels that the
    workers take in turn (each asking for the next block's first bytes while it reads the
    last), the odd columns done by the worker holding the ticket past the last block."""
    handed = []
    kernel = decode_step_cpu.decode_step
    monkeypatch.setattr(decode_step_cpu, "decode_step",
                        lambda *args: handed.append(args[6]) or kernel(*args))
    panel_bytes = 4 * WIDE.n_embd * decode_step_cpu.WIDE * 4            # the down-projection's
    assert WIDE.n_embd // decode_step_cpu.WIDE * panel_bytes > 4 * decode_step_cpu.PANEL_TICKET_BYTES
    reference = GPT2(WIDE, _params(WIDE, seed=31), backend="numpy")
    fast = GPT2(WIDE, reference.params, backend=NumbaBackend(threads=threads, prompt_tile="avx512"))
    rng = np.random.default_rng(31)
    _decode_both(reference, fast, rng.integers(0, WIDE.vocab_size, 4),
                 rng.integers(0, WIDE.vocab_size, 5))
    assert len(handed) == 5 and all(panels is not None for panels in handed)


@pytest.mark.parametrize("dtype, prompt_tile", [("float32", "avx512"), ("float32", "avx2"),
                                               ("float16", "auto"), ("int8", "auto")])
def test_more_than_sixteen_sequences_in_one_step(dtype, prompt_tile):
    """whole_step_max_sequences raised past 16: float32's LM head tile holds h^T in WIDE = 16
    lanes, so 20 sequences take the dot products instead (taking the tile, 17 sequences wrote
    past its panel: logits off by ~1, then a corrupted heap); float32 on the panels and on the
    column kernel, float16 and int8 on rows of W^T."""
    reference, _ = _models(CONFIG, dtype, 2, seed=20)
    fast = GPT2(CONFIG, reference.params,
                backend=NumbaBackend(threads=2, prompt_tile=prompt_tile, whole_step_max_sequences=20))
    rng = np.random.default_rng(20)
    _decode_both(reference, fast, rng.integers(0, CONFIG.vocab_size, (20, 3)),
                 rng.integers(0, CONFIG.vocab_size, (2, 20)))


def test_a_batch_on_the_panels_sees_weights_updated_in_place_or_replaced():
    """The packed copies follow the weights: scaled in place (an optimiser's step) or
    replaced by another array, the next batched step reads the new values."""
    reference = GPT2(CONFIG, _params(CONFIG, seed=5), backend="numpy")
    fast = GPT2(CONFIG, reference.params, backend=NumbaBackend(threads=2, prompt_tile="avx512"))
    prompts, new = [[1, 2], [3, 4], [5, 6]], [[7, 8, 9]]
    _decode_both(reference, fast, prompts, new)
    for block in fast.params.blocks:
        block.mlp_fc_weight *= np.float32(1.5)
        block.attn_qkv_weight *= np.float32(-0.5)
    _decode_both(reference, fast, prompts, new)
    block = fast.params.blocks[2]
    block.mlp_proj_weight = block.mlp_proj_weight * np.float32(2.0)      # a new array
    _decode_both(reference, fast, prompts, new)
    assert _ran_the_kernel(fast)


@pytest.mark.parametrize("dtype", ["float16", "int8", "float32"])
@pytest.mark.parametrize("batch", [4, 7, 9])
def test_rows_of_w_transposed_four_sequences_a_pass(dtype, batch):
    """Products on rows of W^T (float16, int8; float32's LM head on the column kernel's route)
    take four sequences per pass, then a pair, then one: 4, 7 = 4 + 2 + 1, 9 = 4 + 4 + 1."""
    reference, _ = _models(CONFIG, dtype, 2, seed=batch)
    fast = GPT2(CONFIG, reference.params, backend=NumbaBackend(threads=2, prompt_tile="avx2"))
    rng = np.random.default_rng(batch)
    _decode_both(reference, fast, rng.integers(0, 301, (batch, 3)), rng.integers(0, 301, (2, batch)))
    assert _ran_the_kernel(fast)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.integers(0, 40), st.integers(1, 40), st.integers(0, 3),
       st.sampled_from([64, 768, 1536]))
def test_asking_ahead_stays_in_the_block_then_the_next(n_rows, start, gap, n_next, row_bytes):
    """The bytes a worker asks for while it reads rows [start, stop) of W^T (a hint the
    results cannot show): this block's bytes in order, then from the first byte of the next
    block it holds, PREFETCH_AHEAD of them at most, and never a byte of another block."""
    stop = start + n_rows
    next_start = stop + gap - 1                  # the next block: anywhere after this one
    next_stop = next_start + n_next              # n_next = 0: no next block
    reach_end, block_end, shift = decode_step_cpu._reach(start, stop, next_start, next_stop,
                                                         row_bytes)
    asked = list(range(start * row_bytes, reach_end, decode_step_cpu.CACHE_LINE))
    at = [byte if byte < block_end else byte + shift for byte in asked]
    own = [byte for byte in at if byte < stop * row_bytes]
    ahead = at[len(own):]
    assert own == list(range(start * row_bytes, stop * row_bytes, decode_step_cpu.CACHE_LINE))
    assert len(ahead) * decode_step_cpu.CACHE_LINE == min(decode_step_cpu.PREFETCH_AHEAD,
                                                          n_next * row_bytes)
    assert all(next_start * row_bytes <= byte < next_stop * row_bytes for byte in ahead)
    assert ahead[:1] == ([next_start * row_bytes] if n_next else [])


def test_without_avx512_float32_batches_keep_the_column_kernel(monkeypatch):
    """prompt_tile="avx2" (a CPU without AVX-512, where the tile would spill its registers):
    the step's products on W as it is (the column kernel), the same logits."""
    handed = []
    kernel = decode_step_cpu.decode_step
    monkeypatch.setattr(decode_step_cpu, "decode_step",
                        lambda *args: handed.append(args[6]) or kernel(*args))
    reference = GPT2(CONFIG, _params(CONFIG, seed=4), backend="numpy")
    fast = GPT2(CONFIG, reference.params, backend=NumbaBackend(threads=2, prompt_tile="avx2"))
    rng = np.random.default_rng(4)
    _decode_both(reference, fast, rng.integers(0, 301, (9, 2)), rng.integers(0, 301, (2, 9)))
    assert handed == [None, None]


def test_panels_that_are_not_the_weights_packed_copies_are_refused():
    _, fast = _models(CONFIG, "float32", 2)
    weights, pool = step_weights.StepWeights(fast.params), fast.backend.pool
    packed = fast.backend._matmul_packed.pack_weight
    panels = tuple(tuple(map(packed, per_layer)) for per_layer in weights.weights)
    x, eps = np.zeros((2, CONFIG.n_embd), np.float32), CONFIG.layer_norm_epsilon
    transposed = (tuple(packed(np.ascontiguousarray(w.T)) for w in weights.weights[0]),) + panels[1:]
    for wrong in (panels[:3], transposed, panels[:1] + tuple(per_layer[:2] for per_layer in panels[1:])):
        with pytest.raises(ValueError, match="packed copies of the block weights"):
            decode_step_cpu.decode_step(weights, x, KVCache.for_model(CONFIG, 2), eps, 4, pool, wrong)
    quantized = step_weights.StepWeights(fast.quantized("int8").params)
    with pytest.raises(ValueError, match="panels are for float32 weights; these are int8"):
        decode_step_cpu.decode_step(quantized, x, KVCache.for_model(CONFIG, 2), eps, 4, pool, panels)
