"""LayerNorm and GELU as one loop each, in numba, for the CPU.

Reference: `layer_norm` and `gelu` in minillm/model/layers.py; tests/test_performance_paths.py
compares the two.

NumPy evaluates those formulas one operation at a time: GELU's `0.5 * x * (1 + tanh(...))` is
seven passes over memory, each writing a fresh temporary (the fc output is T x 4C floats, 12 MiB
at T = 1024). Here each element is read once and written once.

Numerics, measured against float64 by the tests:
* LayerNorm sums the mean and variance in float64 (eight partial sums, so the loop
  vectorises without reordering any one of them), then normalises in float32 exactly as the
  reference does. Max difference from the reference ~2e-6 on unit-scale outputs.
* GELU uses the identity 0.5 (1 + tanh(z)) = 1 / (1 + exp(-2z)), so
  gelu(x) = x / (1 + exp(-2z)), with `exp_f32` below: Cephes's expf, relative error < 8.2e-8
  (NumPy's float32 exp: < 2e-7). Max difference from float64 5e-7, the same as the NumPy
  reference's own.
* Of fast-math, GELU and cross-entropy use contraction alone (`CONTRACT`: a * b + c as one
  fused multiply-add, rounded once). LayerNorm uses none: it measured no faster with it, and
  in its backward a fused dy * gain - mean_d keeps the rounding error of the product, where
  the reference's gradient for a one-element row is exactly 0. Nothing is reassociated, and
  NaN/inf come out where the reference gives them (the tests check the extremes).
  `error_model="numpy"` drops numba's division-by-zero checks, which would otherwise stop LLVM
  from vectorising the loops.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

# gelu: sqrt(2/pi) and the cubic coefficient of GPT-2's tanh approximation
GELU_SCALE = np.float32(np.sqrt(2.0 / np.pi))
GELU_CUBIC = np.float32(0.044715)

# exp_f32: 2^n split off by n = round(x / ln 2); ln 2 in two parts so that x - n ln 2 is exact
LOG2_E = np.float32(1.4426950408889634)
LN2_HIGH = np.float32(0.693359375)
LN2_LOW = np.float32(-2.12194440e-4)
EXP_MIN, EXP_MAX = np.float32(-87.3), np.float32(88.7)     # keep 2^n a normal float32
# e^r - 1 - r = r^2 * poly(r) for |r| <= ln2 / 2, poly's coefficients from the highest power down
EXP_POLY = tuple(np.float32(c) for c in
                 (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                  4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))

# Fused multiply-add only: a * b + c rounded once instead of twice, nothing reordered.
# Measured against the same kernels without it (benchmarks/README.md): GELU and its backward
# 1.4x faster on (64, 3072), cross-entropy 1.4-1.8x on (64, 50257).
CONTRACT = {"contract"}

# Partial sums per reduction: for LayerNorm, 8 float64 (two AVX2 registers; the loops of
# _row_mean_var are written out for exactly 8), for cross-entropy 8 float32 (one register).
LANES = 8


# ---- exp -----------------------------------------------------------------------------------
@intrinsic
def _bits_as_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (no conversion)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.int32), codegen


@njit(inline="always", error_model="numpy", cache=True)
def exp_f32(x):
    """e^x for a float32, as e^r * 2^n with |r| <= ln2 / 2; inf above ~88.4, never below
    e^-87.3 (no subnormals). Inlined, so LLVM vectorises the loop that calls it (a call to
    libm's expf would keep it scalar)."""
    x = min(max(x, EXP_MIN), EXP_MAX)
    n = np.floor(x * LOG2_E + np.float32(0.5))
    r = x - n * LN2_HIGH - n * LN2_LOW
    poly = EXP_POLY[0]
    for c in EXP_POLY[1:]:
        poly = poly * r + c
    e_r = poly * r * r + r + np.float32(1.0)
    two_to_n = _bits_as_float32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return e_r * two_to_n


# ---- GELU ----------------------------------------------------------------------------------
@njit(error_model="numpy", fastmath=CONTRACT, cache=True, nogil=True)
def _gelu_flat(x, out):
    """out[i] = gelu(x[i]) for 1-D contiguous float32 arrays."""
    for i in range(x.size):
        v = x[i]
        z = GELU_SCALE * (v + GELU_CUBIC * v * v * v)
        out[i] = v / (np.float32(1.0) + exp_f32(np.float32(-2.0) * z))


@njit(parallel=True, nogil=True, cache=True)
def _gelu_shares(x, out, n_shares):
    """_gelu_flat on n_shares contiguous shares of x, one per numba thread."""
    for share in prange(n_shares):
        start, stop = x.size * share // n_shares, x.size * (share + 1) // n_shares
        _gelu_flat(x[start:stop], out[start:stop])


def gelu(x: np.ndarray, pool=None, n_threads: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """GELU, tanh form, in one pass.  (...) float32 -> (...) float32, a new array.

    pool: a minillm.kernels.workers.WorkerPool to share the elements among; None: n_threads
    of numba's threads (1: this thread). out: a C-contiguous float32 array of x's shape to
    write to (NumbaBackend's OutputBuffers), else a new one."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = _output_like(x, out)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    if pool is None and n_threads > 1:
        _gelu_shares(flat_x, flat_out, n_threads)
    elif pool is None:
        _gelu_flat(flat_x, flat_out)
    else:
        blocks = pool.split(flat_x.size)
        pool.run(lambda i: _gelu_flat(flat_x[slice(*blocks[i])], flat_out[slice(*blocks[i])]),
                 len(blocks))
    return out


def _output_like(x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """`out` checked to fit x (C-contiguous float32 of x's shape), or a new array like x."""
    if out is None:
        return np.empty_like(x)
    if out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {x.shape}, got "
                         f"{out.dtype} {out.shape}")
    return out


# ---- LayerNorm -----------------------------------------------------------------------------
@njit(inline="always", error_model="numpy", cache=True)
def _row_mean_var(row):
    """Mean and biased variance of a float32 row, accumulated in float64.

    Each sum runs in LANES partial sums, lane j adding elements j, j + 8, j + 16, ... in
    order, the lanes then added up one by one. They are eight scalars, not an array: scalars
    stay in registers (two AVX2 vectors of float64), where an array's slots were loaded and
    stored at every step (LayerNorm 1.1-1.25x slower that way, measured)."""
    n = row.size
    whole = n - n % LANES
    p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = 0.0
    for i in range(0, whole, LANES):
        p0 += row[i]; p1 += row[i + 1]; p2 += row[i + 2]; p3 += row[i + 3]          # noqa: E702
        p4 += row[i + 4]; p5 += row[i + 5]; p6 += row[i + 6]; p7 += row[i + 7]      # noqa: E702
    total = p0 + p1 + p2 + p3 + p4 + p5 + p6 + p7
    for i in range(whole, n):
        total += row[i]
    mean = total / n
    p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = 0.0
    for i in range(0, whole, LANES):
        d0, d1, d2, d3 = row[i] - mean, row[i + 1] - mean, row[i + 2] - mean, row[i + 3] - mean
        d4, d5, d6, d7 = row[i + 4] - mean, row[i + 5] - mean, row[i + 6] - mean, row[i + 7] - mean
        p0 += d0 * d0; p1 += d1 * d1; p2 += d2 * d2; p3 += d3 * d3                  # noqa: E702
        p4 += d4 * d4; p5 += d5 * d5; p6 += d6 * d6; p7 += d7 * d7                  # noqa: E702
    squares = p0 + p1 + p2 + p3 + p4 + p5 + p6 + p7
    for i in range(whole, n):
        d = row[i] - mean
        squares += d * d
    return mean, squares / n


@njit(error_model="numpy", cache=True, nogil=True)
def _layer_norm_rows(x, gain, bias, eps, out):
    """out[r] = (x[r] - mean) / sqrt(var + eps) * gain + bias for each row of (R, C) x."""
    for r in range(x.shape[0]):
        mean, var = _row_mean_var(x[r])
        mean32 = np.float32(mean)
        inv_std = np.float32(1.0) / np.sqrt(np.float32(var) + eps)   # float32, as in the reference
        for c in range(x.shape[1]):
            out[r, c] = (x[r, c] - mean32) * inv_std * gain[c] + bias[c]


@njit(parallel=True, nogil=True, cache=True)
def _layer_norm_shares(x, gain, bias, eps, out, n_shares):
    """_layer_norm_rows on n_shares contiguous shares of the rows, one per numba thread."""
    for share in prange(n_shares):
        start, stop = x.shape[0] * share // n_shares, x.shape[0] * (share + 1) // n_shares
        _layer_norm_rows(x[start:stop], gain, bias, eps, out[start:stop])


def layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float = 1e-5,
               pool=None, n_threads: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """LayerNorm over the last axis, one row per loop.  x: (..., C); gain, bias: (C,) -> (..., C)

    pool: a minillm.kernels.workers.WorkerPool to share the rows among; None: n_threads of
    numba's threads (1: this thread). out: as for `gelu`."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = _output_like(x, out)
    rows, out_rows = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
    gain, bias = np.ascontiguousarray(gain, np.float32), np.ascontiguousarray(bias, np.float32)
    eps = np.float32(eps)
    if pool is None and n_threads > 1:
        _layer_norm_shares(rows, gain, bias, eps, out_rows, n_threads)
    elif pool is None:
        _layer_norm_rows(rows, gain, bias, eps, out_rows)
    else:
        blocks = pool.split(rows.shape[0])
        pool.run(lambda i: _layer_norm_rows(rows[slice(*blocks[i])], gain, bias, eps,
                                            out_rows[slice(*blocks[i])]), len(blocks))
    return out


# ---- backward passes (training) -------------------------------------------------------------
# References: `gelu_backward` and `layer_norm_backward` in minillm/model/layers.py;
# tests/test_training_kernels.py compares them.

@njit(error_model="numpy", fastmath=CONTRACT, cache=True, nogil=True)
def _gelu_backward_flat(dy, x, dx):
    """dx[i] = dy[i] * gelu'(x[i]) for 1-D contiguous float32 arrays.

    With sig = 0.5 (1 + tanh z) = 1 / (1 + exp(-2z)) (as in the forward) and
    1 - tanh^2 z = 4 sig (1 - sig):  gelu'(x) = sig + 2 x sig (1 - sig) dz/dx."""
    one = np.float32(1.0)
    for i in range(x.size):
        v = x[i]
        z = GELU_SCALE * (v + GELU_CUBIC * v * v * v)
        dz_dx = GELU_SCALE * (one + np.float32(3.0) * GELU_CUBIC * v * v)
        sig = one / (one + exp_f32(np.float32(-2.0) * z))
        dx[i] = dy[i] * (sig + np.float32(2.0) * v * sig * (one - sig) * dz_dx)


def gelu_backward(dy: np.ndarray, x: np.ndarray, pool=None) -> np.ndarray:
    """dL/dx of GELU (tanh form) from dL/dy and its input x, in one pass.  (...) -> (...)

    pool: a minillm.kernels.workers.WorkerPool to share the elements among; None: this thread."""
    dy, x = (np.ascontiguousarray(a, dtype=np.float32) for a in (dy, x))
    dx = np.empty_like(x)
    flat_dy, flat_x, flat_dx = dy.reshape(-1), x.reshape(-1), dx.reshape(-1)
    if pool is None:
        _gelu_backward_flat(flat_dy, flat_x, flat_dx)
    else:
        blocks = pool.split(flat_x.size)
        pool.run(lambda i: _gelu_backward_flat(*(a[slice(*blocks[i])] for a in (flat_dy, flat_x, flat_dx))),
                 len(blocks))
    return dx


LN_CHUNK_ROWS = 64   # rows per partial sum of dgain and dbias, a fixed size: same bits on any pool


@njit(inline="always", error_model="numpy", cache=True)
def _row_grad_sums(dy, x, gain, mean32, inv_std):
    """sum_c dx_hat_c and sum_c dx_hat_c x_hat_c of one row (dx_hat = dy * gain), in float64."""
    n = x.size
    whole = n - n % LANES
    part_d = np.zeros(LANES)
    part_dx = np.zeros(LANES)
    for i in range(0, whole, LANES):
        for lane in range(LANES):
            c = i + lane
            dx_hat = dy[c] * gain[c]
            part_d[lane] += dx_hat
            part_dx[lane] += dx_hat * ((x[c] - mean32) * inv_std)
    total_d, total_dx = part_d.sum(), part_dx.sum()
    for c in range(whole, n):
        dx_hat = dy[c] * gain[c]
        total_d += dx_hat
        total_dx += dx_hat * ((x[c] - mean32) * inv_std)
    return total_d, total_dx


@njit(error_model="numpy", cache=True, nogil=True)
def _layer_norm_backward_chunks(dy, x, gain, eps, dx, dgain_parts, dbias_parts, first, stop):
    """dx for the rows of chunks first..stop-1 of (R, C) dy and x, and each chunk's sums of
    dy * x_hat and dy (float64) into dgain_parts[chunk] and dbias_parts[chunk]."""
    n_rows, C = x.shape
    for chunk in range(first, stop):
        dgain_parts[chunk, :] = 0.0
        dbias_parts[chunk, :] = 0.0
        for r in range(chunk * LN_CHUNK_ROWS, min((chunk + 1) * LN_CHUNK_ROWS, n_rows)):
            mean, var = _row_mean_var(x[r])
            mean32 = np.float32(mean)
            inv_std = np.float32(1.0) / np.sqrt(np.float32(var) + eps)   # as in the forward
            sum_d, sum_dx = _row_grad_sums(dy[r], x[r], gain, mean32, inv_std)
            mean_d, mean_dx = np.float32(sum_d / C), np.float32(sum_dx / C)
            for c in range(C):
                x_hat = (x[r, c] - mean32) * inv_std
                dx[r, c] = inv_std * (dy[r, c] * gain[c] - mean_d - x_hat * mean_dx)
                dgain_parts[chunk, c] += dy[r, c] * x_hat
                dbias_parts[chunk, c] += dy[r, c]


def layer_norm_backward(dy: np.ndarray, x: np.ndarray, gain: np.ndarray, eps: float = 1e-5,
                        pool=None):
    """dx (..., C), dgain (C,), dbias (C,) of LayerNorm over the last axis, the row statistics
    recomputed from x.  dy, x: (..., C); gain: (C,).

    pool: a minillm.kernels.workers.WorkerPool to share the rows among; None: this thread."""
    dy, x = (np.ascontiguousarray(a, dtype=np.float32) for a in (dy, x))
    C = x.shape[-1]
    dy_rows, x_rows = dy.reshape(-1, C), x.reshape(-1, C)
    gain = np.ascontiguousarray(gain, np.float32)
    eps = np.float32(eps)
    dx = np.empty_like(x_rows)
    n_chunks = -(-x_rows.shape[0] // LN_CHUNK_ROWS)
    dgain_parts, dbias_parts = np.empty((n_chunks, C)), np.empty((n_chunks, C))
    args = (dy_rows, x_rows, gain, eps, dx, dgain_parts, dbias_parts)
    if pool is None:
        _layer_norm_backward_chunks(*args, 0, n_chunks)
    else:
        blocks = pool.split(n_chunks)
        pool.run(lambda i: _layer_norm_backward_chunks(*args, *blocks[i]), len(blocks))
    dgain = dgain_parts.sum(axis=0).astype(np.float32)
    dbias = dbias_parts.sum(axis=0).astype(np.float32)
    return dx.reshape(x.shape), dgain, dbias


# ---- cross-entropy (training) ----------------------------------------------------------------
@njit(error_model="numpy", fastmath=CONTRACT, cache=True, nogil=True)
def _cross_entropy_rows(logits, targets, scale, dlogits, row_losses, first, stop):
    """Rows first..stop-1 of (N, V) logits: row_losses[r] = logsumexp(z) - z[target] and
    dlogits[r] = (softmax(z) - onehot(target)) * scale, both 0 for an ignored (negative)
    target. exp is written into dlogits, then scaled in place: two passes over the row."""
    V = logits.shape[1]
    whole = V - V % LANES
    partial = np.zeros(LANES, np.float32)
    for r in range(first, stop):
        target = targets[r]
        if target < 0:
            dlogits[r, :] = 0.0
            row_losses[r] = 0.0
            continue
        row_max = logits[r, 0]
        for v in range(1, V):
            row_max = max(row_max, logits[r, v])
        partial[:] = 0.0
        for v in range(0, whole, LANES):          # LANES partial sums: the loop vectorises
            for lane in range(LANES):
                e = exp_f32(logits[r, v + lane] - row_max)
                dlogits[r, v + lane] = e
                partial[lane] += e
        total = partial.sum()
        for v in range(whole, V):
            e = exp_f32(logits[r, v] - row_max)
            dlogits[r, v] = e
            total += e
        row_losses[r] = row_max + np.float32(np.log(total)) - logits[r, target]
        factor = scale / total
        for v in range(V):
            dlogits[r, v] *= factor
        dlogits[r, target] -= scale


def cross_entropy(logits: np.ndarray, targets: np.ndarray, pool=None):
    """The mean cross-entropy over targets >= 0 and its gradient, one fused pass per row.
    logits (..., V) float32, targets (...) int (negative: ignored, already checked by the
    caller) -> (loss, dlogits (..., V)). Reference: minillm.model.loss.cross_entropy."""
    V = logits.shape[-1]
    rows = np.ascontiguousarray(logits, np.float32).reshape(-1, V)       # (N, V)
    row_targets = np.ascontiguousarray(targets, np.int64).reshape(-1)     # (N,)
    n_counted = int((row_targets >= 0).sum())
    scale = np.float32(1.0) / np.float32(n_counted)
    dlogits = np.empty_like(rows)
    row_losses = np.empty(rows.shape[0], np.float32)
    if pool is None:
        _cross_entropy_rows(rows, row_targets, scale, dlogits, row_losses, 0, rows.shape[0])
    else:
        blocks = pool.split(rows.shape[0])
        pool.run(lambda i: _cross_entropy_rows(rows, row_targets, scale, dlogits, row_losses,
                                               *blocks[i]), len(blocks))
    return float(row_losses.sum() * scale), dlogits.reshape(logits.shape)
