"""Test oracles shared by the test files: slow, obviously correct versions of what minillm computes,
and the random inputs they are compared on. Each is written the plain way, independently of the
code under test.

The oracles that compute what an assignment asks for (naive_attention, LayerNorm and GELU, the
naive BPE trainer) are withheld from the student copy (assignments.toml): the graded tests compare against what
they recorded in tests/data/oracles/ (scripts/record_oracles.py), and tests/test_oracles.py,
which is not released, checks that the recording is current."""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import numpy as np


def float32_normals(seed: int = 0) -> Callable[..., np.ndarray]:
    """randn(*shape, scale=1.0, shift=0.0): float32 normal samples from a generator of its own,
    so each test file draws the same numbers whatever else runs."""
    rng = np.random.default_rng(seed)

    def randn(*shape, scale=1.0, shift=0.0) -> np.ndarray:
        return (scale * rng.standard_normal(shape) + shift).astype(np.float32)

    return randn


def random_qkv(rng: np.random.Generator, B: int, H: int, Tq: int, Tk: int, d: int):
    """Queries (B, H, Tq, d) and keys, values (B, H, Tk, d), float32 standard normal."""
    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32)
    return normal(B, H, Tq, d), normal(B, H, Tk, d), normal(B, H, Tk, d)


def naive_attention(q, k, v, key_valid=None) -> np.ndarray:
    """One query at a time in float64: scores with the keys it may see, softmax, weighted sum."""
    B, H, Tq, d = q.shape
    Tk = k.shape[2]
    out = np.zeros((B, H, Tq, d))
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                position = Tk - Tq + i
                keys = [j for j in range(position + 1) if key_valid is None or key_valid[b, j]]
                if not keys:
                    continue                           # a padding query: zero output
                scores = np.array([q[b, h, i] @ k[b, h, j] for j in keys], np.float64)
                scores /= math.sqrt(d)
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, h, i] = sum(w * v[b, h, j].astype(np.float64) for w, j in zip(weights, keys))
    return out


def layer_norm_f64(x, gain, bias, eps=1e-5) -> np.ndarray:
    """LayerNorm over the last axis in float64, with the biased variance (as PyTorch)."""
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + bias


def gelu_tanh_f64(x) -> np.ndarray:
    """GPT-2's GELU, the tanh approximation, in float64."""
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def greedy_by_recompute(model, ids, n_new: int, attention_mask=None) -> np.ndarray:
    """Greedy decoding by full recompute: append the argmax, run everything again."""
    ids = np.asarray(ids)
    for _ in range(n_new):
        next_ids = model(ids, attention_mask=attention_mask)[..., -1, :].argmax(-1)
        ids = np.concatenate([ids, next_ids[..., None]], axis=-1)
        if attention_mask is not None:
            attention_mask = np.concatenate([attention_mask, np.ones_like(attention_mask[:, :1])], -1)
    return ids


def naive_merges(texts, n_merges, special_tokens=()) -> list[tuple[int, int]]:
    """BPE training the slow way: recount every pair from scratch before each merge."""
    from minillm.tokenizer.bpe import bytes_to_unicode
    from minillm.tokenizer.train import count_pieces, merge_ids

    byte_ids = {byte: i for i, byte in enumerate(bytes_to_unicode())}
    token_bytes = [bytes([byte]) for byte in bytes_to_unicode()]
    piece_counts = count_pieces(texts, special_tokens)
    pieces = [[byte_ids[byte] for byte in piece.encode()] for piece in piece_counts]
    merges = []
    for _ in range(n_merges):
        counts = naive_pair_counts(pieces, list(piece_counts.values()))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], token_bytes[p[0]], token_bytes[p[1]]))
        token_bytes.append(token_bytes[best[0]] + token_bytes[best[1]])
        pieces = [merge_ids(piece, best, len(token_bytes) - 1) for piece in pieces]
        merges.append(best)
    return merges


def naive_pair_counts(pieces, piece_counts) -> Counter:
    """How often each adjacent pair of ids occurs, each piece weighted by its count."""
    counts = Counter()
    for piece, count in zip(pieces, piece_counts):
        for pair in zip(piece, piece[1:]):
            counts[pair] += count
    return counts


def naive_pieces_with_pair(pieces) -> dict[tuple[int, int], set[int]]:
    """pair -> the indices of the pieces it occurs in."""
    index = {}
    for i, piece in enumerate(pieces):
        for pair in zip(piece, piece[1:]):
            index.setdefault(pair, set()).add(i)
    return index
