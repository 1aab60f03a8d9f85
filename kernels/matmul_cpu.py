"""Tiled matrix multiply on the CPU, built the way BLAS builds it, in numba.

    C = A @ B + bias        A: (M, K), B: (K, N) with any strides, bias: (N,), C: (M, N) float32

Reference: `x @ w` (NumPy, which calls BLAS), `reference` below; tests/test_matmul_cpu.py
compares the two.

The loop nest is GotoBLAS/BLIS's:

1. Pack A into row panels of MR rows, `a_panels[p, k, r] = A[p*MR + r, k]`, so the MR values the
   micro-kernel needs at each k sit side by side (zero rows pad the last panel).
2. Split N into column blocks, shared out to the worker threads (`prange`).
3. For each block and each depth slice of KC, pack B[slice, block] into panels of NR columns,
   `b_panels[j, k, c] = B[k0 + k, j*NR + c]`: contiguous, and small enough to stay in cache
   while every row panel of A streams past it. Packing also makes B's layout irrelevant: the
   LM head's `wte.T` (column-major) costs no more than a row-major weight.
4. The micro-kernel: an MR x NR tile of C lives in registers while k runs over the slice. Each
   step broadcasts MR values of A, loads NR values of B (NR/8 AVX2 vectors) and issues
   MR * NR/8 fused multiply-adds. With MR=3, NR=32 that is 12 accumulator registers + 4 for B
   out of AVX2's 16: LLVM keeps the whole tile in registers (checked in the assembly) and
   never spills. The tile is a stack array (`register_tile`), which LLVM can promote to
   registers because nothing else can point at it; a tile in a NumPy array it could not.

Memory: the packed copy of A (M x K floats), one packed B block per worker (KC x NC floats), C.

Why it stays below BLAS (benchmarks/README.md has the measured gap; `benchmarks/bench_kernels.py`
prints it for your machine): OpenBLAS's micro-kernels are written
in assembly for each CPU generation, with software prefetching and an instruction order LLVM
does not find (here it only gets the register allocation right); its block sizes are tuned to
each cache hierarchy, not fixed constants; it packs with vector shuffles and splits work over
both M and N; and the edges of C (M not a multiple of MR, N of NR) go through scalar code here.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import errors, float32, njit, prange, types, void
from numba.core import cgutils
from numba.extending import intrinsic

MR = 3          # rows of the register tile (written out by hand in _micro_kernel)
NR = 32         # columns of the register tile: 4 AVX2 vectors of 8 float32
KC = 256        # depth of a packed slice; a B panel is KC x NR floats = 32 KiB (L1)
MC = 48         # rows of A run against one B panel before moving to the next (L2)
NC_MAX = 384    # widest column block a worker packs: KC x NC_MAX floats = 384 KiB (L2)
TILE_FLOATS = MR * NR

# Fused multiply-add only. No other fast-math flag: the kernel must round like plain float32.
CONTRACT = {"contract"}


def reference(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """What `matmul` computes, the NumPy (BLAS) way."""
    return a @ b if bias is None else a @ b + bias


# ---- registers ----------------------------------------------------------------------------------
# attention_cpu.py holds a copy of these two (numba's cache would not see edits made here);
# tests/test_kernels_cpu.py checks that the copies stay identical.
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


# ---- packing ------------------------------------------------------------------------------------
@njit(void(float32[:, :], float32[:, :, ::1]), parallel=True, cache=True)
def pack_a(a, a_panels):
    """a_panels[p, k, r] = a[p*MR + r, k], zero past the last row."""
    n_rows, depth = a.shape
    for panel in prange(a_panels.shape[0]):
        for k in range(depth):
            for r in range(MR):
                row = panel * MR + r
                a_panels[panel, k, r] = a[row, k] if row < n_rows else 0.0


@njit(cache=True)
def _pack_b_block(b, k0, depth, col0, n_cols, b_panels):
    """b_panels[j, k, c] = b[k0 + k, col0 + j*NR + c] for the block's columns, 0 past them."""
    n_panels = (n_cols + NR - 1) // NR
    edge = n_cols - (n_panels - 1) * NR         # width of the last panel
    if edge < NR:
        b_panels[n_panels - 1, :depth, :] = 0.0
    if b.strides[1] <= b.strides[0]:            # row-major: walk each row of the block once
        for k in range(depth):
            for j in range(n_panels):
                first = col0 + j * NR
                for c in range(NR if j < n_panels - 1 else edge):
                    b_panels[j, k, c] = b[k0 + k, first + c]
    else:                                       # column-major (wte.T): walk down columns
        for j in range(n_panels):
            first = col0 + j * NR
            for c in range(NR if j < n_panels - 1 else edge):
                for k in range(depth):
                    b_panels[j, k, c] = b[k0 + k, first + c]


# ---- the micro-kernel ---------------------------------------------------------------------------
@njit(fastmath=CONTRACT, cache=True)
def _micro_kernel(a_panel, b_panel, c, row0, col0, bias, first_slice):
    """c[row0:row0+MR, col0:col0+NR] (+)= a_panel^T @ b_panel, panels (depth, MR) and (depth, NR).

    The first depth slice writes bias + product; later slices add to what is there."""
    n_rows, n_cols = c.shape
    rows, cols = min(MR, n_rows - row0), min(NR, n_cols - col0)
    tile = register_tile()
    if first_slice:
        for r in range(MR):
            for j in range(cols):
                tile[r, j] = bias[col0 + j]
    for k in range(a_panel.shape[0]):
        a0 = a_panel[k, 0]
        a1 = a_panel[k, 1]
        a2 = a_panel[k, 2]
        for j in range(NR):
            b_kj = b_panel[k, j]
            tile[0, j] += a0 * b_kj
            tile[1, j] += a1 * b_kj
            tile[2, j] += a2 * b_kj
    if rows == MR and cols == NR:       # constant trip counts, so the stores are vectorised
        _write_tile(tile, c, row0, col0, MR, NR, first_slice)
    else:
        _write_tile(tile, c, row0, col0, rows, cols, first_slice)


@njit(inline="always", cache=True)
def _write_tile(tile, c, row0, col0, rows, cols, overwrite):
    # The tile is a stack array, which c cannot overlap, so LLVM is free to vectorise these.
    if overwrite:
        for r in range(rows):
            for j in range(cols):
                c[row0 + r, col0 + j] = tile[r, j]
    else:
        for r in range(rows):
            for j in range(cols):
                c[row0 + r, col0 + j] += tile[r, j]


# ---- the loop nest ------------------------------------------------------------------------------
@njit(void(float32[:, :, ::1], float32[:, :], float32[::1], float32[:, ::1], float32[:, :, :, ::1]),
      parallel=True, cache=True, fastmath=CONTRACT)
def _matmul_kernel(a_panels, b, bias, c, b_blocks):
    """c = a @ b + bias with a already packed. b_blocks: (workers, NC/NR, KC, NR) scratch."""
    n_a_panels, depth, _ = a_panels.shape
    n_cols = c.shape[1]
    block_cols = b_blocks.shape[1] * NR
    n_blocks = (n_cols + block_cols - 1) // block_cols
    n_workers = b_blocks.shape[0]
    panels_per_row_block = MC // MR
    for worker in prange(n_workers):
        b_panels = b_blocks[worker]
        for block in range(worker, n_blocks, n_workers):
            col0 = block * block_cols
            width = min(block_cols, n_cols - col0)
            for k0 in range(0, depth, KC):
                slice_depth = min(KC, depth - k0)
                _pack_b_block(b, k0, slice_depth, col0, width, b_panels)
                # Slices, not offsets: indices that start at 0 spare the loop a bounds fix-up.
                for a_first in range(0, n_a_panels, panels_per_row_block):
                    for j in range((width + NR - 1) // NR):
                        b_panel = b_panels[j, :slice_depth]
                        for i in range(a_first, min(a_first + panels_per_row_block, n_a_panels)):
                            _micro_kernel(a_panels[i, k0:k0 + slice_depth], b_panel, c,
                                          i * MR, col0 + j * NR, bias, k0 == 0)


def _block_cols(n_cols: int, n_workers: int) -> int:
    """Column-block width: whole panels of NR, at most NC_MAX, and a block count close to a
    multiple of the worker count, so that the workers get about as many columns each."""
    per_worker = -(-n_cols // n_workers)
    blocks_per_worker = -(-per_worker // NC_MAX)
    width = -(-n_cols // (n_workers * blocks_per_worker))
    return -(-width // NR) * NR


def matmul(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """a @ b (+ bias): (M, K) @ (K, N) -> (M, N) float32. b may be any strided view."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul needs (M, K) @ (K, N), got {a.shape} @ {b.shape}")
    n_rows, depth = a.shape
    n_cols = b.shape[1]
    bias = np.zeros(n_cols, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    c = np.empty((n_rows, n_cols), np.float32)
    if n_rows == 0 or n_cols == 0:
        return c
    if depth == 0:
        c[:] = bias
        return c
    a_panels = np.empty((-(-n_rows // MR), depth, MR), np.float32)
    pack_a(a, a_panels)
    n_workers = numba.get_num_threads()
    block_cols = _block_cols(n_cols, n_workers)
    b_blocks = np.empty((n_workers, block_cols // NR, KC, NR), np.float32)
    _matmul_kernel(a_panels, b, bias, c, b_blocks)
    return c


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x @ weight + bias for x: (..., in), weight: (in, out) -> (..., out), via `matmul`."""
    rows = x.reshape(-1, x.shape[-1])
    return matmul(rows, weight, bias).reshape(*x.shape[:-1], weight.shape[1])
