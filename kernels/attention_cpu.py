"""Fused causal attention on the CPU, FlashAttention-style, in numba.

    out = softmax(Q K^T / sqrt(d) + M) V      q: (B, H, Tq, d), k, v: (B, H, Tk, d) -> (B, H, Tq, d)

Reference: `minillm.model.attention.causal_attention` (imported here as `reference`);
tests/test_kernels_cpu.py compares the two. This is version 3 of the staged kernels: read
attention_cpu_v1.py (the reference's loops) and attention_cpu_v2.py (the online softmax) first.
The queries are the last Tq of the Tk positions (query i sits at Tk - Tq + i), M masks future
keys and keys whose `key_valid[b, j]` is False, and a query that can see no key at all gets
zeros. q, k, v may be any strided views (the KV cache hands out slices of a bigger buffer).

The reference materialises the (Tq, Tk) score matrix of every head: O(T^2) memory and several
passes over it. This kernel never does. For each (batch, head, tile of BQ queries) it walks the
keys in tiles of BK, computes that tile's scores, and folds them into a running result with the
online softmax (Milakov & Gimelshein 2018; Dao et al. 2022). Per query it keeps the largest
score seen so far m, the sum l of exp(score - m), and the weighted sum of values acc. A new tile
with maximum m' > m rescales l and acc by exp(m - m') before adding its own terms, so after the
last tile out = acc / l is exactly the softmax-weighted average. Keys in the future of every
query of a panel are never visited (each panel stops at its own last query), which halves the
work for causal attention.

Layout, chosen so that LLVM vectorises every inner loop:
- queries run along the SIMD lanes: a tile keeps its queries side by side in panels of NR = 32
  (q_t[panel, t, lane] = q[query, t] / sqrt(d)), and so do its scores and accumulators;
- keys (and value columns) run along the rows of MR x NR = 3 x 32 register tiles, the matmul
  kernel's shape: S^T = K Q^T and acc^T += V^T P^T, reading K and V rows in place (one
  broadcast per element), so neither is copied or transposed. A tile is 12 AVX2 accumulators;
  each step loads 4 vectors, broadcasts 3 values and issues 12 fused multiply-adds, enough
  independent ones to hide the FMA latency, and 12 + 3 + 1 registers fit AVX2's 16 (checked in
  the assembly). The usual AVX2 shape, 6 x 16, spills here: LLVM loads all 6 broadcasts first;
- every softmax statistic is per lane, so masking, max, exp and sum are plain vector ops with no
  horizontal reductions. `exp_nonpositive` is a polynomial exp (Cephes' expf) that LLVM can
  vectorise, unlike a call to libm.

Work sharing: jobs are (batch, head, query tile), and a later query tile sees more keys. The
workers, threads of a minillm.kernels.workers.WorkerPool (the kernels are compiled nogil), take
the next job from a shared atomic counter, the costliest (last) tiles first, so they finish
together; a job's arithmetic is the same whichever worker runs it, so the result does not
depend on the number of threads.

Memory beyond the output: per worker thread, the tile's queries, scores and accumulators,
(d + d rounded up to MR + BK + 3) x BQ floats, 57 KiB for d = 64, whatever T is: O(T d) in
all, not O(T^2).

The decode variant (Tq = 1, one new token against the KV cache) is attention_decode_cpu.py;
`decode_attention` below checks its inputs and hands them over.

Fast-math: only `contract` (fused multiply-add). The masks are -inf, so flags that assume
finite values (nnan, ninf, fast) would break them.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import boolean, errors, float32, njit, prange, types, void
from numba.core import cgutils
from numba.extending import intrinsic

from minillm.kernels import attention_decode_cpu
from minillm.kernels.workers import WorkerPool
from minillm.model.attention import causal_attention as reference  # noqa: F401  what they compute

BQ = 64            # queries per tile: 2 panels of NR lanes
BK = 96            # keys per tile, a multiple of MR (48 and 72 measured about as fast)
MR = 3             # keys (or value columns) per register tile, written out in the micro-kernels
NR = 32            # queries per register tile: 4 AVX2 vectors
N_STATS = 3        # per-query statistics: running max m, running sum l, correction for acc
TILE_FLOATS = MR * NR
NEG_INF = np.float32(-np.inf)
# The causal mask of one key as an addend: _CAUSAL_MASK[NR - f : 2 NR - f] is -inf for lanes
# 0 .. f-1 (queries before the key) and 0 for the others; a slice of a constant, not a branch.
_CAUSAL_MASK = np.where(np.arange(2 * NR) < NR, NEG_INF, np.float32(0.0)).astype(np.float32)
CONTRACT = {"contract"}

_F = np.float32
# Cephes' expf: exp(x) = 2^n exp(r), n = round(x / ln 2), |r| <= ln(2) / 2, exp(r) by a
# degree-7 polynomial; ln 2 is split in two so that r = x - n ln 2 is computed exactly.
_LOG2E, _LN2_HI, _LN2_LO = _F(1.44269504088896341), _F(0.693359375), _F(-2.12194440e-4)
_P0, _P1, _P2 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_P3, _P4, _P5 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_EXP_UNDERFLOW = _F(-87.33654)     # below this exp(x) < FLT_MIN: return 0


# ---- exp ----------------------------------------------------------------------------------------
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


# ---- register tiles -----------------------------------------------------------------------------
# The same two helpers as in matmul_cpu.py, repeated rather than imported: numba's on-disk cache
# only notices edits to this file, so nothing jitted here may depend on another file.
# tests/test_kernels_cpu.py checks that the two copies stay identical.
@intrinsic
def stack_floats(typingctx, count):
    """A pointer to `count` float32 on the stack; `count` must be a compile-time constant.

    numba has no local fixed-size arrays on the CPU; this is one, for tiles meant to live in
    registers (LLVM promotes a stack array whose address never escapes to registers)."""
    if not isinstance(count, types.IntegerLiteral):
        raise errors.RequireLiteralValue(count)

    def codegen(context, builder, signature, args):
        size = signature.args[0].literal_value
        return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=size)

    return types.CPointer(types.float32)(count), codegen


@njit(inline="always", cache=True)
def register_tile():
    """An MR x NR float32 tile of zeros on the stack."""
    tile = numba.carray(stack_floats(TILE_FLOATS), (MR, NR))
    for r in range(MR):
        for c in range(NR):
            tile[r, c] = 0.0
    return tile


@njit(inline="always", cache=True)
def _register_lanes():
    """NR float32 zeros on the stack: one value per query lane."""
    lanes = numba.carray(stack_floats(NR), NR)
    for i in range(NR):
        lanes[i] = 0.0
    return lanes


# ---- one tile of keys ---------------------------------------------------------------------------
@njit(fastmath=CONTRACT, cache=True)
def _scores_block(k_tile, key_valid, b, k0, n_keys, q_panel, query_pos, scores, lane_max):
    """scores[:n_keys] = masked k_tile[:n_keys] . q_panel; lane_max = max(lane_max, scores).

    k_tile: (keys, d), keys k0, k0 + 1, ...; q_panel: (d, NR) queries of one panel, already
    scaled by 1/sqrt(d); query_pos: absolute position of lane 0."""
    last = n_keys - 1
    row_max = _register_lanes()
    for i in range(NR):
        row_max[i] = lane_max[i]
    for j0 in range(0, n_keys, MR):
        # Rows past n_keys repeat the last key; they are masked below and nothing reads them.
        row0, row1, row2 = min(j0, last), min(j0 + 1, last), min(j0 + 2, last)
        tile = register_tile()
        for t in range(q_panel.shape[0]):
            k0t, k1t, k2t = k_tile[row0, t], k_tile[row1, t], k_tile[row2, t]
            for i in range(NR):
                q_ti = q_panel[t, i]
                tile[0, i] += k0t * q_ti
                tile[1, i] += k1t * q_ti
                tile[2, i] += k2t * q_ti
        for r in range(MR):
            # Lanes before first_lane are queries that come before this key (the causal mask);
            # a padding key, or a row past n_keys, masks them all.
            valid = j0 + r <= last and key_valid[b, k0 + min(j0 + r, last)]
            first_lane = min(max(k0 + j0 + r - query_pos, 0), NR) if valid else NR
            mask = _CAUSAL_MASK[NR - first_lane:]
            for i in range(NR):
                s = tile[r, i] + mask[i]
                scores[j0 + r, i] = s
                row_max[i] = max(row_max[i], s)
    for i in range(NR):
        lane_max[i] = row_max[i]


@njit(fastmath=CONTRACT, cache=True)
def _softmax_block(scores, n_keys, tile_max, stats):
    """Online-softmax step for one panel: scores -> exp(scores - new max) in place; rescale l.

    tile_max: max(running max, this tile's scores) per lane. stats rows: 0 running max m,
    1 running sum l, 2 correction exp(m_old - m_new) for acc."""
    ### BEGIN SOLUTION a5: the online-softmax step (correction, exp in place, running sum and max)
    lanes = NR      # a constant trip count: vectorised, then unrolled into 4 vectors side by side
    shift = _register_lanes()
    lane_sum = _register_lanes()
    for i in range(lanes):
        # A query that has seen only masked keys keeps m = -inf, and subtracts 0 instead, so
        # that exp(-inf - 0) = 0 rather than exp(-inf + inf) = nan.
        shift[i] = tile_max[i] if tile_max[i] > NEG_INF else _F(0.0)
        stats[2, i] = exp_nonpositive(stats[0, i] - shift[i])
    for j in range(n_keys):
        for i in range(lanes):
            p = exp_nonpositive(scores[j, i] - shift[i])
            scores[j, i] = p
            lane_sum[i] += p
    for i in range(lanes):
        stats[1, i] = stats[1, i] * stats[2, i] + lane_sum[i]
        stats[0, i] = tile_max[i]
    ### END SOLUTION


@njit(fastmath=CONTRACT, cache=True)
def _pv_block(v_tile, n_keys, weights, correction, acc):
    """acc = acc * correction + v_tile[:n_keys]^T . weights[:n_keys], MR value columns at a time.

    v_tile: (keys, d); acc: (d rounded up to MR, NR), rows past d unused."""
    lanes = acc.shape[1]    # a runtime trip count: LLVM's loop vectoriser takes this loop
    for t in range(acc.shape[0]):
        for i in range(lanes):
            # A pass of its own: inside the register tile's set-up, LLVM builds the products
            # one float at a time.
            acc[t, i] *= correction[i]
    last_col = v_tile.shape[1] - 1
    for t0 in range(0, acc.shape[0], MR):
        col0, col1, col2 = min(t0, last_col), min(t0 + 1, last_col), min(t0 + 2, last_col)
        tile = register_tile()
        for r in range(MR):
            for i in range(NR):
                tile[r, i] = acc[t0 + r, i]
        for j in range(n_keys):
            v0, v1, v2 = v_tile[j, col0], v_tile[j, col1], v_tile[j, col2]
            for i in range(NR):
                p_ji = weights[j, i]
                tile[0, i] += v0 * p_ji
                tile[1, i] += v1 * p_ji
                tile[2, i] += v2 * p_ji
        for r in range(MR):
            for i in range(NR):
                acc[t0 + r, i] = tile[r, i]


# ---- one tile of queries ------------------------------------------------------------------------
@njit(fastmath=CONTRACT, cache=True)
def _attend_query_tile(q, k, v, key_valid, out, b, h, q0, n_queries, q_t, scores, acc, stats):
    """out[b, h, q0 : q0+n_queries] for one tile of queries, walking the key tiles it can see."""
    head_dim = q.shape[3]
    scale = _F(1.0 / math.sqrt(head_dim))
    offset = k.shape[2] - q.shape[2]            # absolute position of query 0
    n_panels = (n_queries + NR - 1) // NR
    for p in range(n_panels):
        for t in range(head_dim):
            for i in range(NR):
                query = p * NR + i
                q_t[p, t, i] = q[b, h, q0 + query, t] * scale if query < n_queries else _F(0.0)
    acc[:] = 0.0
    stats[:, 0] = NEG_INF
    stats[:, 1] = 0.0
    keys_seen = offset + q0 + n_queries         # the last query of the tile sees keys [0, this)
    for k0 in range(0, keys_seen, BK):
        n_keys = min(BK, keys_seen - k0)
        # Views of this tile's rows: indices from 0 spare the inner loops a bounds fix-up.
        k_tile, v_tile = k[b, h, k0:k0 + n_keys], v[b, h, k0:k0 + n_keys]
        for p in range(n_panels):
            # Keys after the panel's last query are masked in all of its lanes: skip them.
            panel_keys = min(n_keys, offset + q0 + (p + 1) * NR - k0)
            if panel_keys <= 0:
                continue
            tile_max = _register_lanes()
            for i in range(NR):
                tile_max[i] = stats[p, 0, i]
            _scores_block(k_tile, key_valid, b, k0, panel_keys, q_t[p], offset + q0 + p * NR,
                          scores[p], tile_max)
            _softmax_block(scores[p], panel_keys, tile_max, stats[p])
            _pv_block(v_tile, panel_keys, scores[p], stats[p, 2], acc[p])
    for query in range(n_queries):
        p, i = divmod(query, NR)
        total = stats[p, 1, i]
        inv_total = _F(1.0) / total if total > 0 else _F(0.0)
        for t in range(head_dim):
            out[b, h, q0 + query, t] = acc[p, t, i] * inv_total


_STRIDED_4D, _DENSE_4D, _SCRATCH_3D = float32[:, :, :, :], float32[:, :, :, ::1], float32[:, :, ::1]
_SCRATCH_4D = float32[:, :, :, ::1]      # one _SCRATCH_3D per worker


@intrinsic
def _take_ticket(typingctx, counter):
    """counter[0] += 1 atomically (int64[::1], shared by the workers); returns the old value."""
    if counter != types.int64[::1]:
        raise errors.TypingError(f"counter must be int64[::1], got {counter}")

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        one = ir.Constant(ir.IntType(64), 1)
        return builder.atomic_rmw("add", array.data, one, "monotonic")

    return types.int64(counter), codegen


@njit(void(_STRIDED_4D, _STRIDED_4D, _STRIDED_4D, boolean[:, :], _DENSE_4D,
           _SCRATCH_3D, _SCRATCH_3D, _SCRATCH_3D, _SCRATCH_3D, types.int64[::1]),
      nogil=True, cache=True, fastmath=CONTRACT)
def _worker_jobs(q, k, v, key_valid, out, q_t, scores, acc, stats, next_job):
    """Take (batch, head, query tile) jobs from the shared counter next_job until none is left;
    the last query tiles, which see the most keys, come first. q_t, scores, acc, stats: this
    worker's scratch (panels, ..., NR)."""
    n_batch, n_heads, n_queries, _ = q.shape
    n_tiles = (n_queries + BQ - 1) // BQ
    n_jobs = n_batch * n_heads * n_tiles
    job = _take_ticket(next_job)
    while job < n_jobs:
        from_last, head_job = divmod(job, n_batch * n_heads)
        b, h = divmod(head_job, n_heads)
        q0 = (n_tiles - 1 - from_last) * BQ
        _attend_query_tile(q, k, v, key_valid, out, b, h, q0, min(BQ, n_queries - q0),
                           q_t, scores, acc, stats)
        job = _take_ticket(next_job)


@njit(void(_STRIDED_4D, _STRIDED_4D, _STRIDED_4D, boolean[:, :], _DENSE_4D,
           _SCRATCH_4D, _SCRATCH_4D, _SCRATCH_4D, _SCRATCH_4D, types.int64[::1]),
      parallel=True, nogil=True, cache=True)
def _numba_workers(q, k, v, key_valid, out, q_t, scores, acc, stats, next_job):
    """_worker_jobs on each of numba's threads, worker w with scratch [w]."""
    for w in prange(q_t.shape[0]):
        _worker_jobs(q, k, v, key_valid, out, q_t[w], scores[w], acc[w], stats[w], next_job)


# ---- entry points -------------------------------------------------------------------------------
def _check_inputs(q, k, v, key_valid):
    q, k, v = np.asarray(q, np.float32), np.asarray(k, np.float32), np.asarray(v, np.float32)
    if q.ndim != 4 or k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"expected q (B,H,Tq,d), k and v (B,H,Tk,d); "
                         f"got {q.shape}, {k.shape}, {v.shape}")
    n_batch, n_queries, n_keys = q.shape[0], q.shape[2], k.shape[2]
    if n_queries > n_keys:
        raise ValueError(f"{n_queries} queries but only {n_keys} keys: "
                         "the queries are the last Tq of the Tk positions")
    if key_valid is None:
        key_valid = np.ones((n_batch, n_keys), np.bool_)
    key_valid = np.asarray(key_valid, np.bool_)
    if key_valid.shape != (n_batch, n_keys):
        raise ValueError(f"key_valid must be (B, Tk) = {(n_batch, n_keys)}, got {key_valid.shape}")
    return q, k, v, key_valid


def flash_attention(q, k, v, key_valid=None, pool=None, decode_threads: int = 1,
                    n_threads: int = 1) -> np.ndarray:
    """Causal attention without the T x T matrix. q: (B,H,Tq,d), k, v: (B,H,Tk,d) -> (B,H,Tq,d).

    pool: a minillm.kernels.workers.WorkerPool whose threads share the jobs; None: n_threads
    of numba's threads (1: the calling thread alone). Tq == 1 goes to `decode_attention`,
    which without a pool runs on decode_threads of numba's threads."""
    q, k, v, key_valid = _check_inputs(q, k, v, key_valid)
    if q.shape[2] == 1:                                                  # checked already
        return attention_decode_cpu.decode(q, k, v, key_valid, pool, decode_threads)
    n_batch, n_heads, n_queries, head_dim = q.shape
    out = np.empty((n_batch, n_heads, n_queries, head_dim), np.float32)
    if out.size == 0:
        return out
    n_workers, n_panels = (n_threads if pool is None else pool.n_threads), BQ // NR
    head_dim_padded = -(-head_dim // MR) * MR       # _pv_block writes MR value columns at a time
    q_t = np.empty((n_workers, n_panels, head_dim, NR), np.float32)
    scores = np.empty((n_workers, n_panels, BK, NR), np.float32)
    acc = np.empty((n_workers, n_panels, head_dim_padded, NR), np.float32)
    stats = np.empty((n_workers, n_panels, N_STATS, NR), np.float32)
    next_job = np.zeros(1, np.int64)               # the workers' shared job counter
    if pool is not None:
        pool.run(lambda w: _worker_jobs(q, k, v, key_valid, out, q_t[w], scores[w], acc[w],
                                        stats[w], next_job))
    elif n_workers > 1:
        _numba_workers(q, k, v, key_valid, out, q_t, scores, acc, stats, next_job)
    else:             # the calling thread: no parallel region, whose idle threads would spin on
        _worker_jobs(q, k, v, key_valid, out, q_t[0], scores[0], acc[0], stats[0], next_job)
    return out


def decode_attention(q, k, v, key_valid=None, pool=None, n_threads: int = 1) -> np.ndarray:
    """Attention for one new query per sequence: q (B,H,1,d), k, v (B,H,Tk,d) -> (B,H,1,d).

    pool: as for `flash_attention`; without one, n_threads of numba's threads."""
    q, k, v, key_valid = _check_inputs(q, k, v, key_valid)
    if q.shape[2] != 1:
        raise ValueError(f"decode_attention takes one query per sequence, got {q.shape[2]}")
    return attention_decode_cpu.decode(q, k, v, key_valid, pool, n_threads)
