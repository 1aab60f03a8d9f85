"""Properties any correct GPT-2 has, whatever its weights: causality, batch independence,
float32 throughout, a KV cache that changes nothing but speed, padding that changes nothing."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.inference.kv_cache import KVCache
from minillm.model.backends import NumpyBackend
from minillm.model.config import GPT2Config
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params

CAUSAL_TOLERANCE = 1e-6      # an earlier position must not see a later token at all
CACHE_TOLERANCE = 1e-5       # the cache reorders float32 sums, so allow rounding


def random_ids(n, vocab_size, seed=0):
    return np.random.default_rng(seed).integers(0, vocab_size, n)


# ------------------------------------------------------------------------------ causality
@pytest.mark.parametrize("position", [1, 17, 40, 63])
def test_later_tokens_do_not_change_earlier_logits(reference_model, reference, position):
    ids = reference["long.ids"].copy()
    before = reference_model(ids)
    ids[position] = (ids[position] + 1) % reference_model.config.vocab_size
    after = reference_model(ids)
    assert np.abs(after[:position] - before[:position]).max() <= CAUSAL_TOLERANCE
    assert np.abs(after[position] - before[position]).max() > 1e-3     # the change is seen


@st.composite
def model_and_edit(draw):
    """A small random GPT-2, a sequence, and a (position, new token) edit of it."""
    n_head, head_dim = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 4, 8]))
    config = GPT2Config(vocab_size=draw(st.integers(2, 40)), n_positions=draw(st.integers(2, 12)),
                        n_embd=n_head * head_dim, n_layer=draw(st.integers(1, 2)), n_head=n_head)
    T = draw(st.integers(2, config.n_positions))
    ids = np.array(draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=T, max_size=T)))
    position = draw(st.integers(1, T - 1))
    new_token = draw(st.integers(0, config.vocab_size - 1))
    model = GPT2(config, random_params(config, seed=draw(st.integers(0, 2**16)), std=0.5))
    return model, ids, position, new_token


@settings(max_examples=40, deadline=None)
@given(model_and_edit())
def test_causality_on_random_models(case):
    model, ids, position, new_token = case
    edited = ids.copy()
    edited[position] = new_token
    diff = np.abs(model(edited)[:position] - model(ids)[:position]).max()
    assert diff <= CAUSAL_TOLERANCE


# ------------------------------------------------------------------------- batching, dtypes
def test_batch_equals_each_sequence_alone(reference_model, reference):
    rows = np.stack([reference["long.ids"][:20], reference["long.ids"][20:40]])
    batched = reference_model(rows)
    assert batched.shape == (2, 20, reference_model.config.vocab_size)
    for row, logits in zip(rows, batched):
        assert np.abs(logits - reference_model(row)).max() <= CACHE_TOLERANCE


class Float32Spy(NumpyBackend):
    """The numpy backend, asserting that everything it is handed and returns is float32."""

    def linear(self, x, weight, bias=None):
        return check_float32(super().linear(check_float32(x), check_float32(weight), bias))

    def attention(self, q, k, v, key_valid=None):
        return check_float32(super().attention(*map(check_float32, (q, k, v)), key_valid))

    def layer_norm(self, x, gain, bias, eps):
        return check_float32(super().layer_norm(check_float32(x), gain, bias, eps))

    def gelu(self, x):
        return check_float32(super().gelu(check_float32(x)))


def check_float32(x):
    assert x is None or x.dtype == np.float32, f"float32 expected, got {x.dtype}"
    return x


def test_float32_end_to_end(reference_model, reference):
    model = GPT2(reference_model.config, reference_model.params, backend=Float32Spy())
    for ids in (reference["code.ids"], reference["code.ids"].astype(np.int32)[None]):
        out = model.forward(ids, output_hidden_states=True)
        assert out.logits.dtype == np.float32
        assert all(h.dtype == np.float32 for h in out.hidden_states)
    cache = KVCache.for_model(model.config, max_len=20)
    model.forward(reference["code.ids"][None], cache=cache)
    assert model.forward(np.array([[7]]), cache=cache).logits.dtype == np.float32
    assert all(k.dtype == np.float32 for k in cache.keys + cache.values)


# -------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("ids, error, message", [
    ([0, 50257], ValueError, r"token id 50257 is out of range: ids must be in \[0, 50257\)"),
    ([-1, 3], ValueError, "token id -1 is out of range"),
    (np.zeros(129, np.int64), ValueError, "sequence of 129 tokens .* longer than the model's "
                                          "context of 128"),
    (np.array([1.0, 2.0]), TypeError, "token ids must be integers, got dtype float64"),
    (np.zeros(0, np.int64), ValueError, r"shape \(T,\) or \(B, T\) with T >= 1"),
    (np.zeros((1, 2, 3), np.int64), ValueError, r"shape \(T,\) or \(B, T\)"),
])
def test_bad_ids_are_refused(reference_model, ids, error, message):
    with pytest.raises(error, match=message):
        reference_model(ids)


def test_bad_attention_mask_and_full_cache(reference_model):
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"attention_mask must have shape .* \(1, 3\)"):
        reference_model(ids, attention_mask=np.ones((1, 4)))
    cache = KVCache.for_model(reference_model.config, max_len=4)
    reference_model(ids, cache=cache)
    with pytest.raises(ValueError, match="KV cache is full"):
        reference_model(ids, cache=cache)


# ------------------------------------------------------------------------------ KV cache
@pytest.mark.assignment(4, uses=[2, 3])
def test_cached_decoding_equals_recompute(reference_model, reference):
    sequence = reference["english.greedy"]                   # prompt + 20 greedy tokens
    n_prompt = len(reference["english.ids"])
    cache = KVCache.for_model(reference_model.config, max_len=len(sequence))
    prefill = reference_model(sequence[None, :n_prompt], cache=cache)[0]
    assert np.abs(prefill - reference_model(sequence[:n_prompt])).max() <= CACHE_TOLERANCE
    for t in range(n_prompt, len(sequence)):
        step = reference_model(sequence[None, t:t + 1], cache=cache)[0, -1]
        full = reference_model(sequence[:t + 1])[-1]
        assert np.abs(step - full).max() <= CACHE_TOLERANCE, f"step {t}"
        assert cache.length == t + 1


@st.composite
def model_and_chunks(draw):
    n_head, head_dim = draw(st.integers(1, 3)), draw(st.sampled_from([2, 4]))
    config = GPT2Config(vocab_size=17, n_positions=12, n_embd=n_head * head_dim,
                        n_layer=draw(st.integers(1, 2)), n_head=n_head)
    T = draw(st.integers(1, config.n_positions))
    ids = random_ids(T, config.vocab_size, seed=draw(st.integers(0, 2**16)))
    cuts = sorted(set(draw(st.lists(st.integers(1, T), max_size=4))) | {T})
    return GPT2(config, random_params(config, seed=1, std=0.5)), ids, cuts


@settings(max_examples=30, deadline=None)
@given(model_and_chunks())
def test_cache_with_any_chunking_equals_recompute(case):
    model, ids, cuts = case
    cache = KVCache.for_model(model.config)
    full = model(ids)
    start = 0
    for stop in cuts:
        chunk = model(ids[None, start:stop], cache=cache)[0]
        assert np.abs(chunk - full[start:stop]).max() <= CACHE_TOLERANCE
        start = stop


def left_pad(rows, pad_id=50256):
    width = max(map(len, rows))
    ids = np.array([[pad_id] * (width - len(r)) + list(r) for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_left_padding_equals_unpadded(reference_model, reference):
    rows = [reference["english.ids"], reference["chinese.ids"], reference["code.ids"][:3]]
    ids, mask = left_pad(rows)
    padded = reference_model(ids, attention_mask=mask)
    for row, logits, row_mask in zip(rows, padded, mask):
        real = logits[row_mask.astype(bool)]
        assert np.abs(real - reference_model(row)).max() <= CACHE_TOLERANCE


def test_left_padded_cached_decoding_equals_unpadded(reference_model, reference):
    rows = [reference["english.ids"], reference["chinese.ids"], reference["code.ids"][:3]]
    ids, mask = left_pad(rows)
    n_steps = 6
    cache = KVCache.for_model(reference_model.config, batch_size=len(rows),
                              max_len=ids.shape[1] + n_steps)
    logits = reference_model(ids, attention_mask=mask, cache=cache)[:, -1]
    sequences = [list(r) for r in rows]
    for _ in range(n_steps):
        for sequence, row_logits in zip(sequences, logits):
            alone = reference_model(np.array(sequence))[-1]
            assert np.abs(row_logits - alone).max() <= CACHE_TOLERANCE
        next_ids = logits.argmax(-1)
        for sequence, token in zip(sequences, next_ids):
            sequence.append(int(token))
        mask = np.concatenate([mask, np.ones((len(rows), 1), mask.dtype)], axis=1)
        logits = reference_model(next_ids[:, None], attention_mask=mask, cache=cache)[:, -1]
