"""Benchmark the numba kernels against the NumPy references, in one process.

    python benchmarks/bench_kernels.py [--repeats 3] [--lengths 128 512 1024] [--skip-model]
                                       [--threads N] [--cpu-time]

Prints, at T = 128 / 512 / 1024 (batch 1):
1. attention, 12 heads of 64: the staged kernels (attention_cpu_v1, _v2, and the fused
   attention_cpu) vs minillm.model.attention.causal_attention: time, and for the reference and
   the fused kernel peak extra memory (tracemalloc: beyond the output; numba allocates through
   CPython, so its allocations count too). Target: fused >= 2x faster at T = 1024. Then decode
   (one query, T = 128 and 1024 keys): the reference, the fused decode kernel, and the
   decoding-step kernel's attention (decode_step_cpu) against the fused decode kernel.
2. matmul: the numba kernel's GFLOPS vs NumPy's BLAS on GPT-2 124M's shapes, x (T, 768) times
   the qkv (768, 2304), MLP (768, 3072) and (3072, 768) weights and the tied LM head wte.T
   (768, 50257), a transposed view. Target: >= 50% of BLAS. Beside them, for the block
   weights, prompts' 6 x 16 tile on the weight packed once (matmul_packed_cpu.matmul_prompt,
   numba's threads), which the numba backend runs for prompts of 2 to 383 rows, and on a CPU
   with AVX-512 the 6 x 64 tile of 16-float vectors (matmul_prompt_avx512), which it runs there.
3. the fused one-pass kernels (minillm.kernels.fused_cpu) vs their NumPy references on one
   thread, at T = 64 and 256 rows: GELU and its backward on the MLP's (T, 3072), LayerNorm
   and its backward on (T, 768), cross-entropy and its gradient on (T, 50257) logits.
4. whole-model prefill of GPT-2 124M (random weights) per backend: numpy, numba, numba with
   prompts' products on OpenBLAS instead (prompt_kernel=False), on a CPU with AVX-512 numba
   with the AVX2 prompt tile instead of the AVX-512 one (prompt_tile="avx2"), numba with the
   numba matmul too, and cuda if there is a GPU.

Every ratio compares runs made in this process, kernel and baseline interleaved, best of
--repeats. Threads: the numba kernels use numba.get_num_threads() (the attention kernel on a
WorkerPool of that many threads) and BLAS its own default (usually all cores), unless --threads
sets both. On a machine shared with other work, wall times with
several threads mostly measure the neighbours; `--threads 1 --cpu-time` compares the work
itself (process CPU time, which does not count time spent waiting for a core).
"""
from __future__ import annotations

import argparse
import os
import time
import tracemalloc


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case, best kept")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024],
                        help="sequence lengths T")
    parser.add_argument("--skip-model", action="store_true", help="skip the whole-model prefill")
    parser.add_argument("--threads", type=int, default=None, help="threads for numba and BLAS")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with process CPU time, not wall time (use with --threads 1)")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else parse_args([])
if ARGS.threads:        # BLAS and numba read these once, when they are first imported
    for library in ("NUMBA", "OPENBLAS", "OMP", "MKL"):
        os.environ[f"{library}_NUM_THREADS"] = str(ARGS.threads)
clock = time.process_time if ARGS.cpu_time else time.perf_counter

import numba  # noqa: E402
import numpy as np  # noqa: E402

from minillm.inference.kv_cache import KVCache  # noqa: E402
from minillm.kernels import attention_cpu_v1, attention_cpu_v2  # noqa: E402
from minillm.kernels.attention_cpu import flash_attention  # noqa: E402
from minillm.kernels import decode_step_cpu, fused_cpu  # noqa: E402
from minillm.kernels.backend import NumbaBackend, cuda_unavailable_reason  # noqa: E402
from minillm.kernels.matmul_cpu import matmul  # noqa: E402
from minillm.kernels.matmul_packed_cpu import matmul_prompt, pack_weight  # noqa: E402
from minillm.kernels.matmul_prompt_avx512 import HOST_HAS_AVX512, matmul_prompt_avx512  # noqa: E402
from minillm.kernels.workers import WorkerPool  # noqa: E402
from minillm.model.attention import causal_attention, split_heads  # noqa: E402
from minillm.model.config import GPT2_SIZES  # noqa: E402
from minillm.model import layers, loss  # noqa: E402
from minillm.model.gpt2 import GPT2  # noqa: E402
from minillm.model.params import random_params  # noqa: E402

N_HEADS, HEAD_DIM, WIDTH, VOCAB = 12, 64, 768, 50257
ATTENTION_TARGET = 2.0       # fused speed-up over the reference at T = 1024
MATMUL_TARGET = 0.5          # fraction of BLAS GFLOPS


def best_times(functions, repeats: int) -> list[float]:
    """Best time (wall or CPU clock) of each function, run in turn `repeats` times after warm-up."""
    for fn in functions:
        fn()
    times = [[] for _ in functions]
    for _ in range(repeats):
        for fn, runs in zip(functions, times):
            start = clock()
            fn()
            runs.append(clock() - start)
    return [min(runs) for runs in times]


def peak_extra_bytes(fn) -> int:
    """Peak bytes allocated while fn() runs, beyond the array it returns."""
    tracemalloc.start()
    try:
        out = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - out.nbytes


def mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:8.2f} MiB"


# ---- 1. attention -------------------------------------------------------------------------------
def bench_attention(lengths, repeats, rng, pool) -> float:
    print(f"\n1. Causal attention, B=1, {N_HEADS} heads x {HEAD_DIM}: the staged kernels "
          "(v1 loops, v2 online softmax, v3 fused and tiled) vs the NumPy reference")
    print(f"{'T':>6} {'reference':>12} {'v1':>10} {'v2':>10} {'v3 fused':>10} {'speed-up':>9}   "
          f"{'ref. memory':>12} {'fused memory':>13}")
    speedup = 0.0
    for T in lengths:
        qkv = rng.standard_normal((1, T, 3 * WIDTH), dtype=np.float32)     # as the model makes them
        q, k, v = (split_heads(part, N_HEADS) for part in np.split(qkv, 3, axis=-1))
        t_ref, t_v1, t_v2, t_fused = best_times([lambda: causal_attention(q, k, v),
                                                 lambda: attention_cpu_v1.attention(q, k, v),
                                                 lambda: attention_cpu_v2.attention(q, k, v),
                                                 lambda: flash_attention(q, k, v, pool=pool)], repeats)
        m_ref = peak_extra_bytes(lambda: causal_attention(q, k, v))
        m_fused = peak_extra_bytes(lambda: flash_attention(q, k, v, pool=pool))
        speedup = t_ref / t_fused
        print(f"{T:>6} {t_ref * 1e3:>9.1f} ms {t_v1 * 1e3:>7.1f} ms {t_v2 * 1e3:>7.1f} ms "
              f"{t_fused * 1e3:>7.1f} ms {speedup:>8.2f}x   {mib(m_ref):>12} {mib(m_fused):>13}")
    return speedup


def bench_decode(repeats, rng) -> None:
    threads = numba.get_num_threads()
    print(f"\n   decode (one query against a KV cache of T keys): one thread, as NumbaBackend runs it "
          f"after OpenBLAS's matmuls, and {threads} of numba's threads, as after numba's "
          f"(quantised weights, batched float32):")
    for T in (128, 1024):
        cache = KVCache(n_layer=1, batch_size=1, n_head=N_HEADS, head_dim=HEAD_DIM, max_len=1024)
        new_keys = rng.standard_normal((1, N_HEADS, T, HEAD_DIM), dtype=np.float32)
        k, v = cache.update(0, new_keys, new_keys * 2)                     # views of the cache
        q = rng.standard_normal((1, N_HEADS, 1, HEAD_DIM), dtype=np.float32)
        t_ref, t_fused, t_threads = best_times(
            [lambda: causal_attention(q, k, v), lambda: flash_attention(q, k, v),
             lambda: flash_attention(q, k, v, decode_threads=threads)], max(repeats, 20))
        print(f"{T:>6} {t_ref * 1e6:>9.0f} us {t_fused * 1e6:>7.0f} us {t_ref / t_fused:>8.2f}x"
              f"   {threads} threads: {t_threads * 1e6:.0f} us, {t_ref / t_threads:.2f}x")
        t_fused, t_step = best_times([lambda: flash_attention(q, k, v),
                                      step_attention(q, new_keys, T)], max(repeats, 20))
        print(f"{'':>6} the decoding-step kernel's attention (decode_step_cpu), one thread: "
              f"{t_step * 1e6:.0f} us against the fused kernel's {t_fused * 1e6:.0f} us "
              f"(alternating), {t_fused / t_step:.2f}x its speed")


@numba.njit(nogil=True)
def _attend_every_head(qkv, keys, values, position, att, scores, q_row):
    for head in range(keys.shape[1]):
        decode_step_cpu._attend_head(qkv, keys, values, 0, head, position, att, scores, q_row)


def step_attention(q, keys, T):
    """The step kernel's attention of one layer, every head in one call: the query and the new
    position's key and value from a (3C,) qkv row, T keys in all, as in bench_decode."""
    qkv = np.concatenate([q.reshape(-1), keys[:, :, -1].reshape(-1), 2 * keys[:, :, -1].reshape(-1)])
    cache_k, cache_v = keys.copy(), 2 * keys
    att, scores, q_row = (np.empty(n, np.float32) for n in (WIDTH, T, HEAD_DIM))
    return lambda: _attend_every_head(qkv, cache_k, cache_v, T - 1, att, scores, q_row)


# ---- 2. matmul ----------------------------------------------------------------------------------
def bench_matmul(lengths, repeats, rng) -> float:
    threads = numba.get_num_threads()
    print("\n2. Matmul: numba tiled kernel vs NumPy BLAS (GFLOPS); prompts' tile on packed panels"
          + ("; the AVX-512 prompt tile" if HOST_HAS_AVX512 else " (no AVX-512 here)"))
    print(f"{'T':>6} {'weight':>22} {'BLAS':>8} {'numba':>8} {'numba/BLAS':>11} {'prompt':>8} "
          f"{'prompt/BLAS':>12}" + (f" {'avx512':>8} {'avx512/BLAS':>12}" if HOST_HAS_AVX512 else ""))
    weights = {
        "qkv (768, 2304)": rng.standard_normal((WIDTH, 3 * WIDTH), dtype=np.float32),
        "mlp fc (768, 3072)": rng.standard_normal((WIDTH, 4 * WIDTH), dtype=np.float32),
        "mlp proj (3072, 768)": rng.standard_normal((4 * WIDTH, WIDTH), dtype=np.float32),
        "LM head wte.T": rng.standard_normal((VOCAB, WIDTH), dtype=np.float32).T,
    }
    ratios = []
    for T in lengths:
        for name, w in weights.items():
            x = rng.standard_normal((T, w.shape[0]), dtype=np.float32)
            kernels = [lambda: x @ w, lambda: matmul(x, w)]
            if w.flags.c_contiguous:                      # a block weight: packed as the backend does
                panels = pack_weight(w)
                kernels.append(lambda: matmul_prompt(x, panels, w.shape[1], None, threads))
                if HOST_HAS_AVX512:
                    kernels.append(lambda: matmul_prompt_avx512(x, panels, w.shape[1], None, threads))
            times = best_times(kernels, repeats)
            gflop = 2 * T * w.shape[0] * w.shape[1] / 1e9
            ratios.append(times[0] / times[1])
            tiles = ("".join(f"{gflop / t:>8.1f} {times[0] / t:>11.0%} " for t in times[2:])
                     or f"{'-':>8} {'-':>12}")                # the LM head: no prompt tile
            print(f"{T:>6} {name:>22} {gflop / times[0]:>8.1f} {gflop / times[1]:>8.1f} "
                  f"{ratios[-1]:>10.0%} {tiles}")
    mean = np.exp(np.mean(np.log(ratios)))
    print(f"   geometric mean: {mean:.0%} of BLAS, worst {min(ratios):.0%}")
    return min(ratios)


# ---- 3. fused kernels ---------------------------------------------------------------------------
def bench_fused(repeats, rng) -> None:
    print("\n3. fused kernels, one thread: NumPy reference vs numba kernel")
    print(f"{'kernel':>22} {'T':>5} {'reference':>11} {'numba':>10} {'speed-up':>9}")
    for T in (64, 256):
        h = rng.standard_normal((T, 4 * WIDTH), dtype=np.float32)
        dh = rng.standard_normal(h.shape, dtype=np.float32)
        x = rng.standard_normal((T, WIDTH), dtype=np.float32)
        dx = rng.standard_normal(x.shape, dtype=np.float32)
        gain, bias = rng.standard_normal(WIDTH, dtype=np.float32), rng.standard_normal(WIDTH, dtype=np.float32)
        logits = rng.standard_normal((T, VOCAB), dtype=np.float32)
        targets = rng.integers(0, VOCAB, T)
        cases = {"gelu": (lambda: layers.gelu(h), lambda: fused_cpu.gelu(h)),
                 "gelu backward": (lambda: layers.gelu_backward(dh, h),
                                   lambda: fused_cpu.gelu_backward(dh, h)),
                 "layer norm": (lambda: layers.layer_norm(x, gain, bias),
                                lambda: fused_cpu.layer_norm(x, gain, bias)),
                 "layer norm backward": (lambda: layers.layer_norm_backward(dx, x, gain),
                                         lambda: fused_cpu.layer_norm_backward(dx, x, gain)),
                 "cross-entropy": (lambda: loss.cross_entropy(logits, targets),
                                   lambda: fused_cpu.cross_entropy(logits, targets))}
        for name, (reference, kernel) in cases.items():
            t_ref, t_kernel = best_times([reference, kernel], max(repeats, 20))
            print(f"{name:>22} {T:>5} {t_ref * 1e3:>8.3f} ms {t_kernel * 1e3:>7.3f} ms "
                  f"{t_ref / t_kernel:>8.2f}x")


# ---- 4. whole model -----------------------------------------------------------------------------
def bench_model(lengths, repeats) -> None:
    config = GPT2_SIZES["gpt2"]
    params = random_params(config)
    backends = {"numpy": "numpy", "numba": NumbaBackend(),
                "numba, BLAS prompts": NumbaBackend(prompt_kernel=False),
                **({"numba, AVX2 prompt tile": NumbaBackend(prompt_tile="avx2")}
                   if HOST_HAS_AVX512 else {}),
                "numba, numba matmul": NumbaBackend(matmul="numba")}
    if cuda_unavailable_reason() is None and not numba.config.ENABLE_CUDASIM:
        from minillm.kernels.backend import CudaBackend

        backends["cuda"] = CudaBackend()
        backends["cuda"].prepare(params)
    else:
        print("\n   (no CUDA GPU: the cuda backend is not timed)")
    models = {name: GPT2(config, params, backend=backend) for name, backend in backends.items()}
    print("\n4. Prefill of GPT-2 124M (random weights), B=1, per backend: a KV cache and the last "
          "position's logits (seconds; speed-up vs numpy)")
    print(f"{'T':>6} " + " ".join(f"{name:>22}" for name in models))
    rng = np.random.default_rng(0)

    def prefill(model, ids):
        model.forward(ids, cache=KVCache.for_model(config, 1, ids.shape[1]), last_only=True)

    for T in lengths:
        ids = rng.integers(0, config.vocab_size, (1, T))
        times = best_times([lambda m=m: prefill(m, ids) for m in models.values()], repeats)
        cells = [f"{t:>8.2f} s ({times[0] / t:>4.2f}x)" for t in times]
        print(f"{T:>6} " + " ".join(f"{cell:>22}" for cell in cells))


def main(args: argparse.Namespace) -> None:
    print(f"numba {numba.__version__}, numpy {np.__version__}, "
          f"numba threads: {numba.get_num_threads()}, BLAS threads: {args.threads or 'default'}, "
          f"clock: {'CPU' if args.cpu_time else 'wall'}")
    rng = np.random.default_rng(0)
    pool = WorkerPool(numba.get_num_threads())         # the attention kernel's threads
    speedup = bench_attention(args.lengths, args.repeats, rng, pool)
    bench_decode(args.repeats, rng)
    matmul_ratio = bench_matmul(args.lengths, args.repeats, rng)
    bench_fused(args.repeats, rng)
    if not args.skip_model:
        bench_model(args.lengths, args.repeats)

    print("\nTargets:")
    print(f"   fused attention >= {ATTENTION_TARGET:.0f}x the reference at T = {args.lengths[-1]}: "
          f"{speedup:.2f}x  {'met' if speedup >= ATTENTION_TARGET else 'MISSED'}")
    print(f"   numba matmul >= {MATMUL_TARGET:.0%} of BLAS on every shape: "
          f"worst {matmul_ratio:.0%}  "
          f"{'met' if matmul_ratio >= MATMUL_TARGET else 'MISSED'}")


if __name__ == "__main__":
    main(ARGS)
