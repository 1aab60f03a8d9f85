"""Inference speed of the 124M GPT-2 shape (random weights): prefill, and decoding with the KV
cache against recomputing the whole sequence for every token.

    python benchmarks/bench_inference.py                    # numpy backend
    python benchmarks/bench_inference.py --backend numba    # once the numba kernels exist
    python benchmarks/bench_inference.py --quick            # smaller run, for a smoke test
    python benchmarks/bench_inference.py --backend numba --batch 1 4 16 --no-baseline
    python benchmarks/bench_inference.py --backend numba --dtype float16 --prefill 64 --no-baseline

Prefill = one forward pass over a T-token prompt into an empty cache, logits of the last position
only. Decode = tokens/s after the first token (greedy), 16-token prompt + 128 new tokens by
default; with --batch, for B same-length prompts decoded together (tokens/s counts all B rows).
The baseline runs the same loop with use_cache=False: every step re-runs the prompt and all
tokens so far through every layer (batch 1). Times are the best of --repeats runs.
On the numba backend, each batch is also decoded operation by operation (whole_step=False), in
rounds interleaved with the default (each step one call of kernels/decode_step_cpu.py, for
batches up to the backend's WHOLE_STEP_MAX_SEQUENCES); float32 batches on a CPU with AVX-512,
whose whole step reads the packed copies, also with the whole step on W (the column kernel).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from minillm.inference.generate import generate_steps
from minillm.inference.kv_cache import KVCache
from minillm.model.backends import get_backend
from minillm.model.config import GPT2_SIZES
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params
from minillm.model.quantize import DTYPES, lm_head_weight
from timing import best_time, interleaved_rounds     # benchmarks/timing.py, beside this script

try:                                          # numba is optional: the numpy backend runs without it
    from minillm.kernels.backend import WHOLE_STEP_PANELS_MIN_SEQUENCES, NumbaBackend
except ImportError:
    WHOLE_STEP_PANELS_MIN_SEQUENCES, NumbaBackend = None, None


def prefill_seconds(model: GPT2, T: int, repeats: int) -> float:
    ids = np.random.default_rng(T).integers(0, model.config.vocab_size, (1, T))

    def prefill():
        cache = KVCache.for_model(model.config, 1, T)
        model.forward(ids, cache=cache, last_only=True)

    return best_time(prefill, repeats)


def lm_head_seconds(model: GPT2, T: int, repeats: int) -> float:
    """What computing logits for all T prompt positions would add to a prefill."""
    x = np.random.default_rng(0).standard_normal((1, T, model.config.n_embd)).astype(np.float32)
    return best_time(lambda: model.backend.linear(x, lm_head_weight(model.params.wte)), repeats)


def decode_tokens_per_second(model: GPT2, prompt_len: int, n_new: int, use_cache: bool, repeats: int,
                             batch: int = 1) -> float:
    """Greedy tokens/s after the first token (which the prefill produces), over all `batch`
    sequences: a (prompt_len,) prompt for batch 1, (batch, prompt_len) otherwise."""
    shape = (prompt_len,) if batch == 1 else (batch, prompt_len)
    prompt = np.random.default_rng(1).integers(0, model.config.vocab_size, shape)

    def decode_seconds():
        steps = generate_steps(model, prompt, n_new, use_cache=use_cache)
        next(steps)                                     # prefill + first token: not timed
        start = time.perf_counter()
        for _ in steps:
            pass
        return time.perf_counter() - start

    return batch * (n_new - 1) / min(decode_seconds() for _ in range(repeats))


def compare_whole_step(model: GPT2, prompt_len: int, n_new: int, rounds: int, batch: int) -> None:
    """A batch decoded with each step one kernel call (the default) and operation by
    operation, in interleaved rounds: tokens/s of each, median (best), and their ratio. Where
    the whole step reads float32 batches from the packed copies (a CPU with AVX-512), it is
    also run on W as the model holds it (the column kernel, as without AVX-512)."""
    backend = model.backend
    variants = {"each step one kernel call": (model, True), "operation by operation": (model, False)}
    if (backend.prompt_tile == "avx512" and isinstance(model.params.wte, np.ndarray)
            and batch >= WHOLE_STEP_PANELS_MIN_SEQUENCES):
        on_w = GPT2(model.config, model.params,
                    backend=NumbaBackend(threads=backend.pool.n_threads, prompt_tile="avx2"))
        variants["the whole step on W"] = (on_w, True)

    def run(runner: GPT2, whole_step: bool) -> float:
        runner.backend.whole_step = whole_step
        return decode_tokens_per_second(runner, prompt_len, n_new, True, 1, batch)

    try:
        rates = interleaved_rounds({name: lambda v=v: run(*v) for name, v in variants.items()},
                                   rounds)
    finally:
        backend.whole_step = True
    default = statistics.median(rates["each step one kernel call"])
    print(f"  batch {batch:2d} (medians (best) of {rounds} interleaved rounds, tokens/s): " + "; ".join(
        f"{name} {statistics.median(r):7.1f} ({max(r):.1f}) {default / statistics.median(r):.2f}x"
        for name, r in rates.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", help="numpy (default), numba or cuda")
    parser.add_argument("--size", default="gpt2", choices=list(GPT2_SIZES))
    parser.add_argument("--prefill", type=int, nargs="+", default=[64, 256, 1024], metavar="T")
    parser.add_argument("--prompt", type=int, default=16, help="decode: prompt tokens (default 16)")
    parser.add_argument("--new", type=int, default=128, help="decode: new tokens (default 128)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], metavar="B",
                        help="decode: sequences decoded together (default 1)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="how the weights are held")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="skip the slow full-recompute run")
    parser.add_argument("--quick", action="store_true", help="T = 64, 256; 16 + 32 tokens; 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.prefill, args.new, args.repeats = [64, 256], 32, 1

    try:
        backend = get_backend(args.backend)
    except (ImportError, AttributeError) as error:
        print(f"backend {args.backend!r} is not available: {error}", file=sys.stderr)
        return 2
    config = GPT2_SIZES[args.size]
    model = GPT2(config, random_params(config, seed=0), backend=backend).quantized(args.dtype)
    print(f"{args.size} shape ({config.n_params() / 1e6:.0f}M parameters, {config.n_layer} layers, "
          f"width {config.n_embd}), random {args.dtype} weights, backend {args.backend}, "
          f"{os.cpu_count()} CPUs")
    decode_tokens_per_second(model, 4, 3, True, 1)     # warm-up: first-touch of the weights

    print("prefill (prompt -> logits of the last position):")
    for T in args.prefill:
        seconds = prefill_seconds(model, T, args.repeats)
        head = lm_head_seconds(model, T, args.repeats)
        print(f"  T = {T:5d}: {seconds * 1e3:8.1f} ms  ({T / seconds:6.0f} tokens/s); the LM head on all "
              f"{T} positions would add {head * 1e3:.1f} ms")

    print(f"decode ({args.prompt}-token prompt + {args.new} new tokens, greedy, tokens/s after the first):")
    rates = {}
    for batch in args.batch:
        rates[batch] = decode_tokens_per_second(model, args.prompt, args.new, True, args.repeats, batch)
        print(f"  KV cache, batch {batch:2d}: {rates[batch]:7.1f} tokens/s  "
              f"({1e3 * batch / rates[batch]:6.1f} ms/step)")
    if getattr(model.backend, "whole_step", False):
        for batch in args.batch:
            compare_whole_step(model, args.prompt, args.new, args.repeats, batch)
    if not args.no_baseline:
        cached = rates.get(1) or decode_tokens_per_second(model, args.prompt, args.new, True, args.repeats)
        full = decode_tokens_per_second(model, args.prompt, args.new, False, 1)
        print(f"  full recompute:  {full:7.1f} tokens/s  ({1e3 / full:6.1f} ms/token; one run, it is slow)")
        print(f"  the cache is {cached / full:.1f}x faster (batch 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
