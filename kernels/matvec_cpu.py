"""Few-row products with weights stored by output row, in float32, float16 or int8.

    out (M, N) = x (M, K) @ W^T + bias       W^T stored (N, K): row o holds output o's weights

Reference: `x @ dequantize(W^T).T + bias` with minillm.model.quantize's `dequantize`;
tests/test_quantize.py compares the two.

This is the decoding step's matmul, and a short prompt's (up to MATVEC_MAX_ROWS = 16 tokens,
kernels/backend.py): M is 1 to 16 rows, so the work is reading the weights, not the
arithmetic (each weight is used M times once it is loaded). What it buys:
* Each output is a dot product along one contiguous row of W^T: the weights stream through
  memory once, in order, at 2 (float16) or ~1 (int8) bytes a weight instead of 4.
* The weights are widened to float32 in registers, 16 at a time (`vcvtph2ps` for float16,
  sign-extend + `vcvtdq2ps` for int8): nothing is expanded to float32 in memory.
* With M > 1, a tile of four rows of W^T x four rows of x (`_four_by_four_dots`): each weight
  vector, widened once, serves four x rows, and each x vector four rows of W^T, 16 vectors of
  sums in registers. The four rows of W^T come from memory for the first four x rows and from
  L1 for the rest. (Before it, each row was widened into a buffer and dotted with four x rows
  per pass in LLVM-vectorised loops: a 16-token float16 prefill of GPT-2 124M took 37-40 ms,
  with the tile 21-28, int8 32-33 against 22-24, on two AMD Zen 5 cores; benchmarks/README.md.)
  int8 weights with blocked scales keep that buffer (a scale per block of each row).
* The float32 kernel is batched decoding's LM head, on wte's rows as they are; the block
  weights of a float32 batch go through minillm.kernels.matmul_packed_cpu instead, whose
  register tile does more per weight load.
* The rows are split into one contiguous share per thread (numba's `prange` over the shares).

Numerics: only reassociation is allowed (`fastmath={"reassoc", "contract"}`), so that LLVM sums
each dot product in several vector-wide partial sums and fuses multiply-adds; NaN and inf
propagate as in the reference. Against the float64 product of the same dequantised weights the
error is the float32 summation error, ~1e-6 relative (the tests state it).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from minillm.kernels.matmul_packed_cpu import _element_pointer
from minillm.kernels.matmul_prompt_avx512 import _VECTOR, WIDE, float32x16

REASSOC = {"reassoc", "contract"}     # vectorise the dot products' sums; nothing else relaxed
NO_BIAS = np.zeros(0, np.float32)     # `bias` argument meaning "none" (numba wants one type)
NO_SCALES = np.zeros(0, np.float32)   # `row_scales` of a float16 weight: none


@intrinsic
def _float16_bits_to_float32(typingctx, bits):
    """A float16 given as its 16 bits (uint16) widened to float32, exactly."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@njit(inline="always")
def _float16_to_float32(bits):
    return _float16_bits_to_float32(bits)


@njit(inline="always")
def _int8_to_float32(q):
    """Through int32: the direct int8 -> float32 conversion keeps LLVM from vectorising the
    loop (9x slower, measured), while int32 -> float32 is one `vcvtdq2ps` per 8 weights."""
    return np.float32(np.int32(q))


@njit(inline="always")
def _float32(w):
    return w


# ---- one row of W^T, widened to float32 ----------------------------------------------------
@njit(inline="always", fastmath=REASSOC)
def _dot(widen, w_row, x_row):
    """sum_i widen(w[i]) x[i]: a stored row, widened in registers, dotted with x."""
    total = np.float32(0.0)
    for i in range(x_row.size):
        total += widen(w_row[i]) * x_row[i]
    return total


@njit(inline="always", fastmath=REASSOC)
def _dot_int8(q_row, scale_row, x_row, block):
    """sum_b scale[b] * sum_{i in block b} q[i] x[i]: the scale applied once per block.

    One scale for the row (the default) is one plain dot product, scaled at the end: 1.1-1.3x
    faster than blocks of 128, which end each block with a horizontal sum
    (benchmarks/bench_matvec.py)."""
    if scale_row.size == 1:
        return _dot(_int8_to_float32, q_row, x_row) * scale_row[0]
    total = np.float32(0.0)
    for b in range(scale_row.size):
        partial = np.float32(0.0)
        base = b * block
        for i in range(block):
            partial += _int8_to_float32(q_row[base + i]) * x_row[base + i]
        total += partial * scale_row[b]
    return total


@njit(inline="always", fastmath=REASSOC)
def _widen_float16(w_row, row_f32):
    for i in range(row_f32.size):
        row_f32[i] = _float16_bits_to_float32(w_row[i])


@njit(inline="always", fastmath=REASSOC)
def _widen_int8(q_row, scale_row, block, row_f32):
    for b in range(scale_row.size):
        scale, base = scale_row[b], b * block
        for i in range(block):
            row_f32[base + i] = _int8_to_float32(q_row[base + i]) * scale


# ---- one x row against four rows of W^T at a time, in 16-float vectors ---------------------
# Copies of decode_step_cpu's (numba's cache watches only the file of the function it caches;
# tests/test_kernels_cpu.py keeps them identical). matmul_prompt_avx512's 16-float vector
# type: one AVX-512 register, two AVX2 ones.
@intrinsic
def _load16(typingctx, array, index):
    """array[index : index + 16] of a 1-D contiguous float32 array, as one vector (unchecked)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        return builder.load(builder.bitcast(pointer, _VECTOR.as_pointer()), align=4)
    return float32x16(array, index), codegen


@intrinsic
def _fma16(typingctx, a, b, c):
    """a * b + c lane by lane, rounded once (vfmadd)."""
    def codegen(context, builder, signature, args):
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR] * 3),
                                             "llvm.fma.v16f32")
        return builder.call(fma, args)
    return float32x16(float32x16, float32x16, float32x16), codegen


@intrinsic
def _zeros16(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_VECTOR, [0.0] * WIDE)
    return float32x16(), codegen


@intrinsic
def _sum16(typingctx, vector):
    """The sum of a vector's sixteen lanes, halving it three times (8 + 8, 4 + 4, ...)."""
    def codegen(context, builder, signature, args):
        value, width, int32 = args[0], WIDE, ir.IntType(32)
        while width > 1:
            half = width // 2
            low = builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(int32, half),
                                                                   list(range(half))))
            high = builder.shuffle_vector(value, value, ir.Constant(ir.VectorType(int32, half),
                                                                    list(range(half, width))))
            value, width = builder.fadd(low, high), half
        return builder.extract_element(value, ir.Constant(int32, 0))
    return types.float32(float32x16), codegen


@intrinsic
def _load16_float16(typingctx, bits, index):
    """bits[index : index + 16] (float16 as uint16) widened to sixteen float32 (vcvtph2ps)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        half = ir.VectorType(ir.HalfType(), WIDE)
        return builder.fpext(builder.load(builder.bitcast(pointer, half.as_pointer()), align=2),
                             _VECTOR)
    return float32x16(bits, index), codegen


@intrinsic
def _load16_int8(typingctx, codes, index):
    """codes[index : index + 16] (int8) as sixteen float32 (sign-extend, then vcvtdq2ps)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        bytes16 = ir.VectorType(ir.IntType(8), WIDE)
        loaded = builder.load(builder.bitcast(pointer, bytes16.as_pointer()), align=1)
        return builder.sitofp(builder.sext(loaded, ir.VectorType(ir.IntType(32), WIDE)), _VECTOR)
    return float32x16(codes, index), codegen


@njit(inline="always")
def _tile_row_update(x, w, row):
    """One sequence's row of the tile at one k: row[q] += x * w[q] for the four panels."""
    return (_fma16(x, w[0], row[0]), _fma16(x, w[1], row[1]), _fma16(x, w[2], row[2]),
            _fma16(x, w[3], row[3]))


@njit(inline="always")
def _four_rows(load16, w_flat, first, n_in, i):
    """Weights i..i+15 of the four rows that start at w_flat[first], widened: 4 vectors."""
    return (load16(w_flat, first + i), load16(w_flat, first + n_in + i),
            load16(w_flat, first + 2 * n_in + i), load16(w_flat, first + 3 * n_in + i))


@njit(inline="always")
def _four_widened(widen, w_flat, first, n_in, i):
    """Weight i of the four rows that start at w_flat[first], widened: 4 float32."""
    return (widen(w_flat[first + i]), widen(w_flat[first + n_in + i]),
            widen(w_flat[first + 2 * n_in + i]), widen(w_flat[first + 3 * n_in + i]))


@njit(inline="always")
def _four_sums(acc):
    """The four rows' vectors of partial sums, each added up."""
    return _sum16(acc[0]), _sum16(acc[1]), _sum16(acc[2]), _sum16(acc[3])


@njit(inline="always")
def _add_products(totals, w_i, x_i):
    """totals[r] + w_i[r] * x_i for the four rows."""
    return (totals[0] + w_i[0] * x_i, totals[1] + w_i[1] * x_i, totals[2] + w_i[2] * x_i,
            totals[3] + w_i[3] * x_i)


@njit(inline="always")
def _four_row_dots(load16, widen, w_flat, first, n_in, x_flat, x_start):
    """widen(W^T[o + j]) . x for the four rows o..o+3 that start at w_flat[first] (n_in
    weights each) and the x row at x_flat[x_start], j = 0..3.

    Sixteen weights of each row at a time, widened in registers, into one vector of partial
    sums per row: each x vector, once loaded, serves four rows, and four rows stream from
    memory at once. (LLVM's own vectorisation of one row at a time: 0.6x the speed on the LM
    head, whose 768-wide rows end too soon for its loop to get going.)"""
    a0 = a1 = a2 = a3 = _zeros16()
    vector_end = n_in - n_in % WIDE
    for i in range(0, vector_end, WIDE):
        x_vector = _load16(x_flat, x_start + i)
        a0 = _fma16(load16(w_flat, first + i), x_vector, a0)
        a1 = _fma16(load16(w_flat, first + n_in + i), x_vector, a1)
        a2 = _fma16(load16(w_flat, first + 2 * n_in + i), x_vector, a2)
        a3 = _fma16(load16(w_flat, first + 3 * n_in + i), x_vector, a3)
    t0, t1, t2, t3 = _sum16(a0), _sum16(a1), _sum16(a2), _sum16(a3)
    for i in range(vector_end, n_in):                  # the last n_in % 16
        x_i = x_flat[x_start + i]
        t0 += widen(w_flat[first + i]) * x_i
        t1 += widen(w_flat[first + n_in + i]) * x_i
        t2 += widen(w_flat[first + 2 * n_in + i]) * x_i
        t3 += widen(w_flat[first + 3 * n_in + i]) * x_i
    return t0, t1, t2, t3


@njit(inline="always")
def _four_by_four_dots(load16, widen, w_flat, first, n_in, x_flat, x_start):
    """widen(W^T[o + r]) . x[m + s] for the four rows o..o+3 that start at w_flat[first] and
    the four x rows m..m+3 that start at x_flat[x_start] (n_in values each); -> totals[s][r].

    Per 16 inputs: four weight vectors, loaded and widened once, and four x vectors feed 16
    multiply-adds into 16 vectors of partial sums (24 of AVX-512's 32 registers), where one x
    row at a time (_four_row_dots) widens every weight vector once per x row and spends a load
    per four multiply-adds."""
    zero = _zeros16()
    no_sums = (zero, zero, zero, zero)
    acc = (no_sums, no_sums, no_sums, no_sums)
    vector_end = n_in - n_in % WIDE
    for i in range(0, vector_end, WIDE):
        rows = _four_rows(load16, w_flat, first, n_in, i)
        acc = (_tile_row_update(_load16(x_flat, x_start + i), rows, acc[0]),
               _tile_row_update(_load16(x_flat, x_start + n_in + i), rows, acc[1]),
               _tile_row_update(_load16(x_flat, x_start + 2 * n_in + i), rows, acc[2]),
               _tile_row_update(_load16(x_flat, x_start + 3 * n_in + i), rows, acc[3]))
    totals = (_four_sums(acc[0]), _four_sums(acc[1]), _four_sums(acc[2]), _four_sums(acc[3]))
    for i in range(vector_end, n_in):                  # the last n_in % 16
        w_i = _four_widened(widen, w_flat, first, n_in, i)
        totals = (_add_products(totals[0], w_i, x_flat[x_start + i]),
                  _add_products(totals[1], w_i, x_flat[x_start + n_in + i]),
                  _add_products(totals[2], w_i, x_flat[x_start + 2 * n_in + i]),
                  _add_products(totals[3], w_i, x_flat[x_start + 3 * n_in + i]))
    return totals


@njit(inline="always")
def _rows_against_x(load16, widen, w, row_scales, x, bias, out, start, stop):
    """out[m, o] = scale[o] * W^T[o] . x[m] (+ bias[o]) for o in [start, stop) and every row m
    of x (M, K), M >= 2: tiles of four rows of W^T x four rows of x (_four_by_four_dots), the
    four rows of W^T read from memory by the first group of x rows and from L1 by the rest;
    the last M % 4 rows of x against four rows of W^T at a time (_four_row_dots).
    row_scales: int8's one scale per row, or an empty array (float16: none)."""
    n_in, n_x = w.shape[1], x.shape[0]
    w_flat, x_flat = w.reshape(-1), x.reshape(-1)
    fours_end = start + (stop - start) // 4 * 4
    x_fours = n_x - n_x % 4
    for o in range(start, fours_end, 4):
        for m in range(0, x_fours, 4):
            totals = _four_by_four_dots(load16, widen, w_flat, o * n_in, n_in, x_flat, m * n_in)
            for s in range(4):
                for r in range(4):
                    _store(out, m + s, o + r, totals[s][r] * _row_scale(row_scales, o + r), bias)
        for m in range(x_fours, n_x):
            totals = _four_row_dots(load16, widen, w_flat, o * n_in, n_in, x_flat, m * n_in)
            for r in range(4):
                _store(out, m, o + r, totals[r] * _row_scale(row_scales, o + r), bias)
    for o in range(fours_end, stop):                   # the last rows of the share
        for m in range(n_x):
            _store(out, m, o, _dot(widen, w[o], x[m]) * _row_scale(row_scales, o), bias)


# Functions of their own, called from the kernels' parallel loops, where numba's analysis of
# those loops does not see the vectors (as _rows_against_one_x).
@njit(nogil=True, fastmath=REASSOC, cache=True)
def _rows_against_x_float32(w, x, bias, out, start, stop):
    _rows_against_x(_load16_float32, _float32, w, NO_SCALES, x, bias, out, start, stop)


@njit(nogil=True, fastmath=REASSOC, cache=True)
def _rows_against_x_float16(w_bits, x, bias, out, start, stop):
    _rows_against_x(_load16_float16, _float16_to_float32, w_bits, NO_SCALES, x, bias, out,
                    start, stop)


@njit(nogil=True, fastmath=REASSOC, cache=True)
def _rows_against_x_int8(q, row_scales, x, bias, out, start, stop):
    _rows_against_x(_load16_int8, _int8_to_float32, q, row_scales, x, bias, out, start, stop)


@njit(inline="always")
def _row_scale(row_scales, o):
    """Row o's int8 scale, or 1 (float16: no scales)."""
    return row_scales[o] if row_scales.size else np.float32(1.0)


@njit(inline="always")
def _load16_float32(w, index):
    return _load16(w, index)


@njit(nogil=True, fastmath=REASSOC, cache=True)
def _rows_against_one_x(w, x_row, bias, out, start, stop):
    """out[0, o] = W^T[o] . x_row (+ bias[o]) for o in [start, stop), four rows of W^T at a
    time (_four_row_dots): one x vector load serves four rows, and four rows stream at once.
    LLVM's vectorisation of one row at a time (`_dot`) ran GPT-2's LM head (768-wide rows) at
    0.6x this speed. A function of its own, called from the parallel loop, where numba's
    analysis of that loop does not see the vectors."""
    n_in = w.shape[1]
    w_flat = w.reshape(-1)
    fours_end = start + (stop - start) // 4 * 4
    for o in range(start, fours_end, 4):
        totals = _four_row_dots(_load16_float32, _float32, w_flat, o * n_in, n_in, x_row, 0)
        for r in range(4):
            _store(out, 0, o + r, totals[r], bias)
    for o in range(fours_end, stop):
        _store(out, 0, o, _dot(_float32, w[o], x_row), bias)


# ---- the kernels: one share of output rows per thread --------------------------------------
@njit(inline="always")
def _share(n_rows, share, n_shares):
    """[start, stop) of share `share` of range(n_rows) cut into n_shares near-equal blocks."""
    return n_rows * share // n_shares, n_rows * (share + 1) // n_shares


@njit(inline="always")
def _store(out, m, o, value, bias):
    out[m, o] = value + bias[o] if bias.size else value


@njit(inline="always", fastmath=REASSOC)
def _dot_rows_of_x(w_row, x, o, bias, out):
    """out[m, o] = w_row . x[m] (+ bias[o]) for every row m of x (M, K).

    Four rows of x at a time: each weight, once loaded, feeds four multiply-adds (four vector
    accumulators) instead of one, so batches of 4-16 stay near the speed memory delivers the
    weights at; one at a time, two loads per multiply-add made them compute-bound."""
    n_rows = x.shape[0]
    whole = n_rows - n_rows % 4
    for m in range(0, whole, 4):
        t0 = t1 = t2 = t3 = np.float32(0.0)
        for i in range(w_row.size):
            w = w_row[i]
            t0 += w * x[m, i]
            t1 += w * x[m + 1, i]
            t2 += w * x[m + 2, i]
            t3 += w * x[m + 3, i]
        _store(out, m, o, t0, bias)
        _store(out, m + 1, o, t1, bias)
        _store(out, m + 2, o, t2, bias)
        _store(out, m + 3, o, t3, bias)
    for m in range(whole, n_rows):
        _store(out, m, o, _dot(_float32, w_row, x[m]), bias)


@njit(parallel=True, nogil=True, fastmath=REASSOC, cache=True)
def _matvec_float32(w, x, bias, out, n_shares):
    """out (M, N) = x (M, K) @ w.T + bias; w (N, K) float32."""
    for share in prange(n_shares):
        start, stop = _share(w.shape[0], share, n_shares)
        if x.shape[0] == 1:
            _rows_against_one_x(w, x[0], bias, out, start, stop)
        else:
            _rows_against_x_float32(w, x, bias, out, start, stop)


@njit(parallel=True, nogil=True, fastmath=REASSOC, cache=True)
def _matvec_float16(w_bits, x, bias, out, n_shares):
    """out (M, N) = x (M, K) @ w.T + bias; w (N, K) float16, passed as its bits (uint16)."""
    for share in prange(n_shares):
        start, stop = _share(w_bits.shape[0], share, n_shares)
        if x.shape[0] == 1:
            for o in range(start, stop):
                _store(out, 0, o, _dot(_float16_to_float32, w_bits[o], x[0]), bias)
        else:
            _rows_against_x_float16(w_bits, x, bias, out, start, stop)


@njit(parallel=True, nogil=True, fastmath=REASSOC, cache=True)
def _matvec_int8(q, scales, x, bias, out, n_shares):
    """out (M, N) = x (M, K) @ w.T + bias; w[o, i] = scales[o, i // block] * q[o, i]."""
    block = q.shape[1] // scales.shape[1]
    for share in prange(n_shares):
        start, stop = _share(q.shape[0], share, n_shares)
        if x.shape[0] == 1:
            for o in range(start, stop):
                _store(out, 0, o, _dot_int8(q[o], scales[o], x[0], block), bias)
        elif scales.shape[1] == 1:                     # one scale per row: applied to each sum
            _rows_against_x_int8(q, scales[:, 0], x, bias, out, start, stop)
        else:                                          # blocked: each row widened, then dotted
            row_f32 = np.empty(x.shape[1], np.float32)
            for o in range(start, stop):
                _widen_int8(q[o], scales[o], block, row_f32)
                _dot_rows_of_x(row_f32, x, o, bias, out)


def matvec(weight, x: np.ndarray, bias: np.ndarray | None, n_shares: int | None = None) -> np.ndarray:
    """out (M, N) = x (M, K) @ W + bias, W given as W^T (N, K): a float32 array or a
    minillm.model.quantize.QuantizedMatrix. x: C-contiguous float32.

    n_shares: how many shares to cut the rows into (numba runs them on its threads); default
    numba's thread count, which costs ~9 us to ask, 49 times a decoding step."""
    n_shares = get_num_threads() if n_shares is None else n_shares
    bias = NO_BIAS if bias is None else bias
    x = np.ascontiguousarray(x, np.float32)      # the tiles read x flat (a copy only if it is not)
    out = np.empty((x.shape[0], weight.shape[0]), np.float32)               # (M, N)
    if isinstance(weight, np.ndarray):
        _matvec_float32(weight, x, bias, out, n_shares)
    elif weight.dtype == "float16":
        _matvec_float16(weight.data.view(np.uint16), x, bias, out, n_shares)
    else:
        _matvec_int8(weight.data, weight.scales, x, bias, out, n_shares)
    return out


# ---- whole tiles, for prefill --------------------------------------------------------------
@njit(nogil=True, fastmath=REASSOC, cache=True)
def widen_rows_float16(w_bits, start, stop, out):
    """out[: stop - start] = float32(w[start:stop]); w (N, K) float16 bits, out (>= rows, K)."""
    for o in range(start, stop):
        _widen_float16(w_bits[o], out[o - start])


@njit(nogil=True, fastmath=REASSOC, cache=True)
def widen_rows_int8(q, scales, start, stop, out):
    """out[: stop - start] = the dequantised rows start..stop of an int8 W^T."""
    block = q.shape[1] // scales.shape[1]
    for o in range(start, stop):
        _widen_int8(q[o], scales[o], block, out[o - start])


def widen_rows(weight, start: int, stop: int, out: np.ndarray) -> None:
    """out[: stop - start] (float32) = rows start..stop of a QuantizedMatrix, dequantised."""
    if weight.dtype == "float16":
        widen_rows_float16(weight.data.view(np.uint16), start, stop, out)
    else:
        widen_rows_int8(weight.data, weight.scales, start, stop, out)
