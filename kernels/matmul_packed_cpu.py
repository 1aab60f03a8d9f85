"""Rows times a weight packed once into 16-column panels: the float32 matmuls of batched
decoding (`matmul_packed`, a 4 x 16 tile) and of prompts (`matmul_prompt`, a 6 x 16 tile);
and the 6 x 16 tile turned around for batched decoding's LM head (`matmul_by_rows`).

    out (M, N) = x (M, K) @ W + bias      W (K, N) held as panels[p, k, c] = W[k, 16 p + c]

Reference: `x @ W + bias` (NumPy's BLAS). tests/test_matmul_cpu.py compares the two within
1e-5 of sum_k |x_k w_k| over edge and random shapes; tests/test_performance_paths.py the
backend's batched decoding and prompts against float64, within 1e-6 of that sum.

Decoding B sequences at once multiplies B rows (2 to 16) by every weight. That is too few rows
for OpenBLAS's sgemm, which packs the whole weight again on every call, and enough that the
products are no longer only a read of the weights: at B = 16 the block products of a GPT-2
124M step are 2.7 GFLOP.
So here the weight is packed once (`pack_weight`, kept by NumbaBackend beside the weight), and
each output tile of 4 rows x 16 columns lives in registers while k runs over the whole depth:

    for each panel p (16 columns):              panels shared out among the threads
        for each group of 4 rows of x:          x packed as [group, k, row]
            acc[4][16] = 0                      8 AVX2 registers of 8 floats
            for k in range(K):
                w0, w1 = panels[p, k, 0:8], panels[p, k, 8:16]      two loads
                for r in 0..3:  a = x[4 g + r, k] (broadcast)
                                acc[r] += a * w0 ; acc[r][8:] += a * w1  two FMAs
            out[4 g : 4 g + 4, 16 p : 16 p + 16] = acc + bias

Per k: two weight loads and four broadcasts feed eight multiply-adds, and no output needs a
horizontal sum. The dot-product kernel this replaced (matvec_cpu's four rows of x per weight
row) fed four multiply-adds per weight load plus four loads of x, and summed each output's
vector across lanes at the end. A panel (K x 64 bytes) is read once per group of 4 rows, from
L2 after the first; the groups after the first ask for the next panel meanwhile, as the prompt
tile below does (batch 16, the block products of 12 layers: 58-62 -> 71-76 GFLOP/s; batches of
4 and 8 unchanged).

The tile is written with explicit 8-float vectors (`Float32x8` below, LLVM's <8 x float>).
matmul_cpu keeps its 3 x 32 tile in a stack array that LLVM promotes to registers; here the
loads, broadcasts and fused multiply-adds are spelled out, so the loop is exactly the one
above whatever the auto-vectoriser would choose. The vector loads and stores assume nothing
about alignment (`align=4`: a float32's own), since a panel row starts every 64 bytes but
an output row anywhere.

Prompts (2 to a few hundred rows) are GEMMs, compute-bound, and OpenBLAS's sgemm, which packs
the whole weight on every call, reached 70-110 GFLOP/s on them on two cores. `matmul_prompt`
runs the same panels with a taller tile (BLIS's AVX2 sgemm tile):

    x packed into groups of 6 rows: [slice of k][group][k][6 rows]    (pack_prompt_rows, the
                                                groups shared among the threads)
    for each chunk of CHUNK_PANELS panels:      taken from a shared counter by numba's threads
        for each panel p, each group g:
            acc[6][16] = 0                      12 AVX2 registers
            for k in the slice:                 2 weight loads + 6 broadcasts -> 12 FMAs
                acc[r] += x[6 g + r, k] * panels[p, k, 0:16]
                (every 8 k, groups after the first: prefetch rows of the next panel)
            out[6 g : 6 g + 6, 16 p : 16 p + 16] = acc + bias (first slice of k), += acc (later ones)

15 of the 16 vector registers: 12 accumulators, the panel row's two halves and a broadcast.
Alone on one core, with its operands in L1, the tile runs at 88 GFLOP/s (this machine's
multiply-add peak: 91). A panel (K x 64 bytes) comes from memory for the first group and from
L2 for the others, and the others between them ask for the panel to be used next (a software
prefetch, one 64-byte row of it per 8 k), so that memory is busy all the time and not only
while a first group waits on it (two threads, T = 64: 106 -> 114 GFLOP/s; T = 24: 75 -> 96;
whole model prefill 1.10x at T = 64, 1.03x at 256). All of packed x is read again for every panel, so when it is larger than
X_BLOCK_BYTES (T = 256 at K = 3072) k is cut into slices and the rows into blocks, and each
slice adds its sums into `out`. The threads take chunks of panels from a counter
rather than fixed halves, so a thread slowed by other work does not keep the other waiting.

Numerics: plain float32 fused multiply-adds, each output one sum in k order (nothing
reassociated), then the bias added; a prompt cut into slices of k adds the bias to the first
slice's sum and each later slice's sum after it, in order. Its rounding error grows with
sum_k |x_k w_k| as any float32 dot product's does: for GPT-2's K = 3072 with unit-scale
inputs, ~5e-8 of that sum.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import float32, int64, njit, prange, types, void
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

# Both written out by hand in _tile and _write_row: changing them means rewriting those.
PANEL = 16      # columns per panel: two AVX2 vectors of 8 float32
ROWS = 4        # rows of x per tile: 4 x 2 accumulators + 2 weight vectors + 1 broadcast <= 16 registers
# Prompts' tile (_prompt_tile, written out for exactly 6): 6 x 2 accumulators + 2 weight vectors
# + 1 broadcast = 15 of AVX2's 16 registers, 12 multiply-adds per 8 loads
PROMPT_ROWS = 6
X_BLOCK_BYTES = 1024 * 1024   # packed x per block, read once per panel from L2 and L3
SLICE_DEPTH = 384             # k per slice when x is larger: a panel's slice is 24 KiB (L1)
# Panels per ticket: the threads take CHUNK_PANELS (64 columns) at a time from a shared
# counter, so that one slowed by other work does not leave the other waiting at the end
CHUNK_PANELS = 4
# While the tile works on one panel it asks for the next one: without that, a panel's first
# group waits on memory (one core streams it more slowly than the tile consumes it) and the
# other groups, which read it from L2, leave memory idle. The tile's k loop runs in blocks of
# PREFETCH_EVERY (unrolled), asking for the next panel's rows (a 64-byte cache line each)
# between blocks; the groups after the first share the asking. Measured on panels streamed
# from memory, two threads, 11 row groups (T = 64): 114-124 -> 133-141 GFLOP/s.
PREFETCH_EVERY = 8
PREFETCH_INTO_L1 = 3      # llvm.prefetch's locality: every cache level (into L2 only was slower)
NO_SCALES = np.zeros((0, 1), np.float32)    # `scales` of a float16 weight (numba wants one type)


# ---- an 8-float vector type for numba -------------------------------------------------------
class Float32x8(types.Type):
    """Eight float32 in one AVX2 register (LLVM's <8 x float>)."""

    def __init__(self):
        super().__init__(name="float32x8")


float32x8 = Float32x8()
_VECTOR = ir.VectorType(ir.FloatType(), 8)


@register_model(Float32x8)
class _Float32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _element_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def _load8(typingctx, array, index):
    """array[index : index + 8] of a 1-D contiguous float32 array, as one vector (unchecked)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        return builder.load(builder.bitcast(pointer, _VECTOR.as_pointer()), align=4)
    return float32x8(array, index), codegen


@intrinsic
def _store8(typingctx, array, index, vector):
    """array[index : index + 8] = vector (unchecked)."""
    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(pointer, _VECTOR.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.void(array, index, vector), codegen


@intrinsic
def _broadcast8(typingctx, array, index):
    """array[index] in all eight lanes (one vbroadcastss from memory; unchecked)."""
    def codegen(context, builder, signature, args):
        value = builder.load(_element_pointer(context, builder, signature.args[0], *args), align=4)
        lane0 = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), value,
                                       ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(lane0, ir.Constant(_VECTOR, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8))
    return float32x8(array, index), codegen


@intrinsic
def _fma8(typingctx, a, b, c):
    """a * b + c lane by lane, rounded once (vfmadd)."""
    def codegen(context, builder, signature, args):
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR] * 3),
                                             "llvm.fma.v8f32")
        return builder.call(fma, args)
    return float32x8(float32x8, float32x8, float32x8), codegen


@intrinsic
def _add8(typingctx, a, b):
    def codegen(context, builder, signature, args):
        return builder.fadd(*args)
    return float32x8(float32x8, float32x8), codegen


@intrinsic
def _zeros8(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_VECTOR, [0.0] * 8)
    return float32x8(), codegen


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


# ---- packing --------------------------------------------------------------------------------
def pack_weight(weight: np.ndarray) -> np.ndarray:
    """(K, N) float32 -> panels (ceil(N / 16), K, 16): panels[p, k, c] = weight[k, 16 p + c],
    zero past the last column. A copy the size of the weight (rounded up to 16 columns)."""
    n_in, n_out = weight.shape
    n_panels = -(-n_out // PANEL)
    padded = np.zeros((n_in, n_panels * PANEL), np.float32)
    padded[:, :n_out] = weight
    return np.ascontiguousarray(padded.reshape(n_in, n_panels, PANEL).transpose(1, 0, 2))


def _pack_rows(x: np.ndarray) -> np.ndarray:
    """(M, K) -> (ceil(M / 4), K, 4): groups[g, k, r] = x[4 g + r, k], zero past the last row,
    so that a tile's four values at each k lie side by side."""
    n_rows, n_in = x.shape
    n_groups = -(-n_rows // ROWS)
    padded = np.zeros((n_groups * ROWS, n_in), np.float32)
    padded[:n_rows] = x
    return np.ascontiguousarray(padded.reshape(n_groups, ROWS, n_in).transpose(0, 2, 1))


# ---- the kernel -----------------------------------------------------------------------------
@njit(inline="always")
def _write_row(out, start, acc_left, acc_right, bias, column):
    """out[start : start + 16] = the row's two accumulators + bias[column : column + 16]."""
    _store8(out, start, _add8(acc_left, _load8(bias, column)))
    _store8(out, start + 8, _add8(acc_right, _load8(bias, column + 8)))


@njit(inline="always")
def _step(groups, at_k, panels, at_panel, acc):
    """One k of the 4 x 16 tile: acc[2 r], acc[2 r + 1] (row r's columns 0-7, 8-15)
    += x[r, k] * the panel's row k."""
    left0, right0, left1, right1, left2, right2, left3, right3 = acc
    w_left = _load8(panels, at_panel)
    w_right = _load8(panels, at_panel + 8)
    x0 = _broadcast8(groups, at_k)
    left0 = _fma8(x0, w_left, left0); right0 = _fma8(x0, w_right, right0)         # noqa: E702
    x1 = _broadcast8(groups, at_k + 1)
    left1 = _fma8(x1, w_left, left1); right1 = _fma8(x1, w_right, right1)         # noqa: E702
    x2 = _broadcast8(groups, at_k + 2)
    left2 = _fma8(x2, w_left, left2); right2 = _fma8(x2, w_right, right2)         # noqa: E702
    x3 = _broadcast8(groups, at_k + 3)
    left3 = _fma8(x3, w_left, left3); right3 = _fma8(x3, w_right, right3)         # noqa: E702
    return left0, right0, left1, right1, left2, right2, left3, right3


@njit(inline="always")
def _sums_over_k(step, rows, x, x_start, panels, panel_start, n_k, acc, ahead, ahead_start,
                 ahead_lines):
    """acc after step(x, at_x, panels, at_w, acc) for each of n_k values of k (`rows` x values
    and one 16-float panel row per k), in blocks of PREFETCH_EVERY k, unrolled with constant
    offsets; between blocks it asks for ahead_lines cache lines (panel rows of 16 floats) of
    `ahead` from ahead_start on, spread evenly over the blocks."""
    n_blocks = n_k // PREFETCH_EVERY
    lines_per_block = -(-ahead_lines // max(n_blocks, 1))
    asked = 0
    at_x, at_w = x_start, panel_start                 # where k's x values and panel row start
    for block in range(n_blocks):
        stop = min(ahead_lines, asked + lines_per_block)
        while asked < stop:
            _prefetch(ahead, ahead_start + asked * PANEL)
            asked += 1
        for j in range(PREFETCH_EVERY):              # a constant count: LLVM unrolls it
            acc = step(x, at_x + j * rows, panels, at_w + j * PANEL, acc)
        at_x += PREFETCH_EVERY * rows
        at_w += PREFETCH_EVERY * PANEL
    for j in range(n_k - n_blocks * PREFETCH_EVERY):
        acc = step(x, at_x + j * rows, panels, at_w + j * PANEL, acc)
    return acc


@njit(inline="always")
def _tile(groups, group_start, panels, panel_start, depth, out, out_start, out_width, bias, column,
          ahead_start, ahead_lines):
    """The 4 x 16 output tile of one row group and one panel, over the whole depth (row r's
    columns 0-7 accumulate in acc[2 r], columns 8-15 in acc[2 r + 1]), asking on the way for
    ahead_lines rows of the panels from element ahead_start on."""
    zero = _zeros8()
    acc = _sums_over_k(_step, ROWS, groups, group_start, panels, panel_start, depth,
                       (zero, zero, zero, zero, zero, zero, zero, zero),
                       panels, ahead_start, ahead_lines)
    _write_row(out, out_start, acc[0], acc[1], bias, column)
    _write_row(out, out_start + out_width, acc[2], acc[3], bias, column)
    _write_row(out, out_start + 2 * out_width, acc[4], acc[5], bias, column)
    _write_row(out, out_start + 3 * out_width, acc[6], acc[7], bias, column)


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


# The signature fixes every array as flat, contiguous float32: the unchecked vector loads
# above must never see another dtype or layout.
@njit(void(float32[::1], int64, float32[::1], int64, int64, float32[::1], float32[::1], int64),
      parallel=True, nogil=True, cache=True)
def _matmul_packed(groups, n_groups, panels, n_panels, depth, bias, out, n_shares):
    """out (n_groups * 4, n_panels * 16) = x @ W + bias, with x as row groups (_pack_rows) and
    W as panels, all flat; the panels are cut into n_shares contiguous shares, one per numba
    thread."""
    out_width = n_panels * PANEL
    for share in prange(n_shares):
        end_panel = n_panels * (share + 1) // n_shares
        for p in range(n_panels * share // n_shares, end_panel):
            ahead_lines = depth if p + 1 < end_panel else 0       # the share's next panel
            for g in range(n_groups):
                first_line, lines = _lines_to_ask(g, n_groups, ahead_lines)
                _tile(groups, g * depth * ROWS, panels, p * depth * PANEL, depth,
                      out, g * ROWS * out_width + p * PANEL, out_width, bias, p * PANEL,
                      (p + 1) * depth * PANEL + first_line * PANEL, lines)


def matmul_packed(x: np.ndarray, panels: np.ndarray, n_out: int, bias: np.ndarray | None,
                  n_shares: int) -> np.ndarray:
    """x (M, K) @ W + bias -> (M, n_out) float32, W (K, n_out) given as `pack_weight(W)`.

    n_shares: how many shares to cut the panels into (numba runs them on its threads)."""
    _check_arguments(x, panels, n_out, bias, n_shares)
    n_panels, depth, _ = panels.shape
    groups = _pack_rows(np.asarray(x, np.float32))
    padded_bias = _padded_bias(bias, n_out, n_panels)
    out = np.empty((groups.shape[0] * ROWS, n_panels * PANEL), np.float32)
    _matmul_packed(groups.reshape(-1), groups.shape[0], panels.reshape(-1), n_panels, depth,
                   padded_bias, out.reshape(-1), n_shares)
    return np.ascontiguousarray(out[: x.shape[0], :n_out])      # a copy only if n_out % 16


# ---- prompts: many rows, the 6 x 16 tile --------------------------------------------------
def prompt_blocking(n_rows: int, depth: int) -> tuple[int, int]:
    """(slice_depth, block_groups): how deep a slice of k and how many row groups a block of x
    holds, so that the block's slice of packed x (block_groups x slice_depth x 6 floats), which
    every panel reads again, is at most X_BLOCK_BYTES. The whole depth when all of x fits (each
    output then one sum in registers, out written once), else SLICE_DEPTH at a time."""
    n_groups = -(-n_rows // PROMPT_ROWS)
    group_bytes = depth * PROMPT_ROWS * 4
    if n_groups * group_bytes <= X_BLOCK_BYTES:
        return depth, max(n_groups, 1)
    slice_depth = min(depth, SLICE_DEPTH)
    return slice_depth, max(1, X_BLOCK_BYTES // (slice_depth * PROMPT_ROWS * 4))


def pack_prompt_rows(x: np.ndarray, slice_depth: int) -> np.ndarray:
    """(M, K) float32 -> flat packed x: for each slice of slice_depth values of k (k0 = 0,
    slice_depth, ...), for each group g of 6 rows, for each k of the slice, the six
    x[6 g + r, k] side by side (zero past the last row); slice k0 starts at n_groups * 6 * k0."""
    n_rows, depth = x.shape
    n_groups = -(-n_rows // PROMPT_ROWS)
    packed = np.empty(n_groups * PROMPT_ROWS * depth, np.float32)
    _pack_prompt_rows(x, slice_depth, n_groups, packed)
    return packed


@njit(nogil=True, cache=True)
def _pack_prompt_rows(x, slice_depth, n_groups, packed):
    for g in range(n_groups):
        _pack_group(x, slice_depth, n_groups, g, packed)


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
def _pack_on_threads(x, slice_depth, n_groups, packed):
    """pack_prompt_rows into `packed`, the groups shared among numba's threads (inside the
    prompt kernels, whose threads then take the panels: packing on the calling thread alone
    left the other idle, 0.3-0.5 ms of a (256, 3072) product)."""
    for g in prange(n_groups):
        _pack_group(x, slice_depth, n_groups, g, packed)


@njit(inline="always")
def _finish_row(out, start, acc_left, acc_right, bias, column, first_slice):
    """out[start : start + 16] = acc + bias[column : column + 16] after the first slice of k,
    out[start : start + 16] += acc after the others."""
    if first_slice:
        _write_row(out, start, acc_left, acc_right, bias, column)
    else:
        _write_row(out, start, acc_left, acc_right, out, start)


@njit(inline="always")
def _strided_step(w, at, stride, panel, at_panel, acc):
    """One k of the 6 x 16 tile: acc[2 r], acc[2 r + 1] += w[at + r stride] * the panel's
    row k (columns 0-7, 8-15): six values `stride` floats apart, each broadcast."""
    left0, right0, left1, right1, left2, right2, left3, right3, left4, right4, left5, right5 = acc
    x_left = _load8(panel, at_panel)
    x_right = _load8(panel, at_panel + 8)
    w0 = _broadcast8(w, at)
    left0 = _fma8(w0, x_left, left0); right0 = _fma8(w0, x_right, right0)         # noqa: E702
    w1 = _broadcast8(w, at + stride)
    left1 = _fma8(w1, x_left, left1); right1 = _fma8(w1, x_right, right1)         # noqa: E702
    w2 = _broadcast8(w, at + 2 * stride)
    left2 = _fma8(w2, x_left, left2); right2 = _fma8(w2, x_right, right2)         # noqa: E702
    w3 = _broadcast8(w, at + 3 * stride)
    left3 = _fma8(w3, x_left, left3); right3 = _fma8(w3, x_right, right3)         # noqa: E702
    w4 = _broadcast8(w, at + 4 * stride)
    left4 = _fma8(w4, x_left, left4); right4 = _fma8(w4, x_right, right4)         # noqa: E702
    w5 = _broadcast8(w, at + 5 * stride)
    left5 = _fma8(w5, x_left, left5); right5 = _fma8(w5, x_right, right5)         # noqa: E702
    return left0, right0, left1, right1, left2, right2, left3, right3, left4, right4, left5, right5


@njit(inline="always")
def _prompt_step(packed, at_k, panels, at_panel, acc):
    """One k of the 6 x 16 tile: acc[2 r], acc[2 r + 1] (row r's columns 0-7, 8-15)
    += x[r, k] * the panel's row k, its two halves loaded once for all six rows (packed x:
    the six values side by side)."""
    return _strided_step(packed, at_k, 1, panels, at_panel, acc)


@njit(inline="always")
def _prompt_tile(packed, group_start, panels, panel_start, n_k, out, out_start, out_width,
                 bias, column, first_slice, ahead, ahead_start, ahead_lines):
    """The 6 x 16 output tile of one row group and one panel over a slice of n_k values of k
    (as _tile, with six rows), asking on the way for ahead_lines panel rows of `ahead` from
    ahead_start on (_sums_over_k)."""
    zero = _zeros8()
    acc = _sums_over_k(_prompt_step, PROMPT_ROWS, packed, group_start, panels, panel_start, n_k,
                       (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero),
                       ahead, ahead_start, ahead_lines)
    _finish_row(out, out_start, acc[0], acc[1], bias, column, first_slice)
    _finish_row(out, out_start + out_width, acc[2], acc[3], bias, column, first_slice)
    _finish_row(out, out_start + 2 * out_width, acc[4], acc[5], bias, column, first_slice)
    _finish_row(out, out_start + 3 * out_width, acc[6], acc[7], bias, column, first_slice)
    _finish_row(out, out_start + 4 * out_width, acc[8], acc[9], bias, column, first_slice)
    _finish_row(out, out_start + 5 * out_width, acc[10], acc[11], bias, column, first_slice)


@njit(inline="always")
def _packed_panel(panels, scales, block, p, k0, n_k, depth, scratch):
    """(array, start) of panel p's slice k0 in float32 panels packed once: where it lies."""
    return panels, p * depth * PANEL + k0 * PANEL


@njit(inline="always")
def _packed_ahead(panels, p, k0, n_k, depth, scratch):
    """(array, start, lines) to ask for before panel p's slice k0 is used: its n_k rows, one
    cache line each, where they lie in the packed panels."""
    return panels, p * depth * PANEL + k0 * PANEL, n_k


@njit(inline="always")
def _nothing_ahead(weight, p, k0, n_k, depth, scratch):
    """Nothing asked ahead (a panel widened from float16 or int8 rows is made, not read)."""
    return scratch, 0, 0


@njit(inline="always")
def _next_slice(p, k0, first_group, first_panel, end_panel, slice_depth, depth, block_groups,
                n_groups, after):
    """(panel, k0) that _prompt_panels works on after panel p's slice k0 in the block of row
    groups from first_group: the next panel, else the next slice of k, else the next block's
    first slice, else panel `after` (-1: none) at k0 = 0."""
    if p + 1 < end_panel:
        return p + 1, k0
    if k0 + slice_depth < depth:
        return first_panel, k0 + slice_depth
    if first_group + block_groups < n_groups:
        return first_panel, 0
    return after, 0


@njit(inline="always")
def _prompt_panels(panel_of, ahead_of, weight, scales, block, packed, n_groups, n_panels, depth,
                   slice_depth, block_groups, bias, out, first_panel, end_panel, after, scratch):
    """out[:, panels first_panel..end_panel) = x @ W + bias, on the calling thread.

    For each block of row groups and each slice of k (the block's slice of packed x is what
    stays in cache), for each panel, every group of the block against the panel's slice: the
    slice is read from memory by the first group and from L1 or L2 by the rest, which between
    them ask for the slice worked on next (ahead_of; `after`: the panel after end_panel).
    panel_of(weight, scales, block, p, k0, n_k, depth, scratch) -> (array, start) gives the
    slice in the tile's layout: where it lies in packed panels, or widened into scratch."""
    out_width = n_panels * PANEL
    for first_group in range(0, n_groups, block_groups):
        end_group = min(n_groups, first_group + block_groups)
        n_block = end_group - first_group
        for k0 in range(0, depth, slice_depth):
            n_k = min(slice_depth, depth - k0)
            slice_start = n_groups * PROMPT_ROWS * k0          # packed x's slice k0
            for p in range(first_panel, end_panel):
                panel, panel_start = panel_of(weight, scales, block, p, k0, n_k, depth, scratch)
                next_p, next_k0 = _next_slice(p, k0, first_group, first_panel, end_panel,
                                              slice_depth, depth, block_groups, n_groups, after)
                ahead, ahead_start, ahead_lines = ahead_of(
                    weight, next_p, next_k0, min(slice_depth, depth - next_k0), depth, scratch)
                if next_p < 0:
                    ahead_lines = 0
                for g in range(first_group, end_group):
                    first_line, lines = _lines_to_ask(g - first_group, n_block, ahead_lines)
                    _prompt_tile(packed, slice_start + g * n_k * PROMPT_ROWS, panel, panel_start,
                                 n_k, out, g * PROMPT_ROWS * out_width + p * PANEL, out_width,
                                 bias, p * PANEL, k0 == 0, ahead,
                                 ahead_start + first_line * PANEL, lines)


@njit(inline="always")
def _prompt_chunks(panel_of, ahead_of, weight, scales, block, packed, n_groups, n_panels, depth,
                   slice_depth, block_groups, bias, out, scratch, next_chunk):
    """Every panel through _prompt_panels, on as many of numba's threads as `scratch` has rows
    (one each), each taking the next CHUNK_PANELS panels from the shared counter next_chunk as
    it starts the last (so that the tiles of this chunk's last panel know the next to ask for)."""
    n_chunks = -(-n_panels // CHUNK_PANELS)
    for t in prange(scratch.shape[0]):
        chunk = _take_ticket(next_chunk)
        while chunk < n_chunks:
            following = _take_ticket(next_chunk)
            first = chunk * CHUNK_PANELS
            after = following * CHUNK_PANELS if following < n_chunks else -1
            _prompt_panels(panel_of, ahead_of, weight, scales, block, packed, n_groups, n_panels,
                           depth, slice_depth, block_groups, bias, out, first,
                           min(n_panels, first + CHUNK_PANELS), after, scratch[t])
            chunk = following


@njit(parallel=True, nogil=True, cache=True)
def _prompt_matmul(panels, x, packed, n_groups, n_panels, depth, slice_depth, block_groups, bias,
                   out, scratch, next_chunk):
    _pack_on_threads(x, slice_depth, n_groups, packed)
    _prompt_chunks(_packed_panel, _packed_ahead, panels, NO_SCALES, 0, packed, n_groups, n_panels,
                   depth, slice_depth, block_groups, bias, out, scratch, next_chunk)


def _prompt_operands(x: np.ndarray, n_out: int, depth: int, bias: np.ndarray | None):
    """What both prompt kernels take: (slice_depth, block_groups) from prompt_blocking, x as
    C-contiguous float32 and room for it packed (the kernels pack it, pack_prompt_rows'
    layout), the number of row groups, the bias padded to whole panels, and `out` with whole
    groups and panels (the caller returns its first M rows and n_out columns)."""
    n_rows = x.shape[0]
    slice_depth, block_groups = prompt_blocking(n_rows, depth)
    n_groups, n_panels = -(-n_rows // PROMPT_ROWS), -(-n_out // PANEL)
    packed = np.empty(n_groups * PROMPT_ROWS * depth, np.float32)
    out = np.empty((n_groups * PROMPT_ROWS, n_panels * PANEL), np.float32)
    return (slice_depth, block_groups, np.ascontiguousarray(x, np.float32), packed, n_groups,
            _padded_bias(bias, n_out, n_panels), out)


def _padded_bias(bias: np.ndarray | None, n_out: int, n_panels: int) -> np.ndarray:
    """bias (or zeros) with zeros to the end of the last panel."""
    padded = np.zeros(n_panels * PANEL, np.float32)
    if bias is not None:
        padded[:n_out] = bias
    return padded


def matmul_prompt(x: np.ndarray, panels: np.ndarray, n_out: int, bias: np.ndarray | None,
                  n_threads: int) -> np.ndarray:
    """x (M, K) @ W + bias -> (M, n_out) float32, W (K, n_out) given as `pack_weight(W)`, with
    the 6 x 16 tile, for prompts (M from a few dozen to thousands of rows).

    n_threads: how many of numba's threads share the panels."""
    _check_arguments(x, panels, n_out, bias, n_threads)
    n_panels, depth, _ = panels.shape
    n_rows = x.shape[0]
    if n_rows == 0 or depth == 0:                       # nothing to sum: bias (or zeros)
        return np.zeros((n_rows, n_out), np.float32) + (0 if bias is None else bias)
    slice_depth, block_groups, x, packed, n_groups, padded_bias, out = _prompt_operands(
        x, n_out, depth, bias)
    _prompt_matmul(panels.reshape(-1), x, packed, n_groups, n_panels, depth, slice_depth,
                   block_groups, padded_bias, out.reshape(-1), np.empty((n_threads, 0), np.float32),
                   np.zeros(1, np.int64))
    return np.ascontiguousarray(out[:n_rows, :n_out])      # a copy only if n_out % 16


# ---- a few rows times a wide weight held as its rows: batched decoding's LM head -----------
# The LM head multiplies B rows (2 to 16 sequences, one new token each) by wte^T, wte (V, C)
# as the model holds it: V = 50257 outputs, each a dot product with one contiguous row of wte.
# Turned around, it is a tall product with the rows of wte as the tall operand:
#
#     out^T (V, B) = wte (V, C) @ x^T (C, B)        x^T packed into one 16-column panel
#
# and runs on the prompt tile: six rows of wte at a time (broadcast straight from wte, six
# streams read in order, nothing packed), against the panel of x^T (C x 64 bytes, in L1 / L2
# for every group), 12 multiply-adds per k for 8 loads, asking for the next group's six rows
# (18 KB of wte) a few cache lines per 8 k on the way. Each wte element is read once and used
# for all B rows. The matrix-vector kernel it replaces (one dot product per output and row
# of x) fed 4 multiply-adds per 5 loads and summed each output across lanes at the end: at
# B = 16 the LM head took as long as all 48 block products (benchmarks/README.md).
# Fewer rows of x than this: most of the panel's 16 columns would be zeros, and the
# matrix-vector kernel is faster (at 4 rows 5.3-5.9 ms against 10.3-11.5 on GPT-2's LM head)
ROWS_TILE_MIN_ROWS = 6
# Groups of six rows of w per ticket: 64 x 6 rows of wte = 1.2 MB, a few hundred tickets
GROUPS_PER_TICKET = 64


@njit(inline="always")
def _scatter_tile(acc, tile, out, first_row, n_x):
    """out[c, first_row + r] = acc's row r, column c, for c < n_x (the real rows of x): the
    tile goes through `tile` (96 floats) to be read back column by column."""
    for r in range(PROMPT_ROWS):
        _store8(tile, r * PANEL, acc[2 * r])
        _store8(tile, r * PANEL + 8, acc[2 * r + 1])
    for c in range(n_x):
        for r in range(PROMPT_ROWS):
            out[c, first_row + r] = tile[r * PANEL + c]


@njit(inline="always")
def _rows_step(w_rows, at, panel, at_panel, acc):
    """_strided_step on six rows of W: w_rows = (W flat, its row length)."""
    w, depth = w_rows
    return _strided_step(w, at, depth, panel, at_panel, acc)


@njit(inline="always")
def _rows_tile(w, first_row, depth, panel, tile, out, n_x):
    """out[:, first_row : first_row + 6] = x @ w[first_row : first_row + 6]^T, k in order,
    asking on the way for the next group's six rows (one 16-float cache line at a time)."""
    zero = _zeros8()
    at = first_row * depth
    acc = _sums_over_k(_rows_step, 1, (w, depth), at, panel, 0, depth,
                       (zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero),
                       w, at + PROMPT_ROWS * depth, PROMPT_ROWS * depth // PANEL)
    _scatter_tile(acc, tile, out, first_row, n_x)


@njit(void(float32[::1], int64, int64, float32[::1], float32[:, ::1], float32[:, ::1],
           int64[::1]), parallel=True, nogil=True, cache=True)
def _matmul_by_rows(w, n_rows, depth, panel, out, tiles, next_ticket):
    """out (n_x, n_rows) = x @ w^T, w (n_rows, depth) flat, x^T as one panel; on as many of
    numba's threads as `tiles` has rows (one each), each taking GROUPS_PER_TICKET groups of six
    rows of w at a time from the shared counter. n_rows >= 6: the last group is the last six
    rows, overlapping the one before it (its outputs computed twice, the same sums)."""
    n_groups = -(-n_rows // PROMPT_ROWS)
    n_tickets = -(-n_groups // GROUPS_PER_TICKET)
    for t in prange(tiles.shape[0]):
        ticket = _take_ticket(next_ticket)
        while ticket < n_tickets:
            for g in range(ticket * GROUPS_PER_TICKET, min(n_groups, (ticket + 1) * GROUPS_PER_TICKET)):
                first_row = min(g * PROMPT_ROWS, n_rows - PROMPT_ROWS)
                _rows_tile(w, first_row, depth, panel, tiles[t], out, out.shape[0])
            ticket = _take_ticket(next_ticket)


def matmul_by_rows(x: np.ndarray, w_rows: np.ndarray, bias: np.ndarray | None,
                   n_threads: int) -> np.ndarray:
    """x (M, K) @ w_rows^T + bias -> (M, N) float32 for M of 1 to 16 rows, the weight given as
    its rows, w_rows (N, K) C-contiguous float32 (the LM head's wte), read in place.

    n_threads: how many of numba's threads share the rows of w_rows."""
    if not (isinstance(w_rows, np.ndarray) and w_rows.dtype == np.float32 and w_rows.ndim == 2
            and w_rows.flags.c_contiguous):
        raise ValueError(f"w_rows must be a C-contiguous float32 (N, K) array, got "
                         f"{getattr(w_rows, 'dtype', type(w_rows))} {getattr(w_rows, 'shape', '')}")
    n_out, depth = w_rows.shape
    if x.ndim != 2 or x.shape[1] != depth or not 1 <= x.shape[0] <= PANEL:
        raise ValueError(f"x must be (M, {depth}) with 1 <= M <= {PANEL} for this weight, "
                         f"got {x.shape}")
    _check_bias_and_threads(bias, n_out, n_threads, "n_threads")
    x = np.asarray(x, np.float32)
    if n_out < PROMPT_ROWS or depth == 0:                # too few rows for one group
        out = x @ w_rows.T
    else:
        out = np.empty((x.shape[0], n_out), np.float32)  # (M, N)
        panel = pack_weight(np.ascontiguousarray(x.T))   # (1, K, 16): x^T's columns, zeros after M
        _matmul_by_rows(w_rows.reshape(-1), n_out, depth, panel.reshape(-1), out,
                        np.empty((n_threads, PROMPT_ROWS * PANEL), np.float32),
                        np.zeros(1, np.int64))
    if bias is not None:
        out += bias
    return out


# ---- prompts on float16 and int8 weights: each panel widened as it is used ------------------
# The weight stays as the model holds it, W^T (out, in) in float16 or int8 (one scale per row
# or per block of inputs). Each thread widens one panel at a time (16 rows of W^T, one slice
# of k) into its own float32 panel, transposed into the tile's layout, and runs every row group
# of the block against it: one pass over the weight per block of rows (one block up to
# X_BLOCK_BYTES of packed x), where widening whole tiles for BLAS wrote and read float32 tiles.
# The next three are copies of matvec_cpu's: numba's cache watches only the file of the
# function it caches (tests/test_kernels_cpu.py keeps the copies identical).
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
def _widen_float16_panel(w_bits, scales, block, p, k0, n_k, depth, panel):
    """panel[k * 16 + c] = W[k0 + k, 16 p + c] from W^T's float16 bits, zero past the last
    column (scales, block: unused); -> (panel, 0)."""
    for c in range(PANEL):
        row = p * PANEL + c
        if row < w_bits.shape[0]:
            for k in range(n_k):
                panel[k * PANEL + c] = _float16_to_float32(w_bits[row, k0 + k])
        else:
            for k in range(n_k):
                panel[k * PANEL + c] = 0.0
    return panel, 0


@njit(inline="always")
def _widen_int8_panel(q, scales, block, p, k0, n_k, depth, panel):
    """panel[k * 16 + c] = W[k0 + k, 16 p + c] = q[16 p + c, k0 + k] * its block's scale, zero
    past the last column; block: inputs per scale; -> (panel, 0)."""
    for c in range(PANEL):
        row = p * PANEL + c
        if row >= q.shape[0]:
            for k in range(n_k):
                panel[k * PANEL + c] = 0.0
            continue
        k = 0
        while k < n_k:                                 # one run of k per scale
            scale_index = (k0 + k) // block
            end = min(n_k, (scale_index + 1) * block - k0)
            scale = scales[row, scale_index]
            for i in range(k, end):
                panel[i * PANEL + c] = _int8_to_float32(q[row, k0 + i]) * scale
            k = end
    return panel, 0


@njit(parallel=True, nogil=True, cache=True)
def _prompt_matmul_float16(w_bits, x, packed, n_groups, n_panels, depth, slice_depth,
                           block_groups, bias, out, scratch, next_chunk):
    _pack_on_threads(x, slice_depth, n_groups, packed)
    _prompt_chunks(_widen_float16_panel, _nothing_ahead, w_bits, NO_SCALES, 0, packed, n_groups,
                   n_panels, depth, slice_depth, block_groups, bias, out, scratch, next_chunk)


@njit(parallel=True, nogil=True, cache=True)
def _prompt_matmul_int8(q, scales, block, x, packed, n_groups, n_panels, depth, slice_depth,
                        block_groups, bias, out, scratch, next_chunk):
    _pack_on_threads(x, slice_depth, n_groups, packed)
    _prompt_chunks(_widen_int8_panel, _nothing_ahead, q, scales, block, packed, n_groups,
                   n_panels, depth, slice_depth, block_groups, bias, out, scratch, next_chunk)


def matmul_prompt_quantized(x: np.ndarray, weight, bias: np.ndarray | None,
                            n_threads: int) -> np.ndarray:
    """x (M, K) @ W + bias -> (M, N) float32, W held as W^T (N, K): a
    minillm.model.quantize.QuantizedMatrix in float16 or int8, widened a panel at a time inside
    the kernel (nothing widened up front). n_threads: how many of numba's threads share it."""
    n_out, depth = weight.shape
    if x.ndim != 2 or x.shape[1] != depth:
        raise ValueError(f"x must be (M, {depth}) for this weight, got {x.shape}")
    _check_bias_and_threads(bias, n_out, n_threads, "n_threads")
    n_rows = x.shape[0]
    if n_rows == 0 or depth == 0:
        return np.zeros((n_rows, n_out), np.float32) + (0 if bias is None else bias)
    slice_depth, block_groups, x, packed, n_groups, padded_bias, out = _prompt_operands(
        x, n_out, depth, bias)
    n_panels = -(-n_out // PANEL)
    scratch = np.empty((min(n_threads, n_panels), slice_depth * PANEL), np.float32)  # a panel each
    args = (x, packed, n_groups, n_panels, depth, slice_depth, block_groups, padded_bias,
            out.reshape(-1), scratch, np.zeros(1, np.int64))
    if weight.dtype == "float16":
        _prompt_matmul_float16(weight.data.view(np.uint16), *args)
    else:
        _prompt_matmul_int8(weight.data, weight.scales, weight.block, *args)
    return np.ascontiguousarray(out[:n_rows, :n_out])      # a copy only if n_out % 16


def _check_arguments(x, panels, n_out: int, bias, n_shares: int) -> None:
    if not (isinstance(panels, np.ndarray) and panels.dtype == np.float32 and panels.ndim == 3
            and panels.shape[2] == PANEL and panels.flags.c_contiguous):
        raise ValueError(f"panels must be pack_weight's C-contiguous float32 (n_panels, K, {PANEL}) "
                         f"array, got {getattr(panels, 'dtype', type(panels))} "
                         f"{getattr(panels, 'shape', '')}")
    n_panels, depth, _ = panels.shape
    if x.ndim != 2 or x.shape[1] != depth:
        raise ValueError(f"x must be (M, {depth}) for these panels, got {x.shape}")
    if not (n_panels - 1) * PANEL < n_out <= n_panels * PANEL:
        raise ValueError(f"{n_panels} panels hold {(n_panels - 1) * PANEL + 1}-{n_panels * PANEL} "
                         f"output columns, got n_out = {n_out}")
    _check_bias_and_threads(bias, n_out, n_shares, "n_shares")


def _check_bias_and_threads(bias, n_out: int, n_threads: int, name: str) -> None:
    if bias is not None and np.shape(bias) != (n_out,):
        raise ValueError(f"bias must be ({n_out},), got {np.shape(bias)}")
    if n_threads < 1:
        raise ValueError(f"{name} must be at least 1, got {n_threads}")
