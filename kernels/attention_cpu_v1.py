"""Causal attention, version 1: the reference's loops written out in numba, one query at a time.

    out = softmax(Q K^T / sqrt(d) + M) V      q: (B, H, Tq, d), k, v: (B, H, Tk, d) -> (B, H, Tq, d)

The first step from `minillm.model.attention.causal_attention` towards the fused kernel, in the
way llm.c's dev/cuda stages its kernels: version 1 computes exactly what the reference computes
in the same order (every score of a row, its max, exp, sum, then the weighted sum of values),
but as loops, so the (Tq, Tk) score matrix shrinks to one row of Tk floats. Version 2
(attention_cpu_v2.py) removes that row too; version 3 (attention_cpu.py, the one the "numba"
backend runs) tiles the loops for SIMD and threads.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

NEG_INF = np.float32(-np.inf)


def attention(q, k, v, key_valid=None) -> np.ndarray:
    """Causal attention; key_valid (B, Tk) bool marks real keys (None: all). -> (B, H, Tq, d)"""
    return run(_attention, q, k, v, key_valid)


def run(kernel, q, k, v, key_valid) -> np.ndarray:
    """kernel(q, k, v, key_valid, out) into zeros; key_valid None means every key is real."""
    if key_valid is None:
        key_valid = np.ones((k.shape[0], k.shape[2]), np.bool_)
    out = np.zeros(q.shape, np.float32)
    kernel(q, k, v, np.asarray(key_valid, np.bool_), out)
    return out


@njit(cache=True)
def _attention(q, k, v, key_valid, out):
    n_batch, n_heads, n_queries, head_dim = q.shape
    n_keys = k.shape[2]
    scale = np.float32(1.0 / math.sqrt(head_dim))
    scores = np.empty(n_keys, np.float32)                  # one row of Q K^T
    for b in range(n_batch):
        for h in range(n_heads):
            for i in range(n_queries):
                position = n_keys - n_queries + i          # the query's place among the keys
                # scores + M: -inf for future keys and padding
                row_max = NEG_INF
                for j in range(n_keys):
                    score = NEG_INF
                    if j <= position and key_valid[b, j]:
                        score = np.float32(0.0)
                        for t in range(head_dim):
                            score += q[b, h, i, t] * k[b, h, j, t]
                        score *= scale
                    scores[j] = score
                    row_max = max(row_max, score)
                if row_max == NEG_INF:
                    continue                               # no key to see: the output stays 0
                # softmax: exp(score - max), normalised by the sum
                total = np.float32(0.0)
                for j in range(n_keys):
                    scores[j] = np.exp(scores[j] - row_max)
                    total += scores[j]
                # the weighted sum of the values
                for j in range(n_keys):
                    weight = scores[j] / total
                    for t in range(head_dim):
                        out[b, h, i, t] += weight * v[b, h, j, t]
