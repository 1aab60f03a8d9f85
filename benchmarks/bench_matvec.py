"""The decoding step's matrix products, kernel by kernel: GPT-2 124M's 48 block matrices (random
weights) multiplied by M rows of x, each variant timed in interleaved rounds, medians.

    python benchmarks/bench_matvec.py                 # M = 1, 4, 16
    python benchmarks/bench_matvec.py --rows 1 2 8 --rounds 15

Variants (minillm.kernels.matvec_cpu unless said otherwise):
  blas            x @ W (in, out) through NumPy's OpenBLAS (a transposed copy for the narrowing
                  (3072, 768) weight at M = 1, as NumbaBackend does)
  float32 W^T     the float32 matrix-vector kernel on W^T (out, in)
  float32 packed  minillm.kernels.matmul_packed_cpu's 4 x 16 register tile on W packed into
                  16-column panels: batched float32 decoding's path
  float16         W^T in float16, widened in registers
  int8 per row    one scale per output channel (the default)
  int8 block 128  one scale per 128 inputs
  int8 block 32   one scale per 32 inputs (llama.cpp's q8_0 grouping)

Ratios are against `blas`, in the same process, rounds interleaved (a busy machine slows all alike).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from minillm.kernels import matmul_packed_cpu, matvec_cpu
from minillm.model.quantize import quantize

C = 768
SHAPES = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * 12    # (in, out): qkv, proj, fc, mlp proj
# Untimed pause between variants: OpenBLAS's idle threads spin for ~0.1 s (2^28 cycles) after a
# call, and OpenMP's (numba's) spin too; either would slow the next variant's threads.
IDLE_SPIN_S = 0.3


def variants(n_threads: int) -> dict:
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(s, dtype=np.float32) * np.float32(0.02) for s in SHAPES]
    w_t = [np.ascontiguousarray(w.T) for w in weights]                  # (out, in)

    def blas(xs):
        for w, wt, x in zip(weights, w_t, xs):
            narrowing_row = x.shape[0] == 1 and w.shape[1] < w.shape[0]
            wt @ x[0] if narrowing_row else x @ w

    def kernel(stored):
        def run(xs):
            for w, x in zip(stored, xs):
                matvec_cpu.matvec(w, x, None, n_threads)
        return run, sum(w.nbytes for w in stored)

    runs = {"blas": (blas, sum(w.nbytes for w in weights))}
    runs["float32 W^T"] = kernel(w_t)
    panels = [matmul_packed_cpu.pack_weight(w) for w in weights]

    def packed(xs):
        for p, w, x in zip(panels, weights, xs):
            matmul_packed_cpu.matmul_packed(x, p, w.shape[1], None, n_threads)

    runs["float32 packed"] = (packed, sum(p.nbytes for p in panels))
    runs["float16"] = kernel([quantize(w, "float16") for w in w_t])
    runs["int8 per row"] = kernel([quantize(w, "int8") for w in w_t])
    runs["int8 block 128"] = kernel([quantize(w, "int8", block=128) for w in w_t])
    runs["int8 block 32"] = kernel([quantize(w, "int8", block=32) for w in w_t])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16], help="rows of x (M)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    runs = variants(args.threads)
    rng = np.random.default_rng(1)
    print(f"GPT-2 124M's 48 block matrices, {args.threads} threads, median of {args.rounds} "
          f"interleaved rounds; GB/s = bytes of weights read / time")
    for n_rows in args.rows:
        xs = [rng.standard_normal((n_rows, s[0]), dtype=np.float32) for s in SHAPES]
        times = {name: [] for name in runs}
        for run, _ in runs.values():
            run(xs)                                                     # compile, warm up
        for _ in range(args.rounds):
            for name, (run, _) in runs.items():
                start = time.perf_counter()
                run(xs)
                times[name].append(time.perf_counter() - start)
                time.sleep(IDLE_SPIN_S)     # let the last variant's idle threads go to sleep
        base = np.median(times["blas"])
        print(f"\nM = {n_rows}")
        for name, (_, nbytes) in runs.items():
            t = np.median(times[name])
            print(f"  {name:15s} {t * 1e3:7.2f} ms {nbytes / t / 1e9:6.1f} GB/s  {base / t:5.2f}x blas")


if __name__ == "__main__":
    main()
