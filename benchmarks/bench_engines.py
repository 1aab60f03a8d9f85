"""minillm against ONNX Runtime and llama.cpp on the same random-weight GPT-2 124M.

    python benchmarks/bench_engines.py --llama-cpp-bin LLAMA/build/bin --llama-cpp-src LLAMA
    python benchmarks/bench_engines.py --quick                      # a smoke run: small shapes
    python benchmarks/bench_engines.py --engines minillm ort --rounds 3

Needs the `engines` extra (see benchmarks/README.md) and, for llama.cpp, its llama-bench and
llama-simple binaries plus its source tree (the GGUF converter). An engine that is not there
is skipped with a message saying what is missing.

The model: random_params(seed 0, std 0.1) written as an HF folder in --workdir; the ONNX graphs
and GGUF files made from it are cached beside it, so reruns start timing at once. (std 0.1
instead of GPT-2's 0.02: a 0.02 random model's greedy continuation repeats one token, which
would make the greedy check below say little.)

Engines, each on --threads threads (default 2):
  minillm      the numba backend, float32, plus float16 and int8 weights where
               GPT2.from_pretrained(..., dtype=...) supports them
  ort          ONNX Runtime, a prefill graph and a decode graph with explicit KV tensors
               (engines/ort_engine.py), graph optimisations on
  llama.cpp    GGUF f32 (f32 KV cache), f16 and q8_0 (f16 KV cache), timed by llama-bench

First a check: the float32 engines' greedy continuations of one prompt must agree: minillm's
ids against HF transformers' and ONNX Runtime's ids, and minillm's decoded text against
llama-simple's text for the f32 GGUF.

What is timed:
  prefill  one pass over T random tokens that fills the KV cache, logits of the last position
  decode   greedy generation with the KV cache: a 16-token prompt, exactly 128 new tokens;
           tokens/s = batch x 128 / wall time of the whole call, prefill included. Batch 1
           for every engine; batches 4 and 16 for minillm and ONNX Runtime (same-length
           prompts, no padding)
Rounds interleave the engines: every engine runs every case once per round, in an order that
changes each round so that no engine always follows the same one (`round_order`: turning one
fixed order only moved where it started, each engine kept its predecessor, and minillm float32
always came after a llama.cpp process). Each
figure is the median over --rounds (the min in brackets), and x is its speed relative to
minillm float32 (above 1: faster than minillm).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PREFILL_LENGTHS = (64, 256, 1024)
DECODE_PROMPT_LEN = 16
DECODE_NEW_TOKENS = 128
BATCHES = (1, 4, 16)
QUICK = {"lengths": (64, 256), "new_tokens": 32, "batches": (1, 4), "rounds": 2}
ROUNDS = 5
SEED, WEIGHT_STD = 0, 0.1
CHECK_PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
CHECK_TOKENS = 32
LOGIT_TOLERANCE = 1e-3
PAUSE_S = 0.2        # lets the previous engine's idle threads stop spinning (OpenBLAS: ~0.1 s)
ENGINES = ("minillm", "ort", "llama.cpp")
MINILLM_DTYPES = ("float32", "float16", "int8")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"interleaved rounds (default {ROUNDS}; {QUICK['rounds']} with --quick)")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES),
                        help="engines to run; minillm float32 always runs, as the baseline")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "minillm-bench",
                        help="where the model, its ONNX graphs and GGUF files are kept")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: T = 64, 256; 32 new tokens; batches 1, 4; 2 rounds")
    parser.add_argument("--threads", type=int, default=2, help="threads for every engine")
    parser.add_argument("--llama-cpp-bin", metavar="DIR",
                        help="folder with llama-bench and llama-simple (default: PATH)")
    parser.add_argument("--llama-cpp-src", metavar="DIR",
                        help="llama.cpp source tree, for convert_hf_to_gguf.py (needed once)")
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else {}
    args.lengths = quick.get("lengths", PREFILL_LENGTHS)
    args.new_tokens = quick.get("new_tokens", DECODE_NEW_TOKENS)
    args.batches = quick.get("batches", BATCHES)
    args.rounds = args.rounds or quick.get("rounds", ROUNDS)
    return args


def limit_threads(n: int) -> None:
    """Must run before NumPy is imported: OpenBLAS reads its thread count when it loads."""
    for name in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[name] = str(n)


# ------------------------------------------------------------------------------------ engines
Case = tuple[str, int]          # ("prefill", T) or ("decode", batch)


@dataclass
class Variant:
    """One engine with one weight type: a column of the report.

    Either `runners` (case -> a callable, timed here) or `run_round` (one call that returns
    a sample of every case: llama-bench)."""
    name: str
    runners: dict[Case, Callable[[], object]] = field(default_factory=dict)
    run_round: Callable[[], dict[Case, float]] | None = None
    samples: dict[Case, list[float]] = field(default_factory=dict)

    def warm_up(self) -> None:
        for run in self.runners.values():
            run()

    def one_round(self) -> None:
        if self.run_round is not None:
            seconds = self.run_round()
        else:
            seconds = {case: _wall_time(run) for case, run in self.runners.items()}
        for case, s in seconds.items():
            self.samples.setdefault(case, []).append(s)


def _wall_time(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def inputs(args, vocab_size: int):
    """The random token ids every engine gets: {case: ids}."""
    import numpy as np

    ids = {("prefill", T): np.random.default_rng(T).integers(0, vocab_size, (1, T))
           for T in args.lengths}
    for B in args.batches:
        ids[("decode", B)] = np.random.default_rng(1).integers(0, vocab_size, (B, DECODE_PROMPT_LEN))
    return ids


def minillm_variant(name: str, model, cases: dict, new_tokens: int) -> Variant:
    from minillm.inference.kv_cache import KVCache

    def prefill(ids):           # allocating the cache included, as ORT allocates its outputs
        return lambda: model.forward(ids, cache=KVCache.for_model(model.config, 1, ids.shape[1]),
                                     last_only=True)

    def decode(ids):
        return lambda: model.generate(ids, new_tokens)

    return Variant(name, {case: (prefill if case[0] == "prefill" else decode)(ids)
                          for case, ids in cases.items()})


def load_minillm(folder: Path, reduced: bool) -> dict:
    """minillm models by dtype: float32, and (if `reduced`) float16 / int8 where
    from_pretrained takes a dtype."""
    from minillm.model.gpt2 import GPT2

    models = {"float32": GPT2.from_pretrained(folder, backend="numba")}
    for dtype in MINILLM_DTYPES[1:] if reduced else ():
        try:
            models[dtype] = GPT2.from_pretrained(folder, backend="numba", dtype=dtype)
        except TypeError as error:
            print(f"minillm {dtype}: skipped, GPT2.from_pretrained takes no dtype here ({error})")
    return models


def ort_variant(engine, cases: dict, new_tokens: int) -> Variant:
    def runner(case, ids):
        if case[0] == "prefill":
            return lambda: engine.prefill(ids)
        return lambda: engine.generate(ids, new_tokens)

    return Variant("onnxruntime float32", {case: runner(case, ids) for case, ids in cases.items()})


def load_ort(folder: Path, threads: int):
    """An OrtGPT2, or None with a message saying what is missing."""
    try:
        import onnxruntime  # noqa: F401
        from engines.ort_engine import OrtGPT2, exported_graphs
        graphs = exported_graphs(folder, folder / "onnx")
    except ImportError as error:
        print(f"ONNX Runtime: skipped ({error}); install the engines extra: "
              f"pip install -e '.[engines]'")
        return None
    engine = OrtGPT2(*graphs, threads)
    print(f"ONNX Runtime {onnxruntime.__version__}: {graphs[0].name}, {graphs[1].name}; "
          f"intra_op_num_threads={threads}, inter_op_num_threads=1, ORT_ENABLE_ALL, "
          f"session.force_spinning_stop")
    return engine


def llama_variants(args, folder: Path) -> tuple[list[Variant], dict]:
    """llama.cpp's Variants (f32, f16, q8_0) and its binaries; none with a message if missing."""
    from engines import llama_cpp

    try:
        binaries = llama_cpp.find_binaries(args.llama_cpp_bin)
        ggufs = {t: llama_cpp.gguf_file(folder, folder / "gguf", t, args.llama_cpp_src)
                 for t in llama_cpp.WEIGHT_TYPES}
    except llama_cpp.LlamaCppMissing as missing:
        print(f"llama.cpp: skipped ({missing})")
        return [], {}
    setups = {}

    def run_round(weight_type):
        def run():
            seconds, setups[weight_type] = llama_cpp.bench_once(
                binaries["llama-bench"], ggufs[weight_type], weight_type, args.threads,
                list(args.lengths), DECODE_PROMPT_LEN, args.new_tokens)
            return seconds
        return run

    variants = [Variant(f"llama.cpp {t}", run_round=run_round(t)) for t in llama_cpp.WEIGHT_TYPES]
    return variants, {"binaries": binaries, "ggufs": ggufs, "setups": setups}


# ------------------------------------------------------------------------------------ check
def check_greedy(models: dict, folder: Path, ort_engine, llama) -> None:
    """Every float32 engine continues CHECK_PROMPT greedily as minillm does; exits if not."""
    import numpy as np

    from minillm.tokenizer.bpe import Tokenizer

    minillm_model = models["float32"]
    tokenizer = Tokenizer.gpt2()
    prompt = np.array([tokenizer.encode(CHECK_PROMPT)])
    ours = minillm_model.generate(prompt, CHECK_TOKENS)
    print(f"\ncheck: greedy continuation of a {prompt.shape[1]}-token prompt, {CHECK_TOKENS} tokens "
          f"({len(set(ours[0, prompt.shape[1]:].tolist()))} distinct)")
    failures = []
    hf_ids = hf_greedy(folder, prompt, minillm_model)
    if hf_ids is not None:
        failures += report_ids("HF transformers (torch)", ours, hf_ids)
    if ort_engine is not None:
        ort_logits = ort_engine.prefill(prompt)
        diff = np.abs(ort_logits - minillm_model(prompt)[:, -1]).max()
        print(f"  ONNX Runtime: last-position logits max |ORT - minillm| = {diff:.2e}")
        failures += report_ids("ONNX Runtime", ours, ort_engine.generate(prompt, CHECK_TOKENS))
    if llama:
        from engines.llama_cpp import greedy_text
        text = greedy_text(llama["binaries"]["llama-simple"], llama["ggufs"]["f32"],
                           CHECK_PROMPT, CHECK_TOKENS)
        failures += report_text("llama.cpp f32 (llama-simple)", tokenizer.decode_bytes(ours[0]), text)
    if failures:
        sys.exit(f"greedy continuations differ ({', '.join(failures)}): not benchmarking")
    for dtype, model in list(models.items())[1:]:
        report_agreement(f"minillm {dtype}", model, prompt, ours)


def hf_greedy(folder: Path, prompt, minillm_model):
    """HF transformers' greedy ids (and its logits checked against minillm's), or None."""
    try:
        import torch
        import transformers
        from transformers import GPT2LMHeadModel
    except ImportError as error:
        print(f"  HF transformers: not checked ({error})")
        return None
    transformers.utils.logging.disable_progress_bar()
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = torch.from_numpy(prompt)
    with torch.inference_mode():
        logits = hf(ids).logits.numpy()
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=CHECK_TOKENS, min_new_tokens=CHECK_TOKENS,
                          pad_token_id=hf.config.eos_token_id)
    diff = abs(logits - minillm_model(prompt)).max()
    print(f"  HF transformers {transformers.__version__}: logits max "
          f"|HF - minillm| = {diff:.2e}")
    if not diff <= LOGIT_TOLERANCE:
        sys.exit(f"HF's logits differ from minillm's by {diff:.2e} > {LOGIT_TOLERANCE:g}")
    return out.numpy()


def report_ids(name: str, ours, theirs) -> list[str]:
    import numpy as np

    same = ours.shape == theirs.shape and np.array_equal(ours, theirs)
    detail = "identical" if same else f"DIFFER from position {_first_difference(ours[0], theirs[0])}"
    print(f"  {name}: greedy ids {detail}")
    return [] if same else [name]


def report_text(name: str, ours: bytes, theirs: bytes) -> list[str]:
    same = ours == theirs
    detail = "identical" if same else (f"DIFFER from byte {_first_difference(ours, theirs)}:\n"
                                       f"    minillm: {ours!r}\n    {name}: {theirs!r}")
    print(f"  {name}: greedy text (prompt + continuation) {detail}")
    return [] if same else [name]


def _first_difference(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def report_agreement(name: str, model, prompt, reference) -> None:
    """How far a reduced-precision model's greedy ids follow float32's (information only)."""
    T = prompt.shape[1]
    n = _first_difference(reference[0, T:], model.generate(prompt, CHECK_TOKENS)[0, T:])
    print(f"  {name}: follows float32's greedy ids for {n} of {CHECK_TOKENS} tokens (not required)")


# ------------------------------------------------------------------------------------ report
def run_rounds(variants: list[Variant], rounds: int) -> None:
    print(f"\nwarming up, then {rounds} interleaved rounds of "
          f"{', '.join(v.name for v in variants)} ...", flush=True)
    for v in variants:
        v.warm_up()
    for r in range(rounds):
        start = time.perf_counter()
        for v in round_order(variants, r):
            time.sleep(PAUSE_S)
            v.one_round()
        print(f"  round {r + 1}/{rounds}: {time.perf_counter() - start:.1f} s", flush=True)


def round_order(variants: list, round_index: int) -> list:
    """The variants in round `round_index`'s order: every `step`-th one from `start`, the step
    changing from round to round among those coprime to n, so that an engine's predecessor
    (the variant `step` places before it) changes too: with 7 variants, 6 rounds put each
    after each of the other 6 once. (The engine that runs after a heavy one, or after
    another process, starts at a disadvantage on a shared machine.)"""
    n = len(variants)
    steps = [step for step in range(1, n) if math.gcd(step, n) == 1] or [1]
    step, start = steps[round_index % len(steps)], round_index % n
    return [variants[(start + i * step) % n] for i in range(n)]


def print_table(title: str, cases: list[Case], variants: list[Variant], value, unit: str) -> None:
    """Rows: variants; columns: cases; each cell median (min) and the speed against minillm."""
    baseline = variants[0]
    header = "".join(f"{_case_label(c):>24}" for c in cases)
    print(f"\n{title}: {unit}, median (best), x = speed / minillm float32's")
    print(f"{'engine':<22}{header}")
    for v in variants:
        cells = []
        for case in cases:
            times = v.samples.get(case)
            if not times:
                cells.append(f"{'-':>24}")
                continue
            med, best = statistics.median(times), min(times)
            x = statistics.median(baseline.samples[case]) / med
            cells.append(f"{value(case, med):>10.1f} ({value(case, best):>7.1f}) {x:>4.2f}x")
        print(f"{v.name:<22}{''.join(cells)}")


def _case_label(case: Case) -> str:
    return f"T={case[1]}" if case[0] == "prefill" else f"batch {case[1]}"


def report(args, variants: list[Variant]) -> None:
    prefill = [("prefill", T) for T in args.lengths]
    decode = [("decode", B) for B in args.batches]
    print_table("prefill", prefill, variants, lambda case, s: s * 1e3, "ms")
    print_table(f"decode ({DECODE_PROMPT_LEN}-token prompt + {args.new_tokens} new tokens, greedy)",
                decode, variants, lambda case, s: case[1] * args.new_tokens / s, "tokens/s")


def print_setup(args, llama: dict) -> None:
    import numba
    import numpy as np
    from blas_kernels import openblas_kernels     # benchmarks/, beside this script

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"threads {args.threads} for every engine (numba {numba.get_num_threads()}, OpenBLAS "
          f"{os.environ['OPENBLAS_NUM_THREADS']}); numpy {np.__version__}, numba "
          f"{numba.__version__}; {len(os.sched_getaffinity(0))} usable cores, load average {load}")
    print(f"numpy's BLAS: {openblas_kernels()}")
    for weight_type, setup in (llama.get("setups") or {}).items():
        print(f"llama.cpp {weight_type}: " + ", ".join(f"{k} {v}" for k, v in setup.items()))


def main(argv=None) -> int:
    args = parse_args(argv)
    limit_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))        # engines/, beside this file
    from engines.model_files import model_folder

    folder = model_folder(args.workdir.expanduser(), SEED, WEIGHT_STD)
    print(f"model: random-weight GPT-2 124M in {folder}")
    models = load_minillm(folder, reduced="minillm" in args.engines)
    ort_engine = load_ort(folder, args.threads) if "ort" in args.engines else None
    llama_list, llama = llama_variants(args, folder) if "llama.cpp" in args.engines else ([], {})

    check_greedy(models, folder, ort_engine, llama)

    cases = inputs(args, models["float32"].config.vocab_size)
    variants = [minillm_variant(f"minillm {dtype}", m, cases, args.new_tokens)
                for dtype, m in models.items()]
    if ort_engine is not None:
        variants.append(ort_variant(ort_engine, cases, args.new_tokens))
    variants += llama_list
    run_rounds(variants, args.rounds)
    print()
    print_setup(args, llama)
    report(args, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
