"""Causal attention, version 2: one pass over the keys with the online softmax, one query at a time.

    out = softmax(Q K^T / sqrt(d) + M) V      q: (B, H, Tq, d), k, v: (B, H, Tk, d) -> (B, H, Tq, d)

Version 1 (attention_cpu_v1.py) stores a row of scores because the softmax needs the row's max
before any exp. The online softmax (Milakov & Gimelshein 2018) does without: keep the largest
score seen so far m, the sum l of exp(score - m) and the weighted sum acc of values; a new score
s > m rescales l and acc by exp(m - s) first. After the last key, out = acc / l exactly. Memory
per query: d floats, whatever Tk is; future keys are never visited. Version 3 (attention_cpu.py)
does the same per tile of queries and keys, vectorised and threaded.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from minillm.kernels.attention_cpu_v1 import run   # plain Python: numba's cache is not involved

NEG_INF = np.float32(-np.inf)


def attention(q, k, v, key_valid=None) -> np.ndarray:
    """Causal attention; key_valid (B, Tk) bool marks real keys (None: all). -> (B, H, Tq, d)"""
    return run(_attention, q, k, v, key_valid)


@njit(cache=True)
def _attention(q, k, v, key_valid, out):
    n_batch, n_heads, n_queries, head_dim = q.shape
    n_keys = k.shape[2]
    scale = np.float32(1.0 / math.sqrt(head_dim))
    acc = np.empty(head_dim, np.float32)                   # sum of exp(score - m) * value
    for b in range(n_batch):
        for h in range(n_heads):
            for i in range(n_queries):
                m, total = NEG_INF, np.float32(0.0)
                acc[:] = 0.0
                for j in range(n_keys - n_queries + i + 1):   # the keys up to the query's own
                    if not key_valid[b, j]:
                        continue
                    score = np.float32(0.0)
                    for t in range(head_dim):
                        score += q[b, h, i, t] * k[b, h, j, t]
                    score *= scale
                    if score > m:                          # a new max: rescale what we have
                        correction = np.exp(m - score)     # exp(-inf) = 0 for the first key
                        total *= correction
                        for t in range(head_dim):
                            acc[t] *= correction
                        m = score
                    weight = np.exp(score - m)
                    total += weight
                    for t in range(head_dim):
                        acc[t] += weight * v[b, h, j, t]
                if total > 0:                              # else no key to see: the output stays 0
                    for t in range(head_dim):
                        out[b, h, i, t] = acc[t] / total
