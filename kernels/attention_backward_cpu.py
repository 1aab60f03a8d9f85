"""Causal attention for training, fused in numba: a forward that keeps one statistic per row,
and the FlashAttention-2 backward that recomputes the probabilities from it.

Reference: `causal_attention` and `causal_attention_backward` in minillm/model/attention.py;
tests/test_training_kernels.py compares the two.

The NumPy reference backward materialises P = softmax(S), a (T, T) matrix per head, and keeps
it alive through four matmuls. Here nothing of size T x T exists. The forward saves, for each
query row i, L_i = logsumexp_j(S_ij) (the row max plus the log of the row sum), so that the
backward recomputes any probability in one step: P_ij = exp(S_ij - L_i). With
D_i = sum_c dO_ic O_ic (which equals rowsum(dP * P)):

    dV_j += P_ij dO_i       dS_ij = P_ij (dO_i . V_j - D_i)
    dQ_i += dS_ij K_j / sqrt(d)       dK_j += dS_ij Q_i / sqrt(d)

Extra memory: L and D, O(T) per head, beside the O(T d) inputs and outputs.

Work is cut by (batch, head) pair: each pair's gradients are written by one thread only, so
the result is the same bits for any number of threads. The kernels are compiled `nogil` and
shared out on a minillm.kernels.workers.WorkerPool (pool=None: the calling thread).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(error_model="numpy", cache=True, nogil=True, fastmath={"contract"})
def _forward_heads(q, k, v, out, lse, first, stop):
    """For heads first..stop-1 of (N, T, d) q, k, v: out = softmax(q k^T / sqrt(d) + M) v and
    lse = logsumexp of each query row's scores. Two passes per row over a (T,) scratch row."""
    T, d = q.shape[1], q.shape[2]
    scale = np.float32(1.0 / math.sqrt(d))
    scores = np.empty(T, np.float32)
    for n in range(first, stop):
        for i in range(T):
            row_max = np.float32(-np.inf)
            for j in range(i + 1):                       # causal: keys 0..i
                dot = np.float32(0.0)
                for c in range(d):
                    dot += q[n, i, c] * k[n, j, c]
                scores[j] = dot * scale
                row_max = max(row_max, scores[j])
            total = np.float32(0.0)
            for c in range(d):
                out[n, i, c] = 0.0
            for j in range(i + 1):
                p = np.float32(math.exp(scores[j] - row_max))
                total += p
                for c in range(d):
                    out[n, i, c] += p * v[n, j, c]
            for c in range(d):
                out[n, i, c] /= total
            lse[n, i] = row_max + np.float32(math.log(total))


@njit(error_model="numpy", cache=True, nogil=True, fastmath={"contract"})
def _backward_heads(dout, q, k, v, out, lse, dq, dk, dv, first, stop):
    """dq, dk, dv (zeroed by the caller) for heads first..stop-1, probabilities recomputed."""
    T, d = q.shape[1], q.shape[2]
    scale = np.float32(1.0 / math.sqrt(d))
    for n in range(first, stop):
        for i in range(T):
            row_dot = np.float32(0.0)                    # D_i = dO_i . O_i
            for c in range(d):
                row_dot += dout[n, i, c] * out[n, i, c]
            for j in range(i + 1):
                s = np.float32(0.0)
                dp = np.float32(0.0)
                for c in range(d):
                    s += q[n, i, c] * k[n, j, c]
                    dp += dout[n, i, c] * v[n, j, c]
                p = np.float32(math.exp(s * scale - lse[n, i]))
                ds = p * (dp - row_dot) * scale
                for c in range(d):
                    dv[n, j, c] += p * dout[n, i, c]
                    dq[n, i, c] += ds * k[n, j, c]
                    dk[n, j, c] += ds * q[n, i, c]


def _flat(*arrays):
    """(B, H, T, d) arrays as C-contiguous float32 (B*H, T, d) views or copies."""
    return [np.ascontiguousarray(a, np.float32).reshape(-1, *a.shape[-2:]) for a in arrays]


def _run_by_heads(pool, kernel, n_heads, *args):
    if pool is None:
        kernel(*args, 0, n_heads)
        return
    blocks = pool.split(n_heads)
    pool.run(lambda i: kernel(*args, *blocks[i]), len(blocks))


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, pool=None):
    """Causal attention and its row statistics.  q, k, v: (B, H, T, d) -> out (B, H, T, d),
    lse (B, H, T) with lse[..., i] = logsumexp_j (q_i . k_j / sqrt(d)) over keys j <= i."""
    B, H, T, d = q.shape
    qf, kf, vf = _flat(q, k, v)                                       # (B*H, T, d)
    out = np.empty_like(qf)
    lse = np.empty((B * H, T), np.float32)
    _run_by_heads(pool, _forward_heads, B * H, qf, kf, vf, out, lse)
    return out.reshape(B, H, T, d), lse.reshape(B, H, T)


def attention_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                       out: np.ndarray, lse: np.ndarray, pool=None):
    """dq, dk, dv of causal attention from the forward's out and lse.  All (B, H, T, d)."""
    B, H, T, d = q.shape
    doutf, qf, kf, vf, outf = _flat(dout, q, k, v, out)               # (B*H, T, d)
    lsef = np.ascontiguousarray(lse, np.float32).reshape(B * H, T)
    dq, dk, dv = (np.zeros_like(qf) for _ in range(3))
    _run_by_heads(pool, _backward_heads, B * H, doutf, qf, kf, vf, outf, lsef, dq, dk, dv)
    return dq.reshape(q.shape), dk.reshape(q.shape), dv.reshape(q.shape)
