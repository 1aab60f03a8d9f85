"""Where the time goes in ONNX Runtime and in minillm, side by side, in one process.

    python benchmarks/profile_ort.py                     # prefill T = 64, 256, 1024 and decoding
    python benchmarks/profile_ort.py --lengths 64 --runs 9 --workdir /tmp/mbench

ONNX Runtime's own profiler (SessionOptions.enable_profiling) times every node it runs;
minillm is timed by profile_model.py's per-operation clock. Both run bench_engines.py's
random-weight GPT-2 124M (its model folder and ONNX graphs, made there if missing: needs the
`engines` extra) on --threads threads, and their operations are put in the same groups:

  weight products   the blocks' four linear layers: 48 products of (T, in) by a weight
  LM head           the last position times wte^T (all 154 MB of wte read)
  attention         minillm's fused kernel, its head split/merge and cache writes; in ORT the
                    graph's q k^T, mask (Where), softmax, p v, the K/V concatenation when
                    decoding, and the transposes / reshapes / split around them
  LayerNorm, GELU   ORT fuses GELU with its bias add (FastGelu)
  rest              the residual and bias adds, the embedding, shapes, slicing; and the time
                    between operations: ORT's executor, minillm's Python

One difference in the grouping: minillm's linear layers add their bias inside the product, so
its weight products include ~50 bias adds that ORT counts under "rest" (or in FastGelu).

Prefill: the median over --runs passes (after a warm-up) of each group. Decoding: the mean
over the 128 steps of greedy generation after a 16-token prompt (bench_engines.py's decode
case). The GFLOP/s (prefill) and GB/s (decoding) of the weight products are what the
engines' kernels reach on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

GROUPS = ("weight products", "LM head", "attention", "LayerNorm", "GELU", "rest")
MINILLM_GROUPS = {"qkv matmul": "weight products", "attn proj matmul": "weight products",
                  "fc matmul": "weight products", "mlp proj matmul": "weight products",
                  "LM head": "LM head", "attention": "attention", "head split/merge": "attention",
                  "cache write": "attention", "layer norm": "LayerNorm", "gelu": "GELU"}
ORT_ATTENTION_OPS = {"FusedMatMul", "Where", "Softmax", "Transpose", "Split", "Reshape", "Concat"}
DECODE_PROMPT_LEN, DECODE_STEPS = 16, 128


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="*", default=[64, 256, 1024],
                        help="prompt lengths T to profile the prefill at")
    parser.add_argument("--no-decode", action="store_true", help="skip the decoding profile")
    parser.add_argument("--runs", type=int, default=5, help="timed prefills per engine and T")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "minillm-bench",
                        help="bench_engines.py's work dir (model folder and ONNX graphs)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------ ORT
def ort_group(op: str, inputs: list[dict], outputs: list[dict], vocab_size: int) -> str:
    """The group of one ORT node, from its op type and the shapes its profile records.

    A product by an initializer (a weight) lists only its activation input; the attention's
    products (q k^T inside FusedMatMul, p v in MatMul) list both operands. Concat joins the
    past K/V with the new position's, and in the prefill graph also a few shape vectors."""
    if op == "MatMul" and len(inputs) == 1:
        shape = next(iter(outputs[0].values()))
        return "LM head" if shape[-1] == vocab_size else "weight products"
    if op == "MatMul" or op in ORT_ATTENTION_OPS:
        return "attention"
    if op == "LayerNormalization":
        return "LayerNorm"
    if op in ("FastGelu", "Gelu", "BiasGelu"):
        return "GELU"
    return "rest"


def ended_profile(engine, measured: str) -> list[dict]:
    """The events of `measured` ("prefill" or "decode"), from ending the profiles of both of
    the engine's sessions (each writes a JSON file; both are read here and removed)."""
    events = {}
    for name in ("prefill", "decode"):
        profile_file = Path(getattr(engine, f"{name}_session").end_profiling())
        events[name] = json.loads(profile_file.read_text())
        profile_file.unlink()
    return events[measured]


def ort_runs(events: list[dict], n_runs: int, vocab_size: int) -> tuple[list[float], list[dict]]:
    """Wall ms and {group: ms} of the last n_runs runs in a session's profile events."""
    runs = [e for e in events if e.get("name") == "model_run"][-n_runs:]
    groups = [defaultdict(float) for _ in runs]
    starts = [run["ts"] for run in runs]
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        index = next((i for i in range(len(runs) - 1, -1, -1) if starts[i] <= event["ts"]), None)
        if index is None:
            continue                                             # a node of an earlier run
        args = event["args"]
        group = ort_group(args["op_name"], args["input_type_shape"], args["output_type_shape"],
                          vocab_size)
        groups[index][group] += event["dur"] / 1e3                  # us -> ms
    walls = [run["dur"] / 1e3 for run in runs]
    for wall, run_groups in zip(walls, groups):      # time between nodes: the executor
        run_groups["rest"] += wall - sum(run_groups.values())
    return walls, groups


def ort_prefill(graphs, ids, runs: int, threads: int, vocab_size: int, prefix: Path):
    from engines.ort_engine import OrtGPT2

    engine = OrtGPT2(*graphs, threads, profile_prefix=prefix)
    for _ in range(2):                                               # warm-up, not counted
        engine.prefill(ids)
    for _ in range(runs):
        engine.prefill(ids)
    walls, groups = ort_runs(ended_profile(engine, "prefill"), runs, vocab_size)
    return statistics.median(walls), {g: statistics.median(r[g] for r in groups) for g in GROUPS}


def ort_decode(graphs, prompt, threads: int, vocab_size: int, prefix: Path):
    from engines.ort_engine import OrtGPT2

    engine = OrtGPT2(*graphs, threads, profile_prefix=prefix)
    engine.generate(prompt, 8)                                       # warm-up, not counted
    engine.generate(prompt, DECODE_STEPS + 1)     # the prefill, then DECODE_STEPS decode steps
    walls, groups = ort_runs(ended_profile(engine, "decode"), DECODE_STEPS, vocab_size)
    return statistics.mean(walls), {g: statistics.mean(r[g] for r in groups) for g in GROUPS}


# ------------------------------------------------------------------------------------ minillm
def _grouped(clock, wall_ms: float, per: int = 1) -> dict[str, float]:
    groups = defaultdict(float)
    for name, seconds in clock.seconds.items():
        groups[MINILLM_GROUPS.get(name, "rest")] += seconds * 1e3 / per
    groups["rest"] += wall_ms - sum(groups.values())
    return groups


def minillm_prefill(model, ids, runs: int):
    """(median wall ms, {group: median ms}) from profile_model.py's per-operation clock."""
    import profile_model
    from minillm.inference.kv_cache import KVCache

    def prefill():
        model.forward(ids, cache=KVCache.for_model(model.config, 1, ids.shape[1]), last_only=True)

    prefill()                                                        # warm-up, not counted
    walls, groups = [], []
    for _ in range(runs):
        clock = profile_model.OpClock()
        with profile_model.timing(model, clock):
            start = time.perf_counter()
            prefill()
            wall = (time.perf_counter() - start) * 1e3
        walls.append(wall)
        groups.append(_grouped(clock, wall))
    return statistics.median(walls), {g: statistics.median(r[g] for r in groups) for g in GROUPS}


def minillm_decode(model, prompt):
    """(mean step ms, {group: mean ms}) over DECODE_STEPS greedy steps after the prompt, run
    operation by operation (whole_step=False) so that each group can be timed; by default
    the numba backend runs a step as one kernel (profile_model.py times both)."""
    model.backend.whole_step = False
    try:
        return _minillm_decode(model, prompt)
    finally:
        model.backend.whole_step = True


def _minillm_decode(model, prompt):
    import profile_model
    from minillm.inference.kv_cache import KVCache

    model.generate(prompt, 8)                                        # warm-up, not counted
    cache = KVCache.for_model(model.config, 1, max_len=DECODE_PROMPT_LEN + DECODE_STEPS)
    logits = model.forward(prompt, cache=cache, last_only=True).logits[:, -1]
    clock = profile_model.OpClock()
    with profile_model.timing(model, clock):
        start = time.perf_counter()
        for _ in range(DECODE_STEPS):
            token = logits.argmax(-1)[:, None]                       # greedy, as ORT's loop
            logits = model.forward(token, cache=cache, last_only=True).logits[:, -1]
        wall = (time.perf_counter() - start) * 1e3 / DECODE_STEPS
    return wall, _grouped(clock, wall, per=DECODE_STEPS)


# ------------------------------------------------------------------------------------ report
def print_side_by_side(title: str, ours, theirs, work: float, unit: str) -> None:
    """Both engines' groups in ms; the weight products' rate as `work` (in `unit` x s) / time."""
    (our_wall, our_ms), (ort_wall, ort_ms) = ours, theirs
    print(f"\n{title}")
    print(f"  {'group':<16} {'minillm':>9} {'ORT':>9} {'minillm - ORT':>14}")
    for group in GROUPS:
        print(f"  {group:<16} {our_ms[group]:>9.2f} {ort_ms[group]:>9.2f} "
              f"{our_ms[group] - ort_ms[group]:>11.2f} ms")
    print(f"  {'whole':<16} {our_wall:>9.2f} {ort_wall:>9.2f} {our_wall - ort_wall:>11.2f} ms")
    rate = {name: work / (ms["weight products"] / 1e3) for name, ms in (("minillm", our_ms), ("ORT", ort_ms))}
    print(f"  weight products: minillm {rate['minillm']:.0f} {unit}, ORT {rate['ORT']:.0f} {unit}")


def main(argv=None) -> int:
    args = parse_args(argv)
    here = Path(__file__).resolve().parent
    from bench_engines import SEED, WEIGHT_STD, limit_threads
    limit_threads(args.threads)                       # before NumPy is imported
    sys.path.insert(0, str(here))                     # engines/, profile_model.py
    import numpy as np

    from engines.model_files import model_folder
    from engines.ort_engine import exported_graphs
    from minillm.model.gpt2 import GPT2

    workdir = args.workdir.expanduser()
    folder = model_folder(workdir, SEED, WEIGHT_STD)
    graphs = exported_graphs(folder, folder / "onnx")
    model = GPT2.from_pretrained(folder, backend="numba")
    config = model.config
    block_weights = config.n_layer * 12 * config.n_embd ** 2      # qkv 3C^2, proj C^2, MLP 8C^2
    print(f"model: {folder}; {args.threads} threads; load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for T in args.lengths:
        ids = np.random.default_rng(T).integers(0, config.vocab_size, (1, T))
        ours = minillm_prefill(model, ids, args.runs)
        theirs = ort_prefill(graphs, ids, args.runs, args.threads, config.vocab_size,
                             workdir / "ort_profile")
        print_side_by_side(f"prefill, T = {T}: ms, median of {args.runs} runs", ours, theirs,
                           work=2 * T * block_weights / 1e9, unit="GFLOP/s")
    if not args.no_decode:
        prompt = np.random.default_rng(1).integers(0, config.vocab_size, (1, DECODE_PROMPT_LEN))
        ours = minillm_decode(model, prompt)
        theirs = ort_decode(graphs, prompt, args.threads, config.vocab_size, workdir / "ort_profile")
        print_side_by_side(f"decoding step: ms, mean of {DECODE_STEPS} steps (context "
                           f"{DECODE_PROMPT_LEN + 1}-{DECODE_PROMPT_LEN + DECODE_STEPS})",
                           ours, theirs, work=4 * block_weights / 1e9, unit="GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
