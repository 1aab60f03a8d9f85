"""The KV cache and the decode loop on their own: the cache against plain concatenation, and
generation driven by a stand-in model whose next token is known in advance, so these tests
need no attention and no GPT-2 block."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from minillm.inference.generate import generate, stream
from minillm.inference.kv_cache import KVCache
from minillm.model.config import GPT2Config

from oracles import float32_normals

randn = float32_normals(seed=0)


class NextTokenModel:
    """Stands in for GPT2 in `generate`: the logits of a position favour (its token + 1) mod V,
    whatever came before. Records (ids shape, cache length, last_only) for every call."""

    config = GPT2Config(vocab_size=10, n_positions=32, n_embd=4, n_layer=1, n_head=1)

    def __init__(self):
        self.calls = []

    def forward(self, ids, *, attention_mask=None, cache=None, last_only=False):
        ids = np.asarray(ids)                                           # (B, T)
        self.calls.append((ids.shape, None if cache is None else cache.length, last_only))
        logits = np.zeros((*ids.shape, self.config.vocab_size), np.float32)
        np.put_along_axis(logits, (ids[..., None] + 1) % self.config.vocab_size, 1.0, axis=-1)
        if cache is not None:
            cache.advance(ids.shape[1])       # the real model does this once every layer is done
        return SimpleNamespace(logits=logits[:, -1:] if last_only else logits)


# ---- the cache -----------------------------------------------------------------------------------
@pytest.mark.assignment(4)
def test_update_appends_after_the_cached_positions_and_returns_them_all():
    cache = KVCache(n_layer=2, batch_size=2, n_head=3, head_dim=4, max_len=10)
    k1, v1, k2, v2 = randn(2, 3, 5, 4), randn(2, 3, 5, 4), randn(2, 3, 1, 4), randn(2, 3, 1, 4)
    keys, values = cache.update(1, k1, v1)
    np.testing.assert_array_equal(keys, k1)
    np.testing.assert_array_equal(values, v1)
    cache.advance(5)
    keys, values = cache.update(1, k2, v2)
    np.testing.assert_array_equal(keys, np.concatenate([k1, k2], axis=2))
    np.testing.assert_array_equal(values, np.concatenate([v1, v2], axis=2))
    assert np.shares_memory(keys, cache.keys[1])      # views of the preallocated buffer, no copy
    assert not cache.keys[0].any()                    # other layers untouched


def test_every_layers_keys_and_values_are_views_of_one_zeroed_block():
    """One allocation per cache (a fresh cache per prompt then reuses freed memory instead of
    faulting in new pages): each layer's keys and values C-contiguous, zero, and apart."""
    cache = KVCache(n_layer=3, batch_size=2, n_head=3, head_dim=4, max_len=5)
    arrays = cache.keys + cache.values
    assert len({id(a.base) for a in arrays}) == 1 and arrays[0].base is not None
    assert all(a.shape == (2, 3, 5, 4) and a.dtype == np.float32 and a.flags.c_contiguous
               and not a.any() for a in arrays)
    cache.values[1][...] = 1.0
    assert [int(a.sum()) for a in arrays] == [0, 0, 0, 0, 120, 0]


@pytest.mark.assignment(4)
def test_update_refuses_to_overflow_the_cache():
    cache = KVCache(n_layer=1, batch_size=1, n_head=1, head_dim=2, max_len=4)
    cache.update(0, randn(1, 1, 3, 2), randn(1, 1, 3, 2))
    cache.advance(3)
    with pytest.raises(ValueError, match="KV cache is full"):
        cache.update(0, randn(1, 1, 2, 2), randn(1, 1, 2, 2))


# ---- the decode loop -----------------------------------------------------------------------------
@pytest.mark.assignment(4)
def test_prefill_then_one_new_token_per_step():
    model = NextTokenModel()
    assert generate(model, [3, 5], 4).tolist() == [3, 5, 6, 7, 8, 9]
    # The prompt once, then each chosen token alone against the growing cache; nothing after
    # the last token is chosen.
    assert model.calls == [((1, 2), 0, True), ((1, 1), 2, True), ((1, 1), 3, True), ((1, 1), 4, True)]


@pytest.mark.assignment(4)
def test_without_cache_each_step_sees_the_whole_sequence():
    model = NextTokenModel()
    assert generate(model, [3, 5], 3, use_cache=False).tolist() == [3, 5, 6, 7, 8]
    assert [shape for shape, _, _ in model.calls] == [(1, 2), (1, 3), (1, 4)]


@pytest.mark.assignment(4)
def test_finished_rows_are_padded_and_generation_stops_when_all_are_done():
    model = NextTokenModel()
    out = generate(model, [[3], [1]], 10, eos_token_id=5, pad_token_id=0)
    assert out.tolist() == [[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]]


@pytest.mark.assignment(4)
def test_stream_yields_each_token_as_it_is_chosen():
    model = NextTokenModel()
    tokens = stream(model, [8], 3)
    assert next(tokens) == 9 and len(model.calls) == 1    # chosen from the prefill alone
    assert list(tokens) == [0, 1]
