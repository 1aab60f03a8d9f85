"""One decoding step of the whole model in one call: a new token of each of B sequences (of one
length) through every layer and the LM head, with the threads started once and meeting at
barriers in between.

    logits (B, V) = GPT2.forward(tokens (B, 1), cache=cache), no attention_mask

Reference: `GPT2.forward` with a KVCache (minillm/model/gpt2.py) on the "numpy" backend;
tests/test_decode_step.py compares the logits and the keys and values written to the cache.

Why. Decoding reads every weight once per token, so a step should take as long as memory needs
to deliver them (benchmarks/README.md has the roofline). Run one operation at a time, a step of
GPT-2 124M is ~100 calls from Python, each of which wakes numba's (or OpenBLAS's) threads,
splits its work and waits for the slowest thread before the next can start: ~2 ms a step beyond the weights'
reading time (about a tenth of a float16 step; 0.7-0.8 ms as one call, benchmarks/README.md
has the measurements). Here each of the pool's threads
(minillm.kernels.workers) runs the whole forward pass, doing its share of every operation,
and the threads wait for each other only where an operation needs all of the one before it:

    for each layer:                                   worker w of n, its blocks of the outputs
        h = LayerNorm_1(x)                            every worker, into its own h (B x C)
        qkv[block] = h @ W_qkv + b
        ---- barrier ----
        for (sequence, head) pairs w, w + n, ...:     write k, v to the cache;
            att[sequence, head] = softmax(q K^T / sqrt(d)) V
        ---- barrier ----
        x[block] += att @ W_proj + b
        ---- barrier ----
        h = LayerNorm_2(x)
        fc[block] = gelu(h @ W_fc + b)
        ---- barrier ----
        x[block] += fc @ W_mlp_proj + b
        ---- barrier ----
    logits[block] = LayerNorm_f(x) @ wte^T

A block is ROWS_PER_TICKET outputs: each worker takes the next one from a shared counter when
it has finished the last, so that the workers reach the barrier together (with fixed halves,
the one whose half streamed more slowly kept the other waiting ~5% of a step).

A barrier is one shared counter: each worker adds 1 atomically and spins until it reaches n
times the number of barriers passed (yielding its core after a while, in case it shares one).
The workers are the pool's threads, one piece each, so every one of them runs at once (a
barrier would never open if two took turns on one thread); at most one worker per usable core,
and one step at a time per pool. A worker that fails sets an abort flag beside the counter,
which opens every barrier, so that the others finish and the error reaches the caller.

The weights are read once per step for the whole batch (each piece of a weight, once loaded,
serves every sequence before the next), as the model holds them, except float32 on a CPU with
AVX-512, which reads packed copies:
* float32, W (in, out) (without AVX-512): the workers take blocks of the rows (inputs), which
  lie one after another in memory, and add x[m, i] W[i, :] over them into the block's partial sums of every
  output, eight rows per pass, 16 columns of them in registers at a time; after one more
  barrier each adds up the blocks' partial sums for its share of the outputs (K_BLOCKS: the
  rows of W are the unit of work here);
* float32, one sequence, given `panels` (the block weights packed into 16-column panels,
  matmul_packed_cpu.pack_weight, 16 outputs' weights k after k in one stretch of memory):
  one panel at a time, its 16 outputs' sums in registers while k runs over the depth, so that
  each worker reads one stream of memory from start to end (the column kernel reads eight
  rows side by side); the workers take blocks of panels (PANEL_TICKET_BYTES) from a shared
  counter, the next block asked for as the last is read (_panel_blocks). 1.19x the column
  kernel's tokens/s on an AMD Zen 5 (benchmarks/README.md);
* float32, several sequences, given `panels` (the block weights packed into 16-column panels,
  matmul_packed_cpu.pack_weight; NumbaBackend passes its copies on a CPU with AVX-512): a
  tile of six sequences x 64 columns whose 24 vectors of sums stay in registers while k runs
  over the depth (more than six sequences: a slice of k at a time, group after group, so that
  the panels stream from memory while the tile computes), the workers taking tiles from a
  shared counter; from
  HEAD_TILE_MIN_SEQUENCES sequences on, the LM head turned around, 16 rows of wte against
  h^T's 16 lanes of sequences (_head_tile). Tokens/s against the column kernel: in
  kernels/backend.py, WHOLE_STEP_PANELS_MIN_SEQUENCES;
* float16 and int8, W^T (out, in) (minillm.model.quantize), and the LM head's wte (V, C): each
  output is one dot product along a contiguous row, widened in registers, in blocks of rows
  taken as above; four rows at a time against four sequences per pass, the rest in pairs
  and one (each weight vector, widened once, serves four sequences: 1.04-1.09x the step of
  pairs for float16 / int8 batches of 4-16, 1.17x a float32 step of 4 sequences, whose LM
  head this is); one sequence of float32 (the LM head) or int8: one row at a time (for
  float32 in four vectors of partial sums, _dot_vectors: one stream of memory, 1.12x the
  step of four rows at a time on an AMD Zen 5; int8 as matvec_cpu.py). int8 has one
  scale per row (NumbaBackend takes
  the step-by-step path for blocked scales). The rows are prefetched PREFETCH_AHEAD bytes
  ahead, through the end of the block into the next block the worker holds (_by_tickets).

Numerics: float32 everywhere, as the reference. The products are summed in vector-wide partial
sums (`REASSOC`: the same freedom matvec_cpu takes); LayerNorm sums in float64 as fused_cpu
does; GELU and the softmax use fused_cpu's Cephes exp. Logits agree with the reference to
~1e-6 of their scale (tests/test_decode_step.py allows 2e-5).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from minillm.kernels.matmul_packed_cpu import _element_pointer
from minillm.kernels.matmul_prompt_avx512 import _VECTOR, WIDE, float32x16

REASSOC = {"reassoc", "contract"}     # vectorise the dot products' sums; nothing else relaxed
CONTRACT = {"contract"}               # fused multiply-add only
NO_BIAS = np.zeros(0, np.float32)     # `bias` meaning "none" (numba wants one type)

# LayerNorm's partial sums (written out for exactly 8 in _row_mean_var)
LANES = 8
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
# A barrier's reads of the counter before it starts yielding the core: ~0.1-0.3 ms of spinning,
# longer than workers on cores of their own keep each other waiting at a barrier, far shorter
# than an OS time slice.
SPINS_BEFORE_YIELD = 1 << 16
YIELD_FUNCTION = "SwitchToThread" if sys.platform == "win32" else "sched_yield"
# The counter's slots: arrivals at barriers so far, a worker failed, then one ticket counter per
# product (at slot TICKETS + the barriers passed before it, which differ from product to product)
ARRIVED, ABORTED, TICKETS = 0, 1, 2
# Output rows per ticket of a product on W^T: the workers take the next 64 rows as they finish
# the last, so that they finish together. Fixed halves left one worker waiting 0.6-0.9 ms of an
# 11-19 ms int8 / float16 step at the barriers, the other 0.3-0.4; blocks, 0.2-0.4 each.
ROWS_PER_TICKET = 64
# What a product does with its outputs: store them, add them to `out` (the residual stream), or
# store gelu of them (the MLP's first product)
STORE, ADD, GELU = 0, 1, 2
# Rows of W per pass of the float32 column kernel: each load and store of the partial sums is
# shared by eight multiply-adds (four rows: 0.94-0.97x the speed at 1-4 sequences, 0.78x at 8).
ROWS_PER_PASS = 8
# Several sequences of float32 on packed panels: a tile of up to TILE_SEQUENCES sequences x
# TILE_PANELS panels (64 columns), written out for exactly 6 x 4 in _tile_k and _panel_tile_column
TILE_SEQUENCES, TILE_PANELS = 6, 4
UNROLL = 8                # k per block of the tile's loop (unrolled)
SLICE_K = 64              # k per slice when several groups of sequences share a tile: 16 KB of panels
# The LM head's turned-around tile (_head_tile, written out for exactly 16 rows of wte), taken
# from this many sequences on (fewer: the dot products of _dot_rows)
HEAD_ROWS = 16
HEAD_TILE_MIN_SEQUENCES = 6
# Rows of W^T against this many sequences or more: four sequences per pass (each weight vector
# widened once for four), the rest in pairs
FOUR_SEQUENCES_MIN = 4
# Blocks of W's rows per float32 product, taken by the workers from a shared counter: a worker
# slowed down (its core or its memory shared with another program) takes fewer, where fixed
# halves kept the other waiting at the barrier. Each block has partial sums of its own, added
# in block order, so that the result does not depend on which worker took which block, nor on
# how many workers there are.
K_BLOCKS = 8
# Rows of W^T: ask for the weights this far ahead of the row being read. A row of int8 or
# float16 is few bytes per instruction, so the out-of-order core alone keeps too few cache lines
# in flight: streaming int8 rows on two threads ran at 12.7-13.9 GB/s without, 14.1-16.4 with
# 4-16 KB ahead (an AMD Zen 3); on an Intel Xeon (Emerald Rapids) the float16 step took 10.4-11.0
# ms with, 14.7-15.4 without, and the float32 LM head's rows gained ~5% of the step.
PREFETCH_AHEAD = 8192
CACHE_LINE = 64
# llvm.prefetch's locality argument: 2 is prefetcht1, into L2 (and L3), where 3, prefetcht0,
# also fills L1. The L1 has few miss buffers (24 on an AMD Zen 4), and 8 KB ahead is 128 lines:
# asked into L1, they held up the loads that needed them. Into L2 on a Zen 4: float16 steps of
# 1 / 4 / 16 sequences 1.21x / 1.36x / 1.22x faster, int8 of 1 / 4 1.27x / 1.41x.
PREFETCH_LOCALITY = 2
# One sequence of float32 on panels: the bytes of panels per ticket, ~ROWS_PER_TICKET rows of
# GPT-2's W^T (64 x 768 float32; four panels of depth 768, one of depth 3072)
PANEL_TICKET_BYTES = 192 * 1024


# ---- copies of other kernels' helpers --------------------------------------------------------
# numba's on-disk cache keys a function on its own file only, so these are copies (of
# fused_cpu.py and matvec_cpu.py); tests/test_kernels_cpu.py keeps them identical.
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


@njit(inline="always", fastmath=REASSOC)
def _dot(widen, w_row, x_row):
    """sum_i widen(w[i]) x[i]: a stored row, widened in registers, dotted with x."""
    total = np.float32(0.0)
    for i in range(x_row.size):
        total += widen(w_row[i]) * x_row[i]
    return total


# 16-float vectors (matmul_prompt_avx512's type; the intrinsics are copies of its, which
# tests/test_kernels_cpu.py keeps identical): one AVX-512 register, two AVX2 ones.
@intrinsic
def _load16(typingctx, array, index):
    """array[index : index + 16] of a 1-D contiguous float32 array, as one vector (unchecked)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        return builder.load(builder.bitcast(pointer, _VECTOR.as_pointer()), align=4)
    return float32x16(array, index), codegen


@intrinsic
def _store16(typingctx, array, index, vector):
    """array[index : index + 16] = vector (unchecked)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(pointer, _VECTOR.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(array, index, vector), codegen


@intrinsic
def _broadcast16(typingctx, array, index):
    """array[index] in all sixteen lanes (one vbroadcastss from memory; unchecked)."""
    def codegen(context, builder, signature, args):
        value = builder.load(_element_pointer(context, builder, signature.args[0], *args), align=4)
        lane0 = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), value,
                                       ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(lane0, ir.Constant(_VECTOR, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), WIDE), [0] * WIDE))
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
def _add16(typingctx, a, b):
    def codegen(context, builder, signature, args):
        return builder.fadd(*args)
    return float32x16(float32x16, float32x16), codegen


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
def _load16_float32(w, index):
    return _load16(w, index)


@njit(inline="always")
def _dot_vectors(widen, w, o, x_row, asked, reach):
    """widen(W^T[o]) . x for a float32 row o, written with 16-float vectors: four vectors of
    partial sums side by side (one would wait on each multiply-add's latency), added up at the
    end; the row's bytes asked for PREFETCH_AHEAD ahead as it is read, four cache lines per
    64 weights (a row's 48 lines asked at once before it: 0.96x the step on an AMD Zen 5).
    -> (the sum, bytes of w now asked for). (LLVM's own vectorisation of _dot: 0.6x the speed
    on the LM head, whose 768-wide rows end too soon for its loop to get going.)"""
    w_flat, n = w.reshape(-1), x_row.size
    first = o * n
    a0 = a1 = a2 = a3 = _zeros16()
    whole = n - n % (4 * WIDE)
    for i in range(0, whole, 4 * WIDE):
        asked = _ask_ahead(w, asked, (first + i + 4 * WIDE) * w.itemsize + PREFETCH_AHEAD, reach)
        at = first + i
        a0 = _fma16(_load16(w_flat, at), _load16(x_row, i), a0)
        a1 = _fma16(_load16(w_flat, at + WIDE), _load16(x_row, i + WIDE), a1)
        a2 = _fma16(_load16(w_flat, at + 2 * WIDE), _load16(x_row, i + 2 * WIDE), a2)
        a3 = _fma16(_load16(w_flat, at + 3 * WIDE), _load16(x_row, i + 3 * WIDE), a3)
    total = _sum16(_add16(_add16(a0, a1), _add16(a2, a3)))
    for i in range(whole, n):                          # the last n % 64
        total += widen(w_flat[first + i]) * x_row[i]
    return total, _ask_ahead(w, asked, (first + n) * w.itemsize + PREFETCH_AHEAD, reach)


@njit(inline="always")
def _dot_asked(widen, w, o, x_row, asked, reach):
    """_dot of row o, its bytes asked for PREFETCH_AHEAD ahead before it is read. -> (the
    sum, bytes of w now asked for)."""
    row_bytes = w.shape[1] * w.itemsize
    asked = _ask_ahead(w, asked, (o + 1) * row_bytes + PREFETCH_AHEAD, reach)
    return _dot(widen, w[o], x_row), asked


# ---- the barrier -----------------------------------------------------------------------------
@intrinsic
def _take(typingctx, counter, index):
    """counter[index] += 1, atomically and in order with every write before it; returns the
    value before (a ticket: each caller gets a different one)."""
    if counter != types.int64[::1]:
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", builder.gep(array.data, [args[1]]),
                                  ir.Constant(ir.IntType(64), 1), "seq_cst")

    return types.int64(counter, index), codegen


@intrinsic
def _read(typingctx, counter, index):
    """counter[index], read atomically (so a spin loop re-reads it and sees the writes before
    the write it reads)."""
    if counter != types.int64[::1]:
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(builder.gep(array.data, [args[1]]), "acquire", 8)

    return types.int64(counter, index), codegen


@intrinsic
def _yield_core(typingctx):
    """Let another runnable thread have this core: the C library's sched_yield (Windows:
    SwitchToThread), found in the process when the kernel is loaded."""
    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                                  YIELD_FUNCTION)
        builder.call(function, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _prefetch(typingctx, array, byte):
    """Ask the memory system for the cache line at `byte` bytes from the start of `array`, for
    reading; a hint, so an address past the array's end is harmless but useless."""
    if not isinstance(array, types.Array) or byte not in types.integer_domain:
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.gep(builder.bitcast(data, ir.IntType(8).as_pointer()), [args[1]])
        int32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [address.type, int32, int32, int32]),
            "llvm.prefetch.p0i8")
        # read (0), locality, data cache (1)
        builder.call(prefetch, [address, ir.Constant(int32, 0),
                                ir.Constant(int32, PREFETCH_LOCALITY), ir.Constant(int32, 1)])
        return context.get_dummy_value()

    return types.void(array, byte), codegen


@njit(inline="always")
def _ask_ahead(w, asked, ask_to, reach):
    """Prefetch the bytes [asked, ask_to) of a worker's reach in w, a cache line at a time; ->
    the bytes now asked for. reach = (reach_end, block_end, shift): bytes up to block_end are
    w's own, those past it the next block's, at + shift in w, up to reach_end (_reach; one
    stretch of w that ends at `end`: (end, end, 0))."""
    reach_end, block_end, shift = reach
    while asked < min(ask_to, reach_end):
        _prefetch(w, asked if asked < block_end else asked + shift)
        asked += CACHE_LINE
    return asked


@njit(inline="always")
def _reach(start, stop, next_start, next_stop, row_bytes):
    """What _ask_ahead may ask for while reading the rows [start, stop) of W^T, before the
    rows [next_start, next_stop) (an empty range: none): this block, then PREFETCH_AHEAD
    bytes of the next, as if it followed this one in memory."""
    block_end, next_bytes = stop * row_bytes, (next_stop - next_start) * row_bytes
    return block_end + min(PREFETCH_AHEAD, next_bytes), block_end, (next_start - stop) * row_bytes


@njit(inline="always")
def _barrier(counter, n_workers, passed):
    """Wait for all n_workers to get here; passed: barriers this worker had passed. -> passed + 1

    Spinning answers within nanoseconds when every worker has a core of its own. After
    SPINS_BEFORE_YIELD reads it also yields the core at each read, so that a worker which shares
    its core (more threads than cores, a CPU quota) gets to run and arrive."""
    _take(counter, ARRIVED)
    everyone = (passed + 1) * n_workers
    spins = 0
    while _read(counter, ARRIVED) < everyone and _read(counter, ABORTED) == 0:
        spins += 1
        if spins > SPINS_BEFORE_YIELD:
            _yield_core()
    return passed + 1


@njit(inline="always")
def _share(n, worker, n_workers):
    """[start, stop) of worker's near-equal contiguous share of range(n)."""
    return n * worker // n_workers, n * (worker + 1) // n_workers


# ---- the products: out = x @ W + bias, each worker its share -------------------------------
@njit(inline="always")
def _four_rows_into(sums_flat, at, x_flat, x_at, w0, w1, w2, w3):
    """sums[at : at + 16] += x[x_at + r] * w_r for r = 0..3 (w_r: 16 columns of row r)."""
    sums = _load16(sums_flat, at)
    sums = _fma16(_broadcast16(x_flat, x_at), w0, sums)
    sums = _fma16(_broadcast16(x_flat, x_at + 1), w1, sums)
    sums = _fma16(_broadcast16(x_flat, x_at + 2), w2, sums)
    sums = _fma16(_broadcast16(x_flat, x_at + 3), w3, sums)
    _store16(sums_flat, at, sums)


@njit(nogil=True, cache=True, fastmath=REASSOC)
def _partial_columns_float32(w, x, k_start, k_stop, partial):
    """partial[m, o] = sum_{k_start <= i < k_stop} x[m, i] W[i, o] for every column o of W
    (in, out) and every sequence m of x (B, in): this worker's rows of W, which lie one after
    another in memory, read in order, ROWS_PER_PASS rows per pass.

    Each 16 columns of the pass's rows are loaded into registers once and used by every
    sequence (multiply-adds into its partial sums), so W is read from memory once for the
    whole batch. (Written with 16-float vectors: LLVM's own vectorisation of the same loop
    reloaded the rows for each sequence, 1.6-2x slower at 4-8 sequences.)"""
    n, (n_sequences, n_in), stride = w.shape[1], x.shape, partial.shape[1]   # stride >= n
    w_flat, x_flat, p_flat = w.reshape(-1), x.reshape(-1), partial.reshape(-1)
    partial[:, :n] = 0.0
    vector_end = n - n % WIDE
    whole = k_start + (k_stop - k_start) - (k_stop - k_start) % ROWS_PER_PASS
    # The next pass's rows (one block of memory) are asked for as this pass reads its own, as
    # many bytes per 16 columns as it reads: eight rows read side by side are eight streams,
    # more than the core's prefetchers keep ahead of (one sequence's step 1.09x on a Zen 4).
    row_bytes = n * w.itemsize
    asked, share_end = (k_start + ROWS_PER_PASS) * row_bytes, k_stop * row_bytes
    share = (share_end, share_end, 0)                  # _ask_ahead's reach: this share's rows
    for i in range(k_start, whole, ROWS_PER_PASS):
        next_pass = (i + ROWS_PER_PASS) * row_bytes
        for o in range(0, vector_end, WIDE):
            asked = _ask_ahead(w, asked, next_pass + (o + WIDE) * ROWS_PER_PASS * w.itemsize,
                               share)
            at = i * n + o
            w0, w1 = _load16(w_flat, at), _load16(w_flat, at + n)
            w2, w3 = _load16(w_flat, at + 2 * n), _load16(w_flat, at + 3 * n)
            w4, w5 = _load16(w_flat, at + 4 * n), _load16(w_flat, at + 5 * n)
            w6, w7 = _load16(w_flat, at + 6 * n), _load16(w_flat, at + 7 * n)
            for m in range(n_sequences):
                _four_rows_into(p_flat, m * stride + o, x_flat, m * n_in + i, w0, w1, w2, w3)
                _four_rows_into(p_flat, m * stride + o, x_flat, m * n_in + i + 4, w4, w5, w6, w7)
        for m in range(n_sequences):                   # the last n % 16 columns
            for r in range(ROWS_PER_PASS):
                x_i = x[m, i + r]
                for o in range(vector_end, n):
                    partial[m, o] += x_i * w[i + r, o]
    for i in range(whole, k_stop):                     # the last rows of the share
        for m in range(n_sequences):
            x_i = x[m, i]
            for o in range(n):
                partial[m, o] += x_i * w[i, o]


@njit(nogil=True, cache=True)
def _sum_partials(partials, n_blocks, bias, out, start, stop, mode):
    """out[m, o] (=, += or = gelu of) sum over blocks of partials[block, m, o] + bias[o], in
    block order, for o in [start, stop) and every sequence m."""
    for m in range(out.shape[0]):
        for o in range(start, stop):
            total = partials[0, m, o]
            for block in range(1, n_blocks):
                total += partials[block, m, o]
            out[m, o] = _combined(out[m, o], total + _at(bias, o), mode)
        if mode == GELU:
            _gelu_range(out, m, start, stop)


@njit(inline="always")
def _combined(stored, value, mode):
    """What out[m, o] becomes: value, or stored + value for ADD (GELU is applied afterwards,
    to the stored values). Scalars in, scalar out, written back by the caller: a helper
    handed `out` itself would count a reference to it at each call, an atomic add on a cache
    line that every worker writes (measured: 4x slower products at 4 sequences)."""
    return stored + value if mode == ADD else value


@njit(inline="always")
def _at(vector, o):
    """vector[o], or 0 for an empty vector (NO_BIAS)."""
    return vector[o] if vector.size else np.float32(0.0)


@njit(inline="always")
def _scale(scales, o):
    """Row o's int8 scale; 1 for float32 and float16 rows (scales is NO_SCALES)."""
    return scales[o, 0] if scales.size else np.float32(1.0)


# Every product below takes the same arguments and returns the barriers passed, so that _step
# can run any of them: (w, scales, x (B, in), out (B, out), bias, mode, worker, n_workers,
# counter, passed, partials).
@njit(inline="always")
def _columns_float32(w, scales, x, out, bias, mode, worker, n_workers, counter, passed, partials):
    """W (in, out) float32: W's rows (the inputs) in K_BLOCKS blocks, which the workers take
    from a shared counter as they finish one, each block's partial sums of every output in
    partials[block]; after a barrier, each worker adds up the blocks' partial sums, in block
    order, for its share of the outputs. (Sharing the outputs instead, each worker would read a
    strip of every row: measured 0.93x the step-by-step path, where this is level with it.)"""
    block = _take(counter, TICKETS + passed)
    while block < K_BLOCKS:
        k_start, k_stop = _share(w.shape[0], block, K_BLOCKS)
        _partial_columns_float32(w, x, k_start, k_stop, partials[block])
        block = _take(counter, TICKETS + passed)
    passed = _barrier(counter, n_workers, passed)
    start, stop = _share(w.shape[1], worker, n_workers)
    _sum_partials(partials, K_BLOCKS, bias, out, start, stop, mode)
    return passed      # _step passes a barrier after every product: no worker refills the
                       # partials while another still reads them


# Several sequences of float32: W (in, out) as packed panels (matmul_packed_cpu.pack_weight,
# panels[p, k, c] = W[k, 16 p + c]), under a tile of up to 6 sequences x 64 columns whose sums
# stay in registers while k runs over the depth:
#     per k: 4 panel rows loaded (16 floats each), 6 x values broadcast -> 24 multiply-adds
# (29 of AVX-512's 32 registers: 24 accumulators, 4 panel rows, a broadcast). A panel streams
# from memory once per step for the whole batch; more than six sequences take it a slice of
# SLICE_K rows at a time, group after group, the later groups reading the slice from L1.
@njit(inline="always")
def _tile_row_update(x, w, row):
    """One sequence's row of the tile at one k: row[q] += x * w[q] for the four panels."""
    return (_fma16(x, w[0], row[0]), _fma16(x, w[1], row[1]), _fma16(x, w[2], row[2]),
            _fma16(x, w[3], row[3]))


@njit(inline="always")
def _tile_k(x_flat, x_at, k, panels_flat, w_at, acc):
    """acc[r][q] += x[sequence r, k] * row k of panel q: the four panel rows loaded once for
    all six sequences (x_at[r]: where sequence r's row of x starts)."""
    w = (_load16(panels_flat, w_at[0]), _load16(panels_flat, w_at[1]),
         _load16(panels_flat, w_at[2]), _load16(panels_flat, w_at[3]))
    return (_tile_row_update(_broadcast16(x_flat, x_at[0] + k), w, acc[0]),
            _tile_row_update(_broadcast16(x_flat, x_at[1] + k), w, acc[1]),
            _tile_row_update(_broadcast16(x_flat, x_at[2] + k), w, acc[2]),
            _tile_row_update(_broadcast16(x_flat, x_at[3] + k), w, acc[3]),
            _tile_row_update(_broadcast16(x_flat, x_at[4] + k), w, acc[4]),
            _tile_row_update(_broadcast16(x_flat, x_at[5] + k), w, acc[5]))


@njit(inline="always")
def _finish_tile_row(out_flat, at, row, bias, column, n_real, mode):
    """out[at : at + 16 n_real] = row + bias (ADD: += row + bias), n_real: the tile's panels
    that are real."""
    for q in range(TILE_PANELS):
        if q < n_real:
            value = row[q]
            if bias.size:
                value = _add16(value, _load16(bias, column + q * WIDE))
            if mode == ADD:
                value = _add16(_load16(out_flat, at + q * WIDE), value)
            _store16(out_flat, at + q * WIDE, value)


@njit(inline="always")
def _tile_sums(x_flat, x_at, panels_flat, w_start, k_start, k_stop, acc):
    """acc[r][q] += sum over k in [k_start, k_stop) of x[sequence r, k] * row k of panel q, in
    blocks of UNROLL k (a constant count: LLVM unrolls it, every offset constant)."""
    n_blocks = (k_stop - k_start) // UNROLL
    for block in range(n_blocks):
        k0 = k_start + block * UNROLL
        for j in range(UNROLL):
            at_k = (k0 + j) * WIDE
            acc = _tile_k(x_flat, x_at, k0 + j, panels_flat,
                          (w_start[0] + at_k, w_start[1] + at_k, w_start[2] + at_k,
                           w_start[3] + at_k), acc)
    for k in range(k_start + n_blocks * UNROLL, k_stop):
        at_k = k * WIDE
        acc = _tile_k(x_flat, x_at, k, panels_flat, (w_start[0] + at_k, w_start[1] + at_k,
                                                     w_start[2] + at_k, w_start[3] + at_k), acc)
    return acc


@njit(inline="always")
def _saved_row(saved, at):
    """One sequence's four vectors of tile sums, kept at saved[at : at + 64] between slices."""
    return (_load16(saved, at), _load16(saved, at + WIDE), _load16(saved, at + 2 * WIDE),
            _load16(saved, at + 3 * WIDE))


@njit(inline="always")
def _save_row(saved, at, row):
    for q in range(TILE_PANELS):
        _store16(saved, at + q * WIDE, row[q])


@njit(nogil=True, cache=True)
def _panel_tile_column(panels, x, out, bias, mode, tile, saved):
    """out[:, 64 tile : 64 tile + 64] (=, += or = gelu of) x @ W + bias for every sequence,
    six at a time (a last group of fewer than six repeats its last sequence, dropped after);
    a last tile of fewer than four whole panels points its missing ones at its first (read,
    summed and dropped).

    Several groups: k runs in slices of SLICE_K, every group taking each slice in turn, its
    sums kept in `saved` (6 x 64 floats per group) between slices. The panels then stream from
    memory at an even pace while the groups compute (whole depths group after group, the first
    group waited on memory and the others left it idle: the products 1.2x slower at 16
    sequences). Each output is still one chain of fused multiply-adds in k order (a float32
    stored and loaded back is exact)."""
    depth, (n_sequences, n_out) = panels.shape[1], out.shape
    first_panel = tile * TILE_PANELS
    n_real = min(TILE_PANELS, n_out // WIDE - first_panel)
    stride, first = depth * WIDE, first_panel * depth * WIDE
    w_start = (first, first + stride * min(1, n_real - 1), first + stride * min(2, n_real - 1),
               first + stride * min(3, n_real - 1))
    column = first_panel * WIDE
    n_groups = -(-n_sequences // TILE_SEQUENCES)
    slice_k = SLICE_K if n_groups > 1 else depth
    panels_flat, x_flat, out_flat, saved_flat = (panels.reshape(-1), x.reshape(-1),
                                                 out.reshape(-1), saved.reshape(-1))
    for k_start in range(0, depth, slice_k):
        k_stop = min(depth, k_start + slice_k)
        for group in range(n_groups):
            m0 = group * TILE_SEQUENCES
            n_rows = min(TILE_SEQUENCES, n_sequences - m0)
            last = m0 + n_rows - 1
            x_at = (m0 * depth, min(m0 + 1, last) * depth, min(m0 + 2, last) * depth,
                    min(m0 + 3, last) * depth, min(m0 + 4, last) * depth,
                    min(m0 + 5, last) * depth)
            at_saved = group * TILE_SEQUENCES * TILE_PANELS * WIDE
            if k_start == 0:
                zero = _zeros16()
                row = (zero, zero, zero, zero)
                acc = (row, row, row, row, row, row)
            else:
                step = TILE_PANELS * WIDE
                acc = (_saved_row(saved_flat, at_saved), _saved_row(saved_flat, at_saved + step),
                       _saved_row(saved_flat, at_saved + 2 * step),
                       _saved_row(saved_flat, at_saved + 3 * step),
                       _saved_row(saved_flat, at_saved + 4 * step),
                       _saved_row(saved_flat, at_saved + 5 * step))
            acc = _tile_sums(x_flat, x_at, panels_flat, w_start, k_start, k_stop, acc)
            for r in range(TILE_SEQUENCES):          # a constant count: acc stays in registers
                if k_stop < depth:
                    _save_row(saved_flat, at_saved + r * TILE_PANELS * WIDE, acc[r])
                elif r < n_rows:
                    _finish_tile_row(out_flat, (m0 + r) * n_out + column, acc[r], bias, column,
                                     n_real, mode)
                    if mode == GELU:
                        _gelu_range(out, m0 + r, column, column + n_real * WIDE)


@njit(nogil=True, cache=True)
def _odd_columns(panels, x, out, bias, mode):
    """The last n_out % 16 columns (part of the last panel): one dot product each, in k order."""
    n_out = out.shape[1]
    p = n_out // WIDE
    for m in range(x.shape[0]):
        for o in range(p * WIDE, n_out):
            total = np.float32(0.0)
            for k in range(x.shape[1]):
                total += x[m, k] * panels[p, k, o - p * WIDE]
            out[m, o] = _combined(out[m, o], total + _at(bias, o), mode)
        if mode == GELU:
            _gelu_range(out, m, p * WIDE, n_out)


# One sequence of float32 on the panels: panel p (depth x 16 floats, one stretch of memory)
# holds outputs 16 p .. 16 p + 15, so
#     out[16 p : 16 p + 16] = sum_k x[k] * panels[p, k, :]
# is one vector of sums in registers while the panel streams past, k after k: per k, one
# 64-byte load, one broadcast of x[k], one multiply-add.
@njit(nogil=True, cache=True)
def _panel_dots(panels, scales, x, out, bias, start, stop, mode, next_start, next_stop,
                asked_ahead):
    """out[0, 16 p : 16 p + 16] (= or +=) x[0] @ panel p + bias for the panels [start, stop),
    all of them whole (scales: none, float32); each k's multiply-add goes to one of four vectors of
    sums in turn (one would wait on each multiply-add's latency), the four added up at the
    end. The panels are asked for PREFETCH_AHEAD bytes ahead, past stop into the panels
    [next_start, next_stop) that come next (_reach); asked_ahead: the bytes of this block
    asked for before it. -> the bytes of the next block now asked for."""
    depth = panels.shape[1]
    panel_bytes = depth * WIDE * panels.itemsize
    panels_flat, x_flat, out_flat = panels.reshape(-1), x.reshape(-1), out.reshape(-1)
    asked = start * panel_bytes + asked_ahead                  # bytes from the panels' start
    reach = _reach(start, stop, next_start, next_stop, panel_bytes)
    whole = depth - depth % 4
    for p in range(start, stop):
        first = p * depth * WIDE
        a0 = a1 = a2 = a3 = _zeros16()
        for k in range(0, whole, 4):
            at = first + k * WIDE
            asked = _ask_ahead(panels, asked, (at + 4 * WIDE) * panels.itemsize + PREFETCH_AHEAD,
                               reach)
            a0 = _fma16(_broadcast16(x_flat, k), _load16(panels_flat, at), a0)
            a1 = _fma16(_broadcast16(x_flat, k + 1), _load16(panels_flat, at + WIDE), a1)
            a2 = _fma16(_broadcast16(x_flat, k + 2), _load16(panels_flat, at + 2 * WIDE), a2)
            a3 = _fma16(_broadcast16(x_flat, k + 3), _load16(panels_flat, at + 3 * WIDE), a3)
        for k in range(whole, depth):                  # the last depth % 4
            a0 = _fma16(_broadcast16(x_flat, k), _load16(panels_flat, first + k * WIDE), a0)
        column = p * WIDE
        value = _add16(_add16(a0, a1), _add16(a2, a3))
        if bias.size:
            value = _add16(value, _load16(bias, column))
        if mode == ADD:
            value = _add16(_load16(out_flat, column), value)
        _store16(out_flat, column, value)
    return max(0, asked - stop * panel_bytes)


@njit(inline="always")
def _panel_blocks(panels, scales, x, out, bias, mode, counter, passed):
    """_panel_dots over the whole panels of a product, PANEL_TICKET_BYTES of them per ticket
    (_blocks_by_tickets); the worker holding the ticket just past the last block does the last
    out % 16 columns, if any."""
    n_whole = out.shape[1] // WIDE
    per_ticket = max(1, PANEL_TICKET_BYTES // (panels.shape[1] * WIDE * panels.itemsize))
    held = _blocks_by_tickets(_panel_dots, panels, scales, x, out, bias, mode, counter, passed,
                              n_whole, per_ticket, WIDE)
    if held == -(-n_whole // per_ticket) and out.shape[1] % WIDE:
        _odd_columns(panels, x, out, bias, mode)


@njit(inline="always")
def _panels_float32(panels, scales, x, out, bias, mode, worker, n_workers, counter, passed,
                    partials):
    """W (in, out) float32 packed into panels. One sequence: _panel_blocks. Several: the
    workers take tiles of four panels (64 outputs, every sequence) from a shared counter as
    they finish one, each keeping its tile's sums between slices of k in partials[worker]; the
    ticket after the last tile does the last out % 16 columns, if any. Each output is summed
    by one worker alone, so the result does not depend on how many there are."""
    if x.shape[0] == 1:
        _panel_blocks(panels, scales, x, out, bias, mode, counter, passed)
        return passed
    n_tiles = -(-(out.shape[1] // WIDE) // TILE_PANELS)
    tile = _take(counter, TICKETS + passed)
    while tile <= n_tiles:
        if tile < n_tiles:
            _panel_tile_column(panels, x, out, bias, mode, tile, partials[worker])
        else:
            _odd_columns(panels, x, out, bias, mode)
        tile = _take(counter, TICKETS + passed)
    return passed


@njit(inline="always")
def _four_row_dots_one_sequence(load16, widen, w, first, n_in, x_flat, x_start, asked, ask_base,
                                reach):
    """widen(W^T[o + j]) . x for the four rows o..o+3 that start at w_flat[first] (n_in
    weights each) and the x row at x_flat[x_start], j = 0..3; -> (the four sums, bytes of w
    now asked for: _ask_while_reading).

    Sixteen weights of each row at a time, widened in registers, into one vector of partial
    sums per row: each x vector, once loaded, serves four rows, and four rows stream from
    memory at once. (LLVM's own vectorisation of one row at a time: 0.6x the speed on the LM
    head, whose 768-wide rows end too soon for its loop to get going.)"""
    w_flat = w.reshape(-1)
    zero = _zeros16()
    acc = (zero, zero, zero, zero)
    vector_end = n_in - n_in % WIDE
    for i in range(0, vector_end, WIDE):
        asked = _ask_while_reading(w, asked, ask_base, reach, i + WIDE)
        acc = _tile_row_update(_load16(x_flat, x_start + i), _four_rows(load16, w_flat, first,
                                                                        n_in, i), acc)
    totals = _four_sums(acc)
    for i in range(vector_end, n_in):                  # the last n_in % 16
        totals = _add_products(totals, _four_widened(widen, w_flat, first, n_in, i),
                               x_flat[x_start + i])
    return totals, _ask_while_reading(w, asked, ask_base, reach, n_in)


@njit(inline="always")
def _four_row_dots_two_sequences(load16, widen, w, first, n_in, x_flat, x_a, x_b, asked,
                                 ask_base, reach):
    """_four_row_dots_one_sequence for the two x rows at x_flat[x_a] and x_flat[x_b] at once:
    each weight vector, once loaded (and widened), serves both, and eight chains of
    multiply-adds run side by side (one sequence at a time: 1.35-1.5x slower at 2-4
    sequences). -> (the four sums of each, bytes of w now asked for)."""
    w_flat = w.reshape(-1)
    zero = _zeros16()
    acc_a = acc_b = (zero, zero, zero, zero)
    vector_end = n_in - n_in % WIDE
    for i in range(0, vector_end, WIDE):
        asked = _ask_while_reading(w, asked, ask_base, reach, i + WIDE)
        rows = _four_rows(load16, w_flat, first, n_in, i)
        acc_a = _tile_row_update(_load16(x_flat, x_a + i), rows, acc_a)
        acc_b = _tile_row_update(_load16(x_flat, x_b + i), rows, acc_b)
    totals_a, totals_b = _four_sums(acc_a), _four_sums(acc_b)
    for i in range(vector_end, n_in):                  # the last n_in % 16
        w_i = _four_widened(widen, w_flat, first, n_in, i)
        totals_a = _add_products(totals_a, w_i, x_flat[x_a + i])
        totals_b = _add_products(totals_b, w_i, x_flat[x_b + i])
    return totals_a, totals_b, _ask_while_reading(w, asked, ask_base, reach, n_in)


@njit(inline="always")
def _four_row_dots_four_sequences(load16, widen, w, first, n_in, x_flat, x_at, asked, ask_base,
                                  reach):
    """_four_row_dots_two_sequences for the four x rows at x_flat[x_at[s]], s = 0..3: each
    weight vector, once loaded and widened, serves four sequences, sixteen chains of
    multiply-adds side by side. -> (totals[s][r], row o + r against sequence s; bytes of w
    now asked for)."""
    w_flat = w.reshape(-1)
    zero = _zeros16()
    no_sums = (zero, zero, zero, zero)
    acc = (no_sums, no_sums, no_sums, no_sums)
    vector_end = n_in - n_in % WIDE
    for i in range(0, vector_end, WIDE):
        asked = _ask_while_reading(w, asked, ask_base, reach, i + WIDE)
        rows = _four_rows(load16, w_flat, first, n_in, i)
        acc = (_tile_row_update(_load16(x_flat, x_at[0] + i), rows, acc[0]),
               _tile_row_update(_load16(x_flat, x_at[1] + i), rows, acc[1]),
               _tile_row_update(_load16(x_flat, x_at[2] + i), rows, acc[2]),
               _tile_row_update(_load16(x_flat, x_at[3] + i), rows, acc[3]))
    totals = (_four_sums(acc[0]), _four_sums(acc[1]), _four_sums(acc[2]), _four_sums(acc[3]))
    for i in range(vector_end, n_in):                  # the last n_in % 16
        w_i = _four_widened(widen, w_flat, first, n_in, i)
        totals = (_add_products(totals[0], w_i, x_flat[x_at[0] + i]),
                  _add_products(totals[1], w_i, x_flat[x_at[1] + i]),
                  _add_products(totals[2], w_i, x_flat[x_at[2] + i]),
                  _add_products(totals[3], w_i, x_flat[x_at[3] + i]))
    return totals, _ask_while_reading(w, asked, ask_base, reach, n_in)


@njit(inline="always")
def _ask_while_reading(w, asked, ask_base, reach, done):
    """Ask for w's bytes up to ask_base + the four rows' bytes at weight indices < done, within
    the reach (_ask_ahead); -> the bytes now asked for. The four-row loops below call it as
    they read, so that the next rows are asked for a few cache lines at a time, as many as each
    pass reads: asked all at once before four rows (the 96 lines of four float16 rows of 768),
    they made a one-sequence step 1.25x slower, four sequences' 1.32x, on a Zen 4."""
    return _ask_ahead(w, asked, ask_base + done * 4 * w.itemsize, reach)


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
def _dot_rows(load16, widen, dot, w, scales, x, out, bias, start, stop, mode, by_fours,
              next_start, next_stop, asked_ahead):
    """out[m, o] (=, +=) scale_o * widen(W^T[o]) . x[m] (+ bias[o]) for o in [start, stop)
    and every sequence m, the rows' bytes asked for PREFETCH_AHEAD ahead, on into the rows
    [next_start, next_stop) that come next; asked_ahead: the bytes of this block asked for
    before it. -> the bytes of the next block now asked for.

    Several sequences, or by_fours: four rows of W^T at a time, against four sequences per
    pass (from FOUR_SEQUENCES_MIN on), then two, then one (the rows stay in the core's cache
    while every sequence uses them). One sequence, not by_fours: one row at a time, `dot`
    (float32: _dot_vectors, where four rows made the step 0.89x as fast on an AMD Zen 5;
    int8: _dot_asked, LLVM's vectorisation of _dot, where four rows made the step 1.1-1.3x
    slower on an Intel Emerald Rapids, 1.03x faster on a later Xeon, 0.83x on a Zen 4, and
    _dot_vectors's loop with int8 loads 0.5x as fast on the Zen 5; float16's step, 1.16x
    faster on that Xeon, level on the Zen 4, takes four rows, one at a time 0.83x as fast on
    the Zen 5)."""
    n_in = w.shape[1]
    row_bytes = n_in * w.itemsize
    asked = start * row_bytes + asked_ahead                       # bytes from w's start
    reach = _reach(start, stop, next_start, next_stop, row_bytes)
    if x.shape[0] == 1 and not by_fours:
        x_row = x[0]
        for o in range(start, stop):
            total, asked = dot(widen, w, o, x_row, asked, reach)
            out[0, o] = _combined(out[0, o], total * _scale(scales, o) + _at(bias, o), mode)
        return max(0, asked - stop * row_bytes)
    x_flat = x.reshape(-1)
    fours_end = start + (stop - start) // 4 * 4
    quads_end = x.shape[0] - x.shape[0] % 4 if x.shape[0] >= FOUR_SEQUENCES_MIN else 0
    pairs_end = quads_end + (x.shape[0] - quads_end) // 2 * 2
    for o in range(start, fours_end, 4):
        # The first pass over these four rows asks for the bytes from ask_base on, four times
        # as fast as it reads (_ask_while_reading): from the next four rows on at least, so
        # that long rows are asked for before they are read (four rows of 3072 float16, the
        # MLP's second product, are 24 KB: PREFETCH_AHEAD past the first row left the other
        # three to wait for memory). One float16 sequence 1.05-1.08x, 16 1.08x on a Zen 4.
        ask_base = max(o * row_bytes + PREFETCH_AHEAD, (o + 4) * row_bytes)
        for m in range(0, quads_end, 4):
            totals, asked = _four_row_dots_four_sequences(
                load16, widen, w, o * n_in, n_in, x_flat,
                (m * n_in, (m + 1) * n_in, (m + 2) * n_in, (m + 3) * n_in), asked, ask_base,
                reach)
            for s in range(4):
                for r in range(4):
                    out[m + s, o + r] = _combined(
                        out[m + s, o + r], totals[s][r] * _scale(scales, o + r) + _at(bias, o + r),
                        mode)
        for m in range(quads_end, pairs_end, 2):
            totals_a, totals_b, asked = _four_row_dots_two_sequences(
                load16, widen, w, o * n_in, n_in, x_flat, m * n_in, (m + 1) * n_in, asked,
                ask_base, reach)
            for r in range(4):
                scale, added = _scale(scales, o + r), _at(bias, o + r)
                out[m, o + r] = _combined(out[m, o + r], totals_a[r] * scale + added, mode)
                out[m + 1, o + r] = _combined(out[m + 1, o + r], totals_b[r] * scale + added, mode)
        for m in range(pairs_end, x.shape[0]):         # one sequence, or the last of an odd batch
            totals, asked = _four_row_dots_one_sequence(load16, widen, w, o * n_in, n_in, x_flat,
                                                        m * n_in, asked, ask_base, reach)
            for r in range(4):
                out[m, o + r] = _combined(out[m, o + r],
                                          totals[r] * _scale(scales, o + r) + _at(bias, o + r), mode)
    for last in range(fours_end, stop):                # the last (stop - start) % 4 rows
        asked = _ask_ahead(w, asked, (last + 1) * row_bytes + PREFETCH_AHEAD, reach)
        for m in range(x.shape[0]):
            total = _dot(widen, w[last], x[m]) * _scale(scales, last) + _at(bias, last)
            out[m, last] = _combined(out[m, last], total, mode)
    return max(0, asked - stop * row_bytes)


@njit(nogil=True, cache=True, fastmath=REASSOC)
def _dot_rows_float32(w, scales, x, out, bias, start, stop, mode, next_start, next_stop,
                      asked_ahead):
    """W^T (out, in) float32 (the LM head's wte)."""
    return _dot_rows(_load16_float32, _float32, _dot_vectors, w, scales, x, out, bias, start,
                     stop, mode, False, next_start, next_stop, asked_ahead)


@njit(nogil=True, cache=True, fastmath=REASSOC)
def _dot_rows_float16(w_bits, scales, x, out, bias, start, stop, mode, next_start, next_stop,
                      asked_ahead):
    """W^T (out, in) float16, given as its bits (uint16)."""
    return _dot_rows(_load16_float16, _float16_to_float32, _dot_asked, w_bits, scales, x, out, bias,
                     start, stop, mode, True, next_start, next_stop, asked_ahead)


@njit(nogil=True, cache=True, fastmath=REASSOC)
def _dot_rows_int8(q, scales, x, out, bias, start, stop, mode, next_start, next_stop,
                   asked_ahead):
    """W^T (out, in) int8 with one scale per row: w[o, i] = scales[o, 0] * q[o, i]. Rows
    [start, stop) lie one after another."""
    return _dot_rows(_load16_int8, _int8_to_float32, _dot_asked, q, scales, x, out, bias, start, stop,
                     mode, False, next_start, next_stop, asked_ahead)


@njit(inline="always")
def _blocks_by_tickets(block, w, scales, x, out, bias, mode, counter, passed, n_units, per_ticket,
                       outputs_per_unit):
    """block(w, scales, x, out, bias, start, stop, mode, next_start, next_stop, asked_ahead)
    over the units [0, n_units) of w (rows of W^T, or panels), per_ticket at a time, each
    worker taking the next block as it finishes one (the blocks of one product counted at
    slot TICKETS + passed); GELU applied to each block's outputs (outputs_per_unit a unit)
    once it is done. -> the ticket the worker holds at the end, past the last block (one
    worker holds the first such ticket).

    A worker holds its next block while it reads the last, so that the end of one asks for
    the start of the next: a block then starts with its first rows on the way, not with a
    wait for them (the next ticket's rows are as likely another worker's as this one's).
    Steps of one sequence on a Zen 4: float16 1.07x, int8 1.10x."""
    ticket, asked_ahead = _take(counter, TICKETS + passed), 0
    while ticket * per_ticket < n_units:
        next_ticket = _take(counter, TICKETS + passed)
        start, stop = ticket * per_ticket, min(n_units, (ticket + 1) * per_ticket)
        next_start = min(n_units, next_ticket * per_ticket)
        next_stop = min(n_units, next_start + per_ticket)     # none left: an empty range
        asked_ahead = block(w, scales, x, out, bias, start, stop, mode, next_start, next_stop,
                            asked_ahead)
        if mode == GELU:
            for m in range(out.shape[0]):
                _gelu_range(out, m, start * outputs_per_unit, stop * outputs_per_unit)
        ticket = next_ticket
    return ticket


@njit(inline="always")
def _by_tickets(dot_rows, w, scales, x, out, bias, mode, counter, passed):
    """dot_rows over all rows of W^T, ROWS_PER_TICKET at a time (_blocks_by_tickets)."""
    _blocks_by_tickets(dot_rows, w, scales, x, out, bias, mode, counter, passed, w.shape[0],
                       ROWS_PER_TICKET, 1)


@njit(inline="always")
def _rows_float16(w_bits, scales, x, out, bias, mode, worker, n_workers, counter, passed, partials):
    _by_tickets(_dot_rows_float16, w_bits, scales, x, out, bias, mode, counter, passed)
    return passed


@njit(inline="always")
def _rows_int8(q, scales, x, out, bias, mode, worker, n_workers, counter, passed, partials):
    _by_tickets(_dot_rows_int8, q, scales, x, out, bias, mode, counter, passed)
    return passed


# ---- the LM head of several float32 sequences, turned around -------------------------------
# logits^T (V, B) = wte (V, C) @ h^T (C, B): with h^T held as one 16-column panel (B <= 16
# sequences, zeros past B), a tile of HEAD_ROWS rows of wte keeps one vector per row, the
# sequences in its lanes, while k runs over C:
#     per k: h^T's row k loaded once, wte[row, k] broadcast for each row -> 16 multiply-adds
# No sums across lanes, and each element of wte is read once for the whole batch; a tile's
# rows lie one after another in wte (48 KB for GPT-2), and it asks for the next tile's, a
# cache line per k. Where B is small most lanes are zeros, and the dot products of _dot_rows
# are faster (HEAD_TILE_MIN_SEQUENCES).
@njit(inline="always")
def _eight_rows_k(w_flat, at, depth, column, acc):
    """acc[r] += wte[row r, k] * h^T[k] for eight rows (at: row 0's element k)."""
    return (_fma16(_broadcast16(w_flat, at), column, acc[0]),
            _fma16(_broadcast16(w_flat, at + depth), column, acc[1]),
            _fma16(_broadcast16(w_flat, at + 2 * depth), column, acc[2]),
            _fma16(_broadcast16(w_flat, at + 3 * depth), column, acc[3]),
            _fma16(_broadcast16(w_flat, at + 4 * depth), column, acc[4]),
            _fma16(_broadcast16(w_flat, at + 5 * depth), column, acc[5]),
            _fma16(_broadcast16(w_flat, at + 6 * depth), column, acc[6]),
            _fma16(_broadcast16(w_flat, at + 7 * depth), column, acc[7]))


@njit(nogil=True, cache=True)
def _head_tile(w, panel, first_row, logits, tile):
    """logits[m, first_row + r] = wte[first_row + r] . h[m] for the tile's 16 rows r and every
    sequence m (panel: h^T, (C, 16) flat; tile: 16 x 16 floats to turn the sums around).
    Each sum: one chain of fused multiply-adds in k order."""
    depth = w.shape[1]
    w_flat = w.reshape(-1)
    zero = _zeros16()
    low = high = (zero, zero, zero, zero, zero, zero, zero, zero)
    at = first_row * depth
    ahead = (first_row + HEAD_ROWS) * depth * w.itemsize        # the next tile's rows, in bytes
    for k in range(depth):
        column = _load16(panel, k * WIDE)
        low = _eight_rows_k(w_flat, at + k, depth, column, low)
        high = _eight_rows_k(w_flat, at + 8 * depth + k, depth, column, high)
        _prefetch(w, ahead + k * CACHE_LINE)       # 16 rows x C floats = C cache lines
    for r in range(8):                             # constant counts: the tuples stay in registers
        _store16(tile, r * WIDE, low[r])
        _store16(tile, (r + 8) * WIDE, high[r])
    for m in range(logits.shape[0]):
        for r in range(HEAD_ROWS):
            logits[m, first_row + r] = tile[r * WIDE + m]


@njit(nogil=True, cache=True)
def _transpose_into(h, panel):
    """panel[k, m] = h[m, k] for the B rows of h, 0 for m >= B (panel (C, 16) flat)."""
    panel[:] = 0.0
    for k in range(h.shape[1]):
        for m in range(h.shape[0]):
            panel[k * WIDE + m] = h[m, k]


@njit(inline="always")
def _head_float32(wte, wte_scales, h, logits, counter, passed, head_scratch):
    """logits = h @ wte^T: from HEAD_TILE_MIN_SEQUENCES to WIDE sequences (h^T's 16 lanes),
    tiles of 16 rows of wte (a last tile overlapping the one before it: its outputs computed
    twice, the same sums), ROWS_PER_TICKET rows per ticket; fewer or more sequences,
    _dot_rows's dot products."""
    n_sequences, n_rows = logits.shape
    if not HEAD_TILE_MIN_SEQUENCES <= n_sequences <= WIDE or n_rows < HEAD_ROWS:
        _by_tickets(_dot_rows_float32, wte, wte_scales, h, logits, NO_BIAS, STORE, counter, passed)
        return
    panel, tile = head_scratch
    _transpose_into(h, panel)
    n_tiles, per_ticket = -(-n_rows // HEAD_ROWS), ROWS_PER_TICKET // HEAD_ROWS
    ticket = _take(counter, TICKETS + passed)
    while ticket * per_ticket < n_tiles:
        for t in range(ticket * per_ticket, min(n_tiles, (ticket + 1) * per_ticket)):
            _head_tile(wte, panel, min(t * HEAD_ROWS, n_rows - HEAD_ROWS), logits, tile)
        ticket = _take(counter, TICKETS + passed)


@njit(inline="always")
def _head_rows_float32(wte, wte_scales, h, logits, counter, passed, head_scratch):
    _by_tickets(_dot_rows_float32, wte, wte_scales, h, logits, NO_BIAS, STORE, counter, passed)


@njit(inline="always")
def _head_rows_float16(wte_bits, wte_scales, h, logits, counter, passed, head_scratch):
    _by_tickets(_dot_rows_float16, wte_bits, wte_scales, h, logits, NO_BIAS, STORE, counter, passed)


@njit(inline="always")
def _head_rows_int8(q, wte_scales, h, logits, counter, passed, head_scratch):
    _by_tickets(_dot_rows_int8, q, wte_scales, h, logits, NO_BIAS, STORE, counter, passed)


# ---- the other operations, on whole rows or one worker's share -------------------------------
@njit(nogil=True, cache=True, error_model="numpy")
def _layer_norm(x, gain, bias, eps, out):
    """out[m] = (x[m] - mean) / sqrt(var + eps) * gain + bias for each row m, as fused_cpu's."""
    for m in range(x.shape[0]):
        mean, var = _row_mean_var(x[m])
        mean32 = np.float32(mean)
        inv_std = np.float32(1.0) / np.sqrt(np.float32(var) + eps)   # float32, as the reference
        for c in range(x.shape[1]):
            out[m, c] = (x[m, c] - mean32) * inv_std * gain[c] + bias[c]


@njit(nogil=True, cache=True, error_model="numpy", fastmath=CONTRACT)
def _gelu_range(x, m, start, stop):
    """x[m, start:stop] = gelu(x[m, start:stop]) in place, tanh form as fused_cpu's. On a
    contiguous slice, counted from 0: indexed x[m, i], the loop stayed scalar (a seventh of
    the MLP's first product at 16 sequences)."""
    part = x[m][start:stop]
    for i in range(part.size):
        v = part[i]
        z = GELU_SCALE * (v + GELU_CUBIC * v * v * v)
        part[i] = v / (np.float32(1.0) + exp_f32(np.float32(-2.0) * z))


@njit(nogil=True, cache=True, fastmath=REASSOC)
def _scores(head_keys, q_row, n_keys, scores):
    """scores[j] = head_keys[j] . q_row for j < n_keys, in vector-wide partial sums as the
    products. Its own function: inside _attend_head, whose flags exclude reassociation (they
    keep exp_f32's exact range reduction), the dot products did not vectorise."""
    for j in range(n_keys):
        scores[j] = _dot(_float32, head_keys[j], q_row)


@njit(nogil=True, cache=True, fastmath=CONTRACT)
def _weigh_values(head_values, weights, n_keys, inv_total, out):
    """out = inv_total * sum_j weights[j] head_values[j] over j < n_keys (out: (d,)). Its own
    function, on the head's own slice of att: indexed into the whole of att inside
    _attend_head, the loop over t did not vectorise. (12 heads at 81 keys, one thread: 100-115
    us inline, 70 us with _scores apart, 20-26 us with both.)"""
    out[:] = 0.0
    for j in range(n_keys):
        w = weights[j]
        for t in range(out.size):
            out[t] += w * head_values[j, t]
    for t in range(out.size):
        out[t] *= inv_total


@njit(nogil=True, cache=True, error_model="numpy", fastmath=CONTRACT)
def _attend_head(qkv, keys, values, sequence, head, position, att, scores, q_row):
    """Write the sequence's key and value of `head` for `position` into the cache, then
    att[head] = softmax(q K^T / sqrt(d)) V over positions 0..position (all of them visible).
    qkv (3C,), att (C,): the sequence's rows; keys, values: the layer's (B, H, max_len, d)."""
    head_dim = keys.shape[3]
    width = att.size                                   # C: q, k, v sit at 0, C, 2C in qkv
    base = head * head_dim
    for t in range(head_dim):
        keys[sequence, head, position, t] = qkv[width + base + t]
        values[sequence, head, position, t] = qkv[2 * width + base + t]
    scale = np.float32(1.0 / math.sqrt(head_dim))
    for t in range(head_dim):
        q_row[t] = qkv[base + t] * scale
    n_keys = position + 1
    _scores(keys[sequence, head], q_row, n_keys, scores)
    row_max = np.float32(-np.inf)
    for j in range(n_keys):
        row_max = max(row_max, scores[j])
    for j in range(n_keys):       # apart from the sum, so that LLVM vectorises the exps
        scores[j] = exp_f32(scores[j] - row_max)
    total = np.float32(0.0)
    for j in range(n_keys):
        total += scores[j]
    _weigh_values(values[sequence, head], scores, n_keys, np.float32(1.0) / total,
                  att[base:base + head_dim])


# ---- one worker's whole step -----------------------------------------------------------------
@njit(inline="always")
def _step(product, head_product, worker, n_workers, counter, x, shared, scratch, vectors, ln_f,
          weights, scales, wte, wte_scales, keys, values, position, eps, logits):
    """The loop of the module docstring, for one worker and B sequences. shared: (qkv (B, 3C),
    att (B, C), fc (B, 4C), partials: (K_BLOCKS, B, 4C), with panels (workers, 6 x groups, 64));
    scratch: this worker's own (h (B, C),
    scores (max_len,), q_row (d,), the LM head tile's (h^T panel (16 C,) or (0,), (256,)));
    vectors, scales: StepWeights'; weights: its weights, or their panels."""
    qkv, att, fc, partials = shared
    h, scores, q_row, head_scratch = scratch
    ln_1_gain, ln_1_bias, ln_2_gain, ln_2_bias, qkv_b, proj_b, fc_b, mproj_b = vectors
    qkv_w, proj_w, fc_w, mproj_w = weights
    qkv_s, proj_s, fc_s, mproj_s = scales
    n_sequences, n_head, n = x.shape[0], keys[0].shape[1], n_workers
    passed = 0
    for layer in range(len(qkv_w)):
        _layer_norm(x, ln_1_gain[layer], ln_1_bias[layer], eps, h)
        passed = product(qkv_w[layer], qkv_s[layer], h, qkv, qkv_b[layer], STORE, worker, n,
                         counter, passed, partials)
        passed = _barrier(counter, n, passed)
        for pair in range(worker, n_sequences * n_head, n):     # (sequence, head) pairs
            b, head = pair // n_head, pair % n_head
            _attend_head(qkv[b], keys[layer], values[layer], b, head, position, att[b], scores,
                         q_row)
        passed = _barrier(counter, n, passed)
        passed = product(proj_w[layer], proj_s[layer], att, x, proj_b[layer], ADD, worker, n,
                         counter, passed, partials)        # x += att @ W_proj + b
        passed = _barrier(counter, n, passed)
        _layer_norm(x, ln_2_gain[layer], ln_2_bias[layer], eps, h)
        passed = product(fc_w[layer], fc_s[layer], h, fc, fc_b[layer], GELU, worker, n,
                         counter, passed, partials)
        passed = _barrier(counter, n, passed)
        passed = product(mproj_w[layer], mproj_s[layer], fc, x, mproj_b[layer], ADD, worker, n,
                         counter, passed, partials)
        passed = _barrier(counter, n, passed)
    _layer_norm(x, ln_f[0], ln_f[1], eps, h)
    head_product(wte, wte_scales, h, logits, counter, passed, head_scratch)


@njit(nogil=True, cache=True)
def _worker_float32(worker, n_workers, counter, x, shared, scratch, vectors, ln_f, weights,
                    scales, wte, wte_scales, keys, values, position, eps, logits):
    _step(_columns_float32, _head_rows_float32, worker, n_workers, counter, x, shared, scratch, vectors,
          ln_f, weights, scales, wte, wte_scales, keys, values, position, eps, logits)


@njit(nogil=True, cache=True)
def _worker_float32_panels(worker, n_workers, counter, x, shared, scratch, vectors, ln_f, weights,
                           scales, wte, wte_scales, keys, values, position, eps, logits):
    _step(_panels_float32, _head_float32, worker, n_workers, counter, x, shared, scratch,
          vectors, ln_f, weights, scales, wte, wte_scales, keys, values, position, eps, logits)


@njit(nogil=True, cache=True)
def _worker_float16(worker, n_workers, counter, x, shared, scratch, vectors, ln_f, weights,
                    scales, wte, wte_scales, keys, values, position, eps, logits):
    _step(_rows_float16, _head_rows_float16, worker, n_workers, counter, x, shared, scratch, vectors,
          ln_f, weights, scales, wte, wte_scales, keys, values, position, eps, logits)


@njit(nogil=True, cache=True)
def _worker_int8(worker, n_workers, counter, x, shared, scratch, vectors, ln_f, weights,
                 scales, wte, wte_scales, keys, values, position, eps, logits):
    _step(_rows_int8, _head_rows_int8, worker, n_workers, counter, x, shared, scratch, vectors,
          ln_f, weights, scales, wte, wte_scales, keys, values, position, eps, logits)


_WORKERS = {"float32": _worker_float32, "float16": _worker_float16, "int8": _worker_int8}


# ---- Python side -------------------------------------------------------------------------------
def usable_cores() -> int:
    """The cores this process may run on: more spinning workers than that would take turns."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_cache(cache, weights, n_head: int, n_sequences: int) -> None:
    """The cache must be for these n_sequences and this model, with room for one more
    position: the kernel writes into it unchecked."""
    if cache.length >= cache.max_len:
        raise ValueError(f"KV cache is full: {cache.length} cached + 1 new positions exceed its "
                         f"max_len of {cache.max_len}")
    shape = (n_sequences, n_head, cache.max_len, weights.width // n_head)
    arrays = list(cache.keys) + list(cache.values)
    if len(cache.keys) != weights.n_layer or len(cache.values) != weights.n_layer or not all(
            a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous for a in arrays):
        raise ValueError(f"decode_step needs a KV cache of {weights.n_layer} layers of C-contiguous "
                         f"float32 {shape} keys and values ({n_sequences} sequence(s) of this "
                         f"model); got {len(cache.keys)} layers of "
                         f"{cache.keys[0].shape if cache.keys else None}")


def _check_panels(panels, weights) -> None:
    """panels must hold every block weight of these float32 weights, packed: the kernel reads
    them unchecked."""
    if weights.dtype != "float32":
        raise ValueError(f"panels are for float32 weights; these are {weights.dtype}")
    expected = [[(-(-w.shape[1] // WIDE), w.shape[0], WIDE) for w in per_layer]
                for per_layer in weights.weights]            # one list per block weight
    got = [[getattr(p, "shape", None) for p in per_layer] for per_layer in panels]
    if got != expected or not all(p.dtype == np.float32 and p.flags.c_contiguous
                                  for per_layer in panels for p in per_layer):
        raise ValueError(f"panels must be C-contiguous float32 packed copies of the block weights, "
                         f"shapes {[shapes[0] for shapes in expected]} in each of "
                         f"{weights.n_layer} layers; got {[shapes[:1] for shapes in got]}")


def decode_step(weights, x: np.ndarray, cache, eps: float, n_head: int, pool,
                panels=None) -> np.ndarray:
    """Logits (B, V) for one new token of each of B sequences, whose embeddings x (B, C)
    already hold the position's (x (C,): one sequence), from the model's parameters as
    minillm.kernels.step_weights.StepWeights; writes the tokens' keys and values at position
    cache.length of `cache` (a minillm.inference.kv_cache.KVCache for the B sequences), which
    the caller then advances.

    panels: None, or for float32 weights, tuples like weights.weights of each block weight
    packed into panels (matmul_packed_cpu.pack_weight), which the products of several
    sequences then read instead (the 6 x 64 tile above).

    pool: the minillm.kernels.workers.WorkerPool whose threads run the step, one worker each
    (at most one per usable core). One step at a time per pool (NumbaBackend holds a lock): a
    second step's workers could otherwise wait at a barrier for threads busy with the first's."""
    x = np.array(x, np.float32)                 # the residual stream, updated in place: a copy
    x = x.reshape(1, -1) if x.ndim == 1 else x                            # (B, C)
    if x.ndim != 2 or x.shape[1] != weights.width:
        raise ValueError(f"x must hold the model's {weights.width} embedding values per sequence, "
                         f"got shape {x.shape}")
    n_sequences = x.shape[0]
    _check_cache(cache, weights, n_head, n_sequences)
    C, n_workers = weights.width, min(pool.n_threads, usable_cores())
    # partials: the column kernel's partial sums of each block of W's rows, or each worker's
    # tile sums between slices of k (panels)
    partials_shape = (K_BLOCKS, n_sequences, 4 * C) if panels is None else (
        n_workers, -(-n_sequences // TILE_SEQUENCES) * TILE_SEQUENCES, TILE_PANELS * WIDE)
    shared = (np.empty((n_sequences, 3 * C), np.float32), np.empty((n_sequences, C), np.float32),
              np.empty((n_sequences, 4 * C), np.float32), np.empty(partials_shape, np.float32))
    head_scratch = (C * WIDE if panels is not None else 0, HEAD_ROWS * WIDE)   # _head_float32's
    scratch = [(np.empty((n_sequences, C), np.float32), np.empty(cache.max_len, np.float32),
                np.empty(C // n_head, np.float32),
                tuple(np.empty(size, np.float32) for size in head_scratch))
               for _ in range(n_workers)]
    logits = np.empty((n_sequences, weights.n_vocab), np.float32)
    # ARRIVED, ABORTED, then a ticket slot per product: a layer passes at most 9 barriers (5,
    # and float32's 4 inside its products), the LM head comes after the last
    counter = np.zeros(TICKETS + 9 * weights.n_layer + 1, np.int64)
    keys, values, position = tuple(cache.keys), tuple(cache.values), cache.length
    worker_step, w, matrices = _WORKERS[weights.dtype], weights, weights.weights
    if panels is not None:
        _check_panels(panels, weights)
        worker_step, matrices = _worker_float32_panels, panels

    def run_worker(worker: int) -> None:
        try:
            worker_step(worker, n_workers, counter, x, shared, scratch[worker], w.vectors, w.ln_f,
                        matrices, w.scales, w.wte, w.wte_scales, keys, values, position,
                        np.float32(eps), logits)
        except BaseException:
            counter[ABORTED] = 1          # opens every barrier: the other workers run out
            raise

    pool.run(run_worker, n_workers)
    return logits
