"""Test oracles shared by the test files: slow, obviously correct versions of what minillm computes,
and the random inputs they are compared on. Each is written the plain way, independently of the
code under test."""
from __future__ import annotations

import math
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


def greedy_by_recompute(model, ids, n_new: int, attention_mask=None) -> np.ndarray:
    """Greedy decoding by full recompute: append the argmax, run everything again."""
    ids = np.asarray(ids)
    for _ in range(n_new):
        next_ids = model(ids, attention_mask=attention_mask)[..., -1, :].argmax(-1)
        ids = np.concatenate([ids, next_ids[..., None]], axis=-1)
        if attention_mask is not None:
            attention_mask = np.concatenate([attention_mask, np.ones_like(attention_mask[:, :1])], -1)
    return ids
