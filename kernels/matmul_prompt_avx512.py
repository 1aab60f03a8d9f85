"""Prompts' matmul on AVX-512: the panels of matmul_packed_cpu under a 6 x 64 tile of 16-float
vectors (`matmul_prompt_avx512`), for CPUs whose registers hold 16 floats.

    out (M, N) = x (M, K) @ W + bias      W (K, N) held as panels[p, k, c] = W[k, 16 p + c]

Reference: `x @ W + bias` (NumPy's BLAS), and matmul_packed_cpu.matmul_prompt, whose sums this
kernel reproduces bit for bit (tests/test_matmul_cpu.py checks both).

matmul_prompt's 6 x 16 tile fills AVX2's 16 registers of 8 floats. A CPU with AVX-512 has 32
registers of 16 floats, and where it has two 512-bit multiply-add units (Intel's Xeons) it
does twice the multiply-adds per cycle on them (one core: 244 against 132 GFLOP/s, measured).
A 16-float vector is one panel row, so the tile here takes four panels side by side:

    for each ticket of 4 panels (64 columns):    taken from a shared counter by numba's threads
        for each block of row groups, each slice of k, each group g of 6 rows:
            acc[6][4] = 0                        24 zmm registers
            for k in the slice:                  4 weight loads + 6 broadcasts -> 24 FMAs
                w_q = panels[p + q, k, 0:16]     q = 0..3
                acc[r][q] += x[6 g + r, k] * w_q
                (every 8 k, groups after the first: prefetch rows of the next 4 panels)
            out[6 g : 6 g + 6, 16 p : 16 p + 64] = acc + bias (first slice), += acc (later ones)

29 of the 32 registers: 24 accumulators, four panel rows and a broadcast; 24 multiply-adds for
10 loads, where the 6 x 16 AVX2 tile does 12 for 8. Everything else is matmul_prompt's: the
same packed weights (nothing packed again), x packed the same way into groups of 6 rows
(`matmul_packed_cpu.pack_prompt_rows`), the same slices of k and blocks of rows
(`prompt_blocking`), the same prefetching. A last ticket of fewer than four panels (N not a
multiple of 64) runs the same tile with its missing panels pointed at its first, and keeps
only the real ones.

On a CPU without AVX-512, LLVM splits each 16-float vector into two of 8: the results are the
same and the tile spills registers, so the backend takes this kernel only where the CPU has
AVX-512 (`HOST_HAS_AVX512`).

Numerics: each output is one chain of float32 fused multiply-adds in k order per slice, the
bias added to the first slice's sum and later slices' sums added in order: the same
operations as matmul_prompt, so the same bits.
"""
from __future__ import annotations

import llvmlite.binding
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from minillm.kernels.matmul_packed_cpu import (PANEL, PREFETCH_EVERY, PREFETCH_INTO_L1,
                                               PROMPT_ROWS, _check_arguments, _element_pointer,
                                               _prompt_operands)

WIDE = 16           # floats per AVX-512 register: one panel row
LINES_PER_BLOCK = 4
TILE_PANELS = 4     # panels per tile: 6 x 4 accumulators + 4 panel rows + 1 broadcast <= 32 registers
# Batched decoding takes this tile from this many sequences on, instead of matmul_packed's
# 4 x 16 AVX2 tile. GPT-2 124M's qkv + MLP products, two threads: at 2 and 4 rows level
# (0.50 / 0.48-0.50 ms), at 8 rows 0.72 against 0.78 ms, at 12 0.73 / 0.98, at 16 0.94 / 1.29.
BATCH_MIN_ROWS = 8


def _host_has_avx512() -> bool:
    """Does this CPU run 16-float vectors natively (AVX-512F, which numba compiles for)?"""
    return "+avx512f" in llvmlite.binding.get_host_cpu_features().flatten().split(",")


HOST_HAS_AVX512 = _host_has_avx512()


# ---- a 16-float vector type for numba -------------------------------------------------------
class Float32x16(types.Type):
    """Sixteen float32 in one AVX-512 register (LLVM's <16 x float>)."""

    def __init__(self):
        super().__init__(name="float32x16")


float32x16 = Float32x16()
_VECTOR = ir.VectorType(ir.FloatType(), WIDE)


@register_model(Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


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
def _add16(typingctx, a, b):
    def codegen(context, builder, signature, args):
        return builder.fadd(*args)
    return float32x16(float32x16, float32x16), codegen


@intrinsic
def _zeros16(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_VECTOR, [0.0] * WIDE)
    return float32x16(), codegen


# The next four are copies of matmul_packed_cpu's: numba's cache watches only the file of the
# function it caches (tests/test_kernels_cpu.py keeps the copies identical).
@intrinsic
def _take_ticket(typingctx, counter):
    """counter[0] += 1 atomically (int64[::1], shared by the threads); returns the old value."""
    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", array.data, ir.Constant(ir.IntType(64), 1), "monotonic")
    return types.int64(counter), codegen


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask the memory system for the cache line holding array[index] (1-D), for reading; a
    hint, which never faults, so an index past the end is harmless."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        address = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        int32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [address.type, int32, int32, int32]),
            "llvm.prefetch.p0i8")
        # read (0), locality, data cache (1)
        builder.call(prefetch, [address, ir.Constant(int32, 0),
                                ir.Constant(int32, PREFETCH_INTO_L1), ir.Constant(int32, 1)])
        return context.get_dummy_value()
    return types.void(array, index), codegen


@njit(inline="always")
def _pack_group(x, slice_depth, n_groups, g, packed):
    """Group g's six rows of x into `packed`, in every slice of k (pack_prompt_rows' layout)."""
    n_rows, depth = x.shape
    for k0 in range(0, depth, slice_depth):
        n_k = min(slice_depth, depth - k0)
        start = n_groups * PROMPT_ROWS * k0 + g * n_k * PROMPT_ROWS
        if (g + 1) * PROMPT_ROWS <= n_rows:                # a whole group: six rows in step
            rows = x[g * PROMPT_ROWS:(g + 1) * PROMPT_ROWS, k0:k0 + n_k]
            for k in range(n_k):
                for r in range(PROMPT_ROWS):
                    packed[start + k * PROMPT_ROWS + r] = rows[r, k]
        else:                                              # the last rows, zeros below them
            for k in range(n_k):
                for r in range(PROMPT_ROWS):
                    row = g * PROMPT_ROWS + r
                    packed[start + k * PROMPT_ROWS + r] = x[row, k0 + k] if row < n_rows else 0.0


@njit(inline="always")
def _lines_to_ask(group, n_block, n_lines):
    """(first, count) of the n_lines rows of the next panel that the block's group-th tile (of
    n_block) asks for: none for the first, which streams the current panel from memory, and
    near-equal runs for the others in order. A group alone asks for none: a tile that streams
    each panel once is a sequential read the hardware prefetcher keeps up with (asking for the
    whole next panel as well was 4-8% slower at 1-4 rows)."""
    if group == 0:
        return n_lines, 0
    per_group = -(-n_lines // (n_block - 1))
    first = min(n_lines, (group - 1) * per_group)
    return first, min(n_lines, first + per_group) - first


# ---- the tile -------------------------------------------------------------------------------
@njit(inline="always")
def _row_update(x, w, row):
    """One row of the tile at one k: row[q] += x * w[q] for the four panels."""
    return (_fma16(x, w[0], row[0]), _fma16(x, w[1], row[1]), _fma16(x, w[2], row[2]),
            _fma16(x, w[3], row[3]))


@njit(inline="always")
def _wide_step(packed, at_k, panels, at_w, acc):
    """One k of the 6 x 64 tile: acc[r][q] += x[r, k] * panel q's row k, the four panel rows
    (at_w[q] in `panels`) loaded once for all six rows."""
    w = (_load16(panels, at_w[0]), _load16(panels, at_w[1]), _load16(panels, at_w[2]),
         _load16(panels, at_w[3]))
    return (_row_update(_broadcast16(packed, at_k), w, acc[0]),
            _row_update(_broadcast16(packed, at_k + 1), w, acc[1]),
            _row_update(_broadcast16(packed, at_k + 2), w, acc[2]),
            _row_update(_broadcast16(packed, at_k + 3), w, acc[3]),
            _row_update(_broadcast16(packed, at_k + 4), w, acc[4]),
            _row_update(_broadcast16(packed, at_k + 5), w, acc[5]))


@njit(inline="always")
def _moved(at_w, by):
    return at_w[0] + by, at_w[1] + by, at_w[2] + by, at_w[3] + by


@njit(inline="always")
def _wide_sums(packed, at_x, panels, at_w, n_k, ahead):
    """The 6 x 64 tile's sums over n_k values of k from packed x's at_x and the panel rows at
    at_w (one start per panel), in blocks of PREFETCH_EVERY k (unrolled, constant offsets);
    between blocks it asks for its share of the next tile's panel rows, spread evenly:
    ahead = (first line, count, start of the next tile's first panel, panel stride, rows per
    panel), line i being row i % rows of panel i // rows."""
    first_line, n_lines, ahead_start, ahead_stride, ahead_rows = ahead
    zero = _zeros16()
    row = (zero, zero, zero, zero)
    acc = (row, row, row, row, row, row)
    n_blocks = n_k // PREFETCH_EVERY
    panel_row = first_line % ahead_rows                # where the next line to ask for lies
    at_ahead = ahead_start + (first_line // ahead_rows) * ahead_stride + panel_row * PANEL
    asked = 0
    for block in range(n_blocks):
        for i in range(LINES_PER_BLOCK):              # a constant count: no loop around acc
            if asked < n_lines:
                _prefetch(panels, at_ahead)
                asked += 1
                panel_row += 1
                at_ahead += PANEL
                if panel_row == ahead_rows:           # on to the next panel's slice
                    panel_row = 0
                    at_ahead += ahead_stride - ahead_rows * PANEL
        for j in range(PREFETCH_EVERY):              # a constant count: LLVM unrolls it
            acc = _wide_step(packed, at_x + j * PROMPT_ROWS, panels, _moved(at_w, j * PANEL), acc)
        at_x += PREFETCH_EVERY * PROMPT_ROWS
        at_w = _moved(at_w, PREFETCH_EVERY * PANEL)
    for j in range(n_k - n_blocks * PREFETCH_EVERY):
        acc = _wide_step(packed, at_x + j * PROMPT_ROWS, panels, _moved(at_w, j * PANEL), acc)
    return acc


@njit(inline="always")
def _finish_row(out, start, row, bias, column, n_real, first_slice):
    """out[start : start + 16 n_real] = row + bias after the first slice of k, += row after
    the others (n_real: the tile's panels that are real)."""
    for q in range(TILE_PANELS):
        if q < n_real:
            at = start + q * WIDE
            added = _load16(bias, column + q * WIDE) if first_slice else _load16(out, at)
            _store16(out, at, _add16(row[q], added))


@njit(inline="always")
def _wide_tile(packed, group_start, panels, at_w, n_k, out, out_start, out_width, bias, column,
               n_real, first_slice, ahead):
    """The 6 x 64 output tile of one row group and four panels over a slice of k."""
    acc = _wide_sums(packed, group_start, panels, at_w, n_k, ahead)
    for r in range(PROMPT_ROWS):                     # constant count: unrolled, acc in registers
        _finish_row(out, out_start + r * out_width, acc[r], bias, column, n_real, first_slice)


@njit(inline="always")
def _tile_starts(first_panel, n_real, k0, depth):
    """Where panels first_panel.. start at slice k0; the ones past n_real repeat the first (read,
    summed and dropped: the last tile of N not a multiple of 64)."""
    first = first_panel * depth * PANEL + k0 * PANEL
    stride = depth * PANEL
    return (first, first + stride * min(1, n_real - 1), first + stride * min(2, n_real - 1),
            first + stride * min(3, n_real - 1))


@njit(inline="always")
def _next_work(k0, first_group, slice_depth, depth, block_groups, n_groups, this_tile, after):
    """(tile, k0) worked on after this tile's slice k0 in the block of row groups from
    first_group: the next slice, else the next block's first slice, else tile `after` (-1:
    none)."""
    if k0 + slice_depth < depth:
        return this_tile, k0 + slice_depth
    if first_group + block_groups < n_groups:
        return this_tile, 0
    return after, 0


# Compiled as a function of its own, called once per ticket: inlined into the parallel loop,
# numba's analysis of that loop trips over the tile's nested tuples of vectors.
@njit(nogil=True)
def _one_tile_column(panels, packed, n_groups, n_panels, depth, slice_depth, block_groups, bias,
                     out, tile, after):
    """out[:, columns of tile] = x @ W + bias, for the four panels from 4 * tile, on the calling
    thread: every block of row groups, every slice of k, every group against the four panels'
    slice; the groups after the first ask for what comes next (`after`: the next tile)."""
    out_width = n_panels * PANEL
    first_panel = tile * TILE_PANELS
    n_real = min(TILE_PANELS, n_panels - first_panel)
    for first_group in range(0, n_groups, block_groups):
        end_group = min(n_groups, first_group + block_groups)
        n_block = end_group - first_group
        for k0 in range(0, depth, slice_depth):
            n_k = min(slice_depth, depth - k0)
            slice_start = n_groups * PROMPT_ROWS * k0          # packed x's slice k0
            at_w = _tile_starts(first_panel, n_real, k0, depth)
            next_tile, next_k0 = _next_work(k0, first_group, slice_depth, depth, block_groups,
                                            n_groups, tile, after)
            next_rows = min(slice_depth, depth - next_k0)
            next_real = min(TILE_PANELS, n_panels - next_tile * TILE_PANELS)
            n_lines = next_real * next_rows if next_tile >= 0 else 0
            next_start = next_tile * TILE_PANELS * depth * PANEL + next_k0 * PANEL
            for g in range(first_group, end_group):
                first_line, lines = _lines_to_ask(g - first_group, n_block, n_lines)
                _wide_tile(packed, slice_start + g * n_k * PROMPT_ROWS, panels, at_w, n_k, out,
                           g * PROMPT_ROWS * out_width + first_panel * PANEL, out_width, bias,
                           first_panel * PANEL, n_real, k0 == 0,
                           (first_line, lines, next_start, depth * PANEL, max(next_rows, 1)))


@njit(parallel=True, nogil=True, cache=True)
def _prompt_matmul_avx512(panels, x, packed, n_groups, n_panels, depth, slice_depth,
                          block_groups, bias, out, n_threads, next_ticket):
    """Pack x (the groups shared among the threads), then every tile column of four panels,
    the threads taking them from the shared counter next_ticket (each takes the next ticket as
    it starts one, so that its tiles know what to ask for ahead)."""
    for g in prange(n_groups):
        _pack_group(x, slice_depth, n_groups, g, packed)
    n_tiles = -(-n_panels // TILE_PANELS)
    for t in prange(n_threads):
        tile = _take_ticket(next_ticket)
        while tile < n_tiles:
            following = _take_ticket(next_ticket)
            _one_tile_column(panels, packed, n_groups, n_panels, depth, slice_depth, block_groups,
                             bias, out, tile, following if following < n_tiles else -1)
            tile = following


def matmul_prompt_avx512(x: np.ndarray, panels: np.ndarray, n_out: int,
                         bias: np.ndarray | None, n_threads: int) -> np.ndarray:
    """x (M, K) @ W + bias -> (M, n_out) float32, W (K, n_out) given as
    `matmul_packed_cpu.pack_weight(W)`, with the 6 x 64 AVX-512 tile: matmul_prompt's result,
    bit for bit. n_threads: how many of numba's threads share the panels."""
    _check_arguments(x, panels, n_out, bias, n_threads)
    n_panels, depth, _ = panels.shape
    n_rows = x.shape[0]
    if n_rows == 0 or depth == 0:                       # nothing to sum: bias (or zeros)
        return np.zeros((n_rows, n_out), np.float32) + (0 if bias is None else bias)
    slice_depth, block_groups, x, packed, n_groups, padded_bias, out = _prompt_operands(
        x, n_out, depth, bias)
    _prompt_matmul_avx512(panels.reshape(-1), x, packed, n_groups, n_panels, depth, slice_depth,
                          block_groups, padded_bias, out.reshape(-1), n_threads,
                          np.zeros(1, np.int64))
    return np.ascontiguousarray(out[:n_rows, :n_out])      # a copy only if n_out % 16
