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

Extra memory: L, O(T) per head, beside the O(T d) inputs and outputs, and per worker a copy of
one head's K and V transposed to (d, T) plus a few rows of size T or d.

Loop order: every inner loop is elementwise over a contiguous axis (an "axpy", y += a x), which
LLVM vectorises without fast-math. A dot product over d per (i, j) would be a reduction, and
vectorising one needs the sum reordered. So the scores of query i are summed over c as
S_i,: += Q_ic K^T_c,: (a row of the transposed copy), dO_i . V_j likewise from V^T, and the
updates of dQ_i, dK_j, dV_j run along d. The exponentials use fused_cpu.exp_f32, inlined so
that the loop over keys vectorises too.

Work is cut by (batch, head) pair: each pair's gradients are written by one thread only, so
the result is the same bits for any number of threads. The kernels are compiled `nogil` and
shared out on a minillm.kernels.workers.WorkerPool (pool=None: the calling thread).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from minillm.kernels.fused_cpu import exp_f32


@njit(inline="always", error_model="numpy", cache=True)
def _transpose_head(a, n, a_t):
    """a_t[c, j] = a[n, j, c]: head n of (N, T, d) a as a (d, T) array."""
    for j in range(a.shape[1]):
        for c in range(a.shape[2]):
            a_t[c, j] = a[n, j, c]


@njit(inline="always", error_model="numpy", cache=True, fastmath={"contract"})
def _row_scores(q, n, i, k_t, scale, scores):
    """scores[j] = (q_i . k_j) / sqrt(d) for keys j <= i, k_t being head n's keys as (d, T).

    Summed as d passes of scores[:i+1] += (q_ic / sqrt(d)) * k_t[c, :i+1]: each pass is
    elementwise over contiguous memory, so it vectorises without reordering any sum (a dot
    product per key would be a reduction, kept scalar without fast-math)."""
    for j in range(i + 1):
        scores[j] = 0.0
    for c in range(q.shape[2]):
        q_ic = q[n, i, c] * scale
        for j in range(i + 1):
            scores[j] += q_ic * k_t[c, j]


@njit(inline="always", error_model="numpy", cache=True)
def _exp_keep_nan(x):
    """exp_f32(x), but NaN stays NaN (exp_f32 clamps its input first)."""
    e = exp_f32(x)
    return e if x == x else x


@njit(error_model="numpy", cache=True, nogil=True, fastmath={"contract"})
def _forward_heads(q, k, v, out, lse, first, stop):
    """For heads first..stop-1 of (N, T, d) q, k, v: out = softmax(q k^T / sqrt(d) + M) v and
    lse = logsumexp of each query row's scores. Scratch: K^T (d, T), a (T,) row, a (d,) row."""
    T, d = q.shape[1], q.shape[2]
    scale = np.float32(1.0 / math.sqrt(d))
    k_t = np.empty((d, T), np.float32)
    scores = np.empty(T, np.float32)
    acc = np.empty(d, np.float32)
    for n in range(first, stop):
        _transpose_head(k, n, k_t)
        for i in range(T):
            _row_scores(q, n, i, k_t, scale, scores)         # causal: keys 0..i
            row_max = np.float32(-np.inf)
            for j in range(i + 1):
                row_max = max(row_max, scores[j])
            for j in range(i + 1):                           # scores -> unnormalised p
                scores[j] = _exp_keep_nan(scores[j] - row_max)
            total = np.float32(0.0)
            for j in range(i + 1):
                total += scores[j]
            acc[:] = 0.0
            for j in range(i + 1):                           # acc = sum_j p_j v_j
                p = scores[j]
                for c in range(d):
                    acc[c] += p * v[n, j, c]
            for c in range(d):
                out[n, i, c] = acc[c] / total
            lse[n, i] = row_max + np.float32(math.log(total))


@njit(error_model="numpy", cache=True, nogil=True, fastmath={"contract"})
def _backward_heads(dout, q, k, v, out, lse, dq, dk, dv, first, stop):
    """dq, dk, dv (zeroed by the caller) for heads first..stop-1, probabilities recomputed.
    Scratch: K^T and V^T (d, T), two (T,) rows (p and dS of one query), a (d,) row."""
    T, d = q.shape[1], q.shape[2]
    scale = np.float32(1.0 / math.sqrt(d))
    k_t = np.empty((d, T), np.float32)
    v_t = np.empty((d, T), np.float32)
    p = np.empty(T, np.float32)
    ds = np.empty(T, np.float32)
    dq_i = np.empty(d, np.float32)
    for n in range(first, stop):
        _transpose_head(k, n, k_t)
        _transpose_head(v, n, v_t)
        for i in range(T):
            row_dot = np.float32(0.0)                        # D_i = dO_i . O_i
            for c in range(d):
                row_dot += dout[n, i, c] * out[n, i, c]
            _row_scores(q, n, i, k_t, scale, p)              # the forward's scores, same bits
            for j in range(i + 1):
                ds[j] = 0.0
            for c in range(d):                               # ds[j] = dO_i . V_j, as axpys
                dout_ic = dout[n, i, c]
                for j in range(i + 1):
                    ds[j] += dout_ic * v_t[c, j]
            lse_i = lse[n, i]
            for j in range(i + 1):
                p[j] = _exp_keep_nan(p[j] - lse_i)
                ds[j] = p[j] * (ds[j] - row_dot) * scale
            dq_i[:] = 0.0
            for j in range(i + 1):
                ds_j, p_j = ds[j], p[j]
                for c in range(d):
                    dq_i[c] += ds_j * k[n, j, c]
                for c in range(d):
                    dk[n, j, c] += ds_j * q[n, i, c]
                for c in range(d):
                    dv[n, j, c] += p_j * dout[n, i, c]
            for c in range(d):
                dq[n, i, c] = dq_i[c]


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
