"""Where the time goes in GPT-2 124M (random weights): time per kind of operation, for a
1024-token prefill and for one decoding step, plus the machine's own limits.

    python benchmarks/profile_model.py                    # numba backend if present, else numpy
    python benchmarks/profile_model.py --backend numpy --prefill 256

Every operation the model runs is timed where it is called: each backend method (the matmuls,
told apart by their weight's shape; attention; LayerNorm and GELU), the embedding lookup, the
KV-cache writes and the head split/merge. "other" is the forward pass's wall time minus all of
those: residual adds, slicing, Python. Each figure is from the fastest of --repeats runs.

The machine's limits come first: sgemm GFLOPS on the MLP's shape (a floor for prefill: its
matmuls are ~2 x 85M x T FLOPs) and the bandwidth of a matrix-vector product over a
weights-sized matrix (a floor for decoding: every step reads all 500 MB of float32 weights).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict

import numpy as np

from minillm.inference.kv_cache import KVCache
from minillm.model.config import GPT2Config
import minillm.model.gpt2
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params
from minillm.model.quantize import DTYPES, linear_weight_shape, weight_bytes
from timing import best_time  # benchmarks/timing.py

DECODE_PROMPT_LEN = 16
DECODE_STEPS = 128


class OpClock:
    """Seconds and calls per operation name."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)

    def timed(self, name, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1
            return result
        return run


def matmul_names(config: GPT2Config) -> dict[tuple[int, int], str]:
    """Weight shape (in, out) -> which matmul it is."""
    C, V = config.n_embd, config.vocab_size
    return {(C, 3 * C): "qkv matmul", (C, C): "attn proj matmul", (C, 4 * C): "fc matmul",
            (4 * C, C): "mlp proj matmul", (C, V): "LM head"}


class TimedBackend:
    """Forwards every call to `backend`, timing it under the operation's name."""

    def __init__(self, backend, clock: OpClock, config: GPT2Config):
        self._backend, self._clock, self._names = backend, clock, matmul_names(config)
        self.name = backend.name

    def linear(self, x, weight, bias=None):
        name = self._names.get(linear_weight_shape(weight), "other matmul")
        return self._clock.timed(name, self._backend.linear)(x, weight, bias)

    def decode_step(self, *args):
        """A whole decoding step as one kernel, where the backend runs one: one operation."""
        step = getattr(self._backend, "decode_step", None)
        start = time.perf_counter()
        logits = None if step is None else step(*args)
        if logits is not None:                        # None: the model runs its layers instead
            self._clock.seconds["decode step"] += time.perf_counter() - start
            self._clock.calls["decode step"] += 1
        return logits

    def __getattr__(self, method):
        """attention, layer_norm, gelu, ...: timed under their own name."""
        return self._clock.timed(method.replace("_", " "), getattr(self._backend, method))


@contextlib.contextmanager
def timing(model: GPT2, clock: OpClock):
    """Time every operation of `model` into `clock` while inside the block."""
    patches = [(minillm.model.gpt2, "split_heads", "head split/merge"),
               (minillm.model.gpt2, "merge_heads", "head split/merge"),
               (KVCache, "update", "cache write"),
               (GPT2, "_embed", "embedding")]
    originals = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    backend = model.backend
    try:
        for owner, attr, name in patches:
            setattr(owner, attr, clock.timed(name, getattr(owner, attr)))
        model.backend = TimedBackend(backend, clock, model.config)
        yield
    finally:
        model.backend = backend
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)


def profile(run, model: GPT2, repeats: int, per: int = 1) -> tuple[float, OpClock]:
    """The fastest of `repeats` runs: (seconds, its clock), both divided by `per`."""
    run()                                           # warm-up: JIT compilation, page faults
    best = None
    for _ in range(repeats):
        clock = OpClock()
        with timing(model, clock):
            start = time.perf_counter()
            run()
            total = time.perf_counter() - start
        if best is None or total < best[0]:
            best = (total, clock)
    total, clock = best
    for name in clock.seconds:
        clock.seconds[name] /= per
        clock.calls[name] //= per
    return total / per, clock


def print_profile(title: str, total: float, clock: OpClock) -> None:
    other = total - sum(clock.seconds.values())
    rows = sorted(clock.seconds.items(), key=lambda kv: -kv[1]) + [("other", other)]
    print(f"\n{title}: {total * 1e3:.2f} ms")
    print(f"  {'operation':<18} {'ms':>9} {'share':>7} {'calls':>6}")
    for name, seconds in rows:
        calls = clock.calls.get(name, "")
        print(f"  {name:<18} {seconds * 1e3:>9.3f} {seconds / total:>7.1%} {calls:>6}")


def profile_prefill(model: GPT2, T: int, repeats: int) -> None:
    ids = np.random.default_rng(T).integers(0, model.config.vocab_size, (1, T))

    def prefill():
        cache = KVCache.for_model(model.config, 1, max_len=T)
        model.forward(ids, cache=cache, last_only=True)

    print_profile(f"prefill, T = {T} (cache + last position's logits)",
                  *profile(prefill, model, repeats))


def profile_decode(model: GPT2, repeats: int) -> None:
    """Mean time per step of DECODE_STEPS greedy-sized steps after a DECODE_PROMPT_LEN prompt."""
    config = model.config
    prompt = np.random.default_rng(1).integers(0, config.vocab_size, (1, DECODE_PROMPT_LEN))
    steps = np.random.default_rng(2).integers(0, config.vocab_size, (DECODE_STEPS, 1, 1))
    cache = KVCache.for_model(config, 1, max_len=DECODE_PROMPT_LEN + DECODE_STEPS)
    model.forward(prompt, cache=cache, last_only=True)          # the prompt, not timed

    def decode():
        cache.length = DECODE_PROMPT_LEN                         # steps overwrite the same slots
        for ids in steps:
            model.forward(ids, cache=cache, last_only=True)

    title = (f"decode step (mean of {DECODE_STEPS}, context {DECODE_PROMPT_LEN + 1}-"
             f"{DECODE_PROMPT_LEN + DECODE_STEPS} tokens)")
    backend = model.backend
    if not getattr(backend, "whole_step", False):
        print_profile(title, *profile(decode, model, repeats, per=DECODE_STEPS))
        return
    # The numba backend runs a step as one kernel (kernels/decode_step_cpu.py): time that, then
    # the same steps operation by operation for the table.
    whole = profile(decode, model, repeats, per=DECODE_STEPS)[0]
    backend.whole_step = False
    try:
        total, clock = profile(decode, model, repeats, per=DECODE_STEPS)
    finally:
        backend.whole_step = True
    print_profile(title + ", operation by operation (whole_step=False)", total, clock)
    print(f"  as one kernel (decode_step_cpu, the default): {whole * 1e3:.3f} ms, "
          f"{total / whole:.2f}x the above")


# ------------------------------------------------------------------------------------ machine
def print_machine_limits(config: GPT2Config, repeats: int) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, config.n_embd), dtype=np.float32)
    w = rng.standard_normal((config.n_embd, 4 * config.n_embd), dtype=np.float32)
    gflops = 2 * a.shape[0] * w.size / best_time(lambda: a @ w, repeats) / 1e9
    C = config.n_embd
    weights = rng.standard_normal((config.n_params() // C, C), dtype=np.float32)   # ~all of them
    x, copy = rng.standard_normal(C, dtype=np.float32), weights.copy()    # copy: pages touched
    read_gbs = weights.nbytes / best_time(lambda: weights @ x, repeats) / 1e9
    copy_gbs = 2 * weights.nbytes / best_time(lambda: np.copyto(copy, weights), repeats) / 1e9
    matmul_flops = 2 * (config.n_params() - config.vocab_size * config.n_embd
                        - config.n_positions * config.n_embd) * 1024
    print(f"machine: sgemm (1024 x {config.n_embd} x {4 * config.n_embd}) {gflops:.0f} GFLOPS "
          f"-> T = 1024 prefill matmuls >= {matmul_flops / gflops / 1e9 * 1e3:.0f} ms")
    print(f"         reading {weights.nbytes / 1e6:.0f} MB (matrix-vector product): "
          f"{read_gbs:.1f} GB/s; copy: {copy_gbs:.1f} GB/s (read + write) -> decoding <= "
          f"{read_gbs * 1e9 / weights.nbytes:.0f} tokens/s in float32")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=None, help="default: numba if present, else numpy")
    parser.add_argument("--prefill", type=int, default=1024, help="prefill length T")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="how the weights are held")
    args = parser.parse_args(argv)
    backend = args.backend
    if backend is None:
        try:
            import minillm.kernels.backend  # noqa: F401
            backend = "numba"
        except ImportError:
            backend = "numpy"

    config = GPT2Config()
    print_machine_limits(config, args.repeats)
    model = GPT2(config, random_params(config, seed=0), backend=backend).quantized(args.dtype)
    print(f"backend: {model.backend.name}, weights {args.dtype} ({weight_bytes(model.params) / 1e6:.0f} MB)")
    profile_prefill(model, args.prefill, args.repeats)
    profile_decode(model, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
