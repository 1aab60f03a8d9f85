"""A few rows times a weight packed once into 16-column panels: batched decoding's float32 matmul.

    out (M, N) = x (M, K) @ W + bias      W (K, N) held as panels[p, k, c] = W[k, 16 p + c]

Reference: `x @ W + bias` (NumPy's BLAS). tests/test_matmul_cpu.py compares the two within
1e-5 of sum_k |x_k w_k| over edge and random shapes; tests/test_performance_paths.py the
backend's batched decoding against float64, within 1e-6 of that sum.

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
L2 after the first.

The tile is written with explicit 8-float vectors (`Float32x8` below, LLVM's <8 x float>).
matmul_cpu keeps its 3 x 32 tile in a stack array that LLVM promotes to registers; here the
loads, broadcasts and fused multiply-adds are spelled out, so the loop is exactly the one
above whatever the auto-vectoriser would choose. The vector loads and stores assume nothing
about alignment (`align=4`: a float32's own), since a panel row starts every 64 bytes but
an output row anywhere.

Numerics: plain float32 fused multiply-adds, each output one sum in k order (nothing
reassociated), then the bias added. Its rounding error grows with sum_k |x_k w_k| as any
float32 dot product's does: for GPT-2's K = 3072 with unit-scale inputs, ~5e-8 of that sum.
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
def _tile(groups, group_start, panels, panel_start, depth, out, out_start, out_width, bias, column):
    """The 4 x 16 output tile of one row group and one panel, over the whole depth: row r's
    columns 0-7 accumulate in left_r, columns 8-15 in right_r."""
    left0 = _zeros8(); right0 = _zeros8(); left1 = _zeros8(); right1 = _zeros8()   # noqa: E702
    left2 = _zeros8(); right2 = _zeros8(); left3 = _zeros8(); right3 = _zeros8()   # noqa: E702
    for k in range(depth):
        w_left = _load8(panels, panel_start + k * PANEL)
        w_right = _load8(panels, panel_start + k * PANEL + 8)
        at_k = group_start + k * ROWS               # where the group's four x[., k] start
        x0 = _broadcast8(groups, at_k)
        left0 = _fma8(x0, w_left, left0); right0 = _fma8(x0, w_right, right0)     # noqa: E702
        x1 = _broadcast8(groups, at_k + 1)
        left1 = _fma8(x1, w_left, left1); right1 = _fma8(x1, w_right, right1)     # noqa: E702
        x2 = _broadcast8(groups, at_k + 2)
        left2 = _fma8(x2, w_left, left2); right2 = _fma8(x2, w_right, right2)     # noqa: E702
        x3 = _broadcast8(groups, at_k + 3)
        left3 = _fma8(x3, w_left, left3); right3 = _fma8(x3, w_right, right3)     # noqa: E702
    _write_row(out, out_start, left0, right0, bias, column)
    _write_row(out, out_start + out_width, left1, right1, bias, column)
    _write_row(out, out_start + 2 * out_width, left2, right2, bias, column)
    _write_row(out, out_start + 3 * out_width, left3, right3, bias, column)


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
        for p in range(n_panels * share // n_shares, n_panels * (share + 1) // n_shares):
            for g in range(n_groups):
                _tile(groups, g * depth * ROWS, panels, p * depth * PANEL, depth,
                      out, g * ROWS * out_width + p * PANEL, out_width, bias, p * PANEL)


def matmul_packed(x: np.ndarray, panels: np.ndarray, n_out: int, bias: np.ndarray | None,
                  n_shares: int) -> np.ndarray:
    """x (M, K) @ W + bias -> (M, n_out) float32, W (K, n_out) given as `pack_weight(W)`.

    n_shares: how many shares to cut the panels into (numba runs them on its threads)."""
    _check_arguments(x, panels, n_out, bias, n_shares)
    n_panels, depth, _ = panels.shape
    groups = _pack_rows(np.asarray(x, np.float32))
    padded_bias = np.zeros(n_panels * PANEL, np.float32)
    if bias is not None:
        padded_bias[:n_out] = bias
    out = np.empty((groups.shape[0] * ROWS, n_panels * PANEL), np.float32)
    _matmul_packed(groups.reshape(-1), groups.shape[0], panels.reshape(-1), n_panels, depth,
                   padded_bias, out.reshape(-1), n_shares)
    return np.ascontiguousarray(out[: x.shape[0], :n_out])      # a copy only if n_out % 16


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
    if bias is not None and np.shape(bias) != (n_out,):
        raise ValueError(f"bias must be ({n_out},), got {np.shape(bias)}")
    if n_shares < 1:
        raise ValueError(f"n_shares must be at least 1, got {n_shares}")
