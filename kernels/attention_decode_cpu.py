"""The decode variant of the fused CPU attention (attention_cpu.py), Tq = 1: one new token per
sequence against the KV cache. `attention_cpu.decode_attention` checks the inputs and calls
`decode` here.

With a single query there is no query tile to fill the lanes, so it runs one query per
(batch, head) job, vectorised along the head dimension: all scores of the row (Tk floats of
scratch per worker), then an exact max, exp and weighted sum of V rows. It reads K and V from the cache's whole contiguous buffer, not the strided slice,
once each, and is bound by that memory traffic (~6 MiB per layer for 12 heads at T = 1024).
Batch x heads gives enough independent jobs for a CPU's cores; splitting the key axis too
(flash-decoding) pays off on GPUs, with thousands of lanes to fill.

Fast-math: `contract` (fused multiply-add), plus `reassoc` for the dot products and the sum.
The masks are -inf, so flags that assume finite values (nnan, ninf, fast) would break them.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import boolean, float32, njit, prange, types, void
from numba.extending import intrinsic

CONTRACT = {"contract"}
REASSOC = {"contract", "reassoc"}
NEG_INF = np.float32(-np.inf)
_STRIDED_4D, _DENSE_4D = float32[:, :, :, :], float32[:, :, :, ::1]

_F = np.float32
# Cephes' expf: exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln(2) / 2, exp(r) by a
# degree-7 polynomial; ln 2 is split in two so that r = x - n ln 2 is computed exactly.
_LOG2E, _LN2_HI, _LN2_LO = _F(1.44269504088896341), _F(0.693359375), _F(-2.12194440e-4)
_P0, _P1, _P2 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_P3, _P4, _P5 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_EXP_UNDERFLOW = _F(-87.33654)     # below this exp(x) < FLT_MIN: return 0


# ---- exp ----------------------------------------------------------------------------------------
# A copy of attention_cpu.py's: numba's on-disk cache only notices edits to this file, so nothing
# jitted here may depend on another file. tests/test_kernels_cpu.py checks the copies are identical.
@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 bit pattern as a float32 (a no-op the vectoriser understands)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return float32(types.int32), codegen


@njit(fastmath=CONTRACT, cache=True)
def exp_nonpositive(x):
    """exp(x) for float32 x <= 0, within 2 ulp; 0 for x = -inf. Vectorisable, unlike libm's expf."""
    n = np.floor(x * _LOG2E + _F(0.5))
    r = x - n * _LN2_HI - n * _LN2_LO
    poly = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    exp_r = poly * r * r + r + _F(1.0)
    two_to_n = _float32_from_bits((np.int32(max(n, _F(-126.0))) + np.int32(127)) << 23)
    return exp_r * two_to_n if x >= _EXP_UNDERFLOW else _F(0.0)


# ---- decode: one query per (batch, head) --------------------------------------------------------
@njit(fastmath=REASSOC, cache=True)
def _dot(x, y):
    total = _F(0.0)
    for t in range(x.shape[0]):
        total += x[t] * y[t]
    return total


@njit(fastmath=REASSOC, cache=True)
def _sum(x):
    total = _F(0.0)
    for j in range(x.shape[0]):
        total += x[j]
    return total


@njit(fastmath=CONTRACT, cache=True)
def _decode_one(q, k, v, key_valid, out, b, h, scores, q_row, acc):
    """out[b, h, 0] for the single query, which sits at the last position and sees every key.

    k, v: C-contiguous (B, H, L, d) buffers of which the first n_keys positions count."""
    n_keys, head_dim = key_valid.shape[1], k.shape[3]
    scale = _F(1.0 / math.sqrt(head_dim))
    for t in range(head_dim):
        q_row[t] = q[b, h, 0, t] * scale
    row_max = NEG_INF
    for j in range(n_keys):
        s = _dot(q_row, k[b, h, j]) if key_valid[b, j] else NEG_INF
        scores[j] = s
        row_max = max(row_max, s)
    acc[:] = 0.0
    if row_max > NEG_INF:
        for j in range(n_keys):
            scores[j] = exp_nonpositive(scores[j] - row_max)
        for j in range(n_keys):
            p = scores[j]
            for t in range(head_dim):
                acc[t] += p * v[b, h, j, t]
        inv_total = _F(1.0) / _sum(scores[:n_keys])
        for t in range(head_dim):
            acc[t] *= inv_total
    for t in range(head_dim):
        out[b, h, 0, t] = acc[t]


@njit(void(_STRIDED_4D, _DENSE_4D, _DENSE_4D, boolean[:, :], _DENSE_4D,
           float32[::1], float32[::1], float32[::1], types.intp, types.intp),
      nogil=True, cache=True, fastmath=CONTRACT)
def _decode_worker_jobs(q, k, v, key_valid, out, scores, q_row, acc, worker, n_workers):
    """One worker's share of the (batch, head) jobs: worker, worker + n_workers, ..."""
    n_heads = q.shape[1]
    for job in range(worker, q.shape[0] * n_heads, n_workers):
        b, h = divmod(job, n_heads)
        _decode_one(q, k, v, key_valid, out, b, h, scores, q_row, acc)


@njit(parallel=True, nogil=True, cache=True)
def _decode_parallel(q, k, v, key_valid, out, scores, q_rows, acc):
    """All (batch, head) jobs on numba's threads, one share per row of the scratch arrays."""
    n_workers = scores.shape[0]
    for worker in prange(n_workers):
        _decode_worker_jobs(q, k, v, key_valid, out, scores[worker], q_rows[worker], acc[worker],
                            worker, n_workers)


@njit(cache=True)
def _same_data_pointer(a, b):
    """Do a and b start at the same address? (In numba: ~1 us, where NumPy's `.ctypes.data`
    costs ~3 us an array, four of them per layer and step: k, v and their buffers.)"""
    return a.ctypes.data == b.ctypes.data


def _dense_buffer(x: np.ndarray) -> np.ndarray:
    """A C-contiguous array whose first x.shape[2] positions (axis 2) are x, without copying
    when x is such a prefix: numba types a slice of the KV cache as a general strided array and
    will not vectorise loads from it, while the whole cache buffer is contiguous."""
    if x.flags.c_contiguous:
        return x
    base = x.base
    if (isinstance(base, np.ndarray) and base.flags.c_contiguous and base.dtype == x.dtype
            and base.ndim == 4 and base.shape[:2] == x.shape[:2] and base.shape[3] == x.shape[3]
            and base.strides == x.strides and _same_data_pointer(base, x)):
        return base
    return np.ascontiguousarray(x)


def decode(q, k, v, key_valid, pool=None, n_threads: int = 1) -> np.ndarray:
    """decode_attention on checked inputs: q (B,H,1,d), k, v (B,H,Tk,d) float32, key_valid
    (B, Tk) bool.

    pool: a WorkerPool to share the jobs among. Without one, n_threads of numba's threads
    share them: a decoding step runs this once per layer, and starting numba's threads costs a
    few us where a pool's hand-off costs ~0.07 ms; the keys and values come from memory (the
    weights streamed through the caches since the last step), so two cores read them ~2x faster."""
    out = np.empty(q.shape, np.float32)
    if out.size == 0:
        return out
    n_jobs = q.shape[0] * q.shape[1]
    n_workers = pool.n_threads if pool is not None else max(1, min(n_threads, n_jobs))
    n_keys, head_dim = k.shape[2], q.shape[3]
    scores = np.empty((n_workers, n_keys), np.float32)
    q_rows = np.empty((n_workers, head_dim), np.float32)
    acc = np.empty((n_workers, head_dim), np.float32)
    k, v = _dense_buffer(k), _dense_buffer(v)
    if pool is not None:
        pool.run(lambda w: _decode_worker_jobs(q, k, v, key_valid, out, scores[w], q_rows[w],
                                               acc[w], w, n_workers))
    elif n_workers > 1:
        _decode_parallel(q, k, v, key_valid, out, scores, q_rows, acc)
    else:
        _decode_worker_jobs(q, k, v, key_valid, out, scores[0], q_rows[0], acc[0], 0, 1)
    return out
