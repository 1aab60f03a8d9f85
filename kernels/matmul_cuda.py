"""Shared-memory tiled matrix multiply on an NVIDIA GPU, with numba.cuda.

    C = A @ B + bias        A: (M, K), B: (K, N), bias: (N,), C: (M, N) float32, device arrays

Reference: `x @ w` (NumPy), `reference` below; tests/test_kernels_cuda.py compares the two, on
the GPU when there is one and in numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) when not.

Each block of TILE x TILE threads computes one TILE x TILE tile of C, one element per thread.
Walking k in steps of TILE, the block first copies a TILE x TILE tile of A and one of B from
global memory into shared memory, each thread fetching one element of each (neighbouring
threads fetch neighbouring addresses, so the reads coalesce), waits at a barrier, then every
thread takes its row of the A tile dot its column of the B tile, and waits again before the
tiles are overwritten. Every element of A and B is read from global memory N/TILE and M/TILE
times instead of N and M times: the point of the tiling. Threads past the edge of A or B load
zeros, so any shape works.

Memory: 2 TILE^2 floats of shared memory per block, nothing else beyond C.

This is the textbook kernel (Kirk & Hwu, "Programming Massively Parallel Processors", ch. 5).
cuBLAS is several times faster: each thread computes a register tile of outputs, tiles are
double-buffered so loads overlap the arithmetic, and it uses tensor cores.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

TILE = 16


def reference(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """What `matmul_kernel` computes, the NumPy (BLAS) way."""
    return a @ b if bias is None else a @ b + bias


@cuda.jit
def matmul_kernel(a, b, bias, c):
    """c = a @ b + bias for device arrays; launch with blocks of (TILE, TILE) threads and a grid
    of (ceil(N / TILE), ceil(M / TILE)) blocks (see `launch_matmul`)."""
    a_tile = cuda.shared.array((TILE, TILE), float32)
    b_tile = cuda.shared.array((TILE, TILE), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty      # threadIdx.x runs along a row of C: coalesced access
    col = cuda.blockIdx.x * TILE + tx
    n_rows, depth = a.shape
    n_cols = b.shape[1]
    total = float32(0.0)
    for k0 in range(0, depth, TILE):
        a_tile[ty, tx] = a[row, k0 + tx] if row < n_rows and k0 + tx < depth else float32(0.0)
        b_tile[ty, tx] = b[k0 + ty, col] if k0 + ty < depth and col < n_cols else float32(0.0)
        cuda.syncthreads()                 # the tiles are complete
        for k in range(TILE):
            total += a_tile[ty, k] * b_tile[k, tx]
        cuda.syncthreads()                 # everyone is done with them before the next load
    if row < n_rows and col < n_cols:
        c[row, col] = total + bias[col]


def launch_matmul(a, b, bias, c) -> None:
    """Run `matmul_kernel` over all of c (device arrays)."""
    n_rows, n_cols = c.shape
    grid = (math.ceil(n_cols / TILE), math.ceil(n_rows / TILE))
    matmul_kernel[grid, (TILE, TILE)](a, b, bias, c)
