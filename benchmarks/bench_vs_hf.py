"""minillm against Hugging Face transformers on the same random-weight GPT-2 124M, in one process.

    python benchmarks/bench_vs_hf.py                  # best backend (numba if present), 2 threads
    python benchmarks/bench_vs_hf.py --backend numpy --repeats 3

Needs the `reference` extra (torch, transformers). HF builds GPT2LMHeadModel(GPT2Config()) with
its own random init (eval, float32, its default attention: sdpa); minillm gets the very same
weights from HF's state dict, and the logits must agree within 1e-3 before anything is timed.

What is timed, identically on both sides:
  prefill  one forward pass over T prompt tokens that fills a KV cache and returns the next-token
           logits only: HF `model(ids, use_cache=True, logits_to_keep=1)`, minillm
           `model.forward(ids, cache=KVCache(...), last_only=True)` (allocating the cache included).
  decode   greedy generation with a KV cache: a 16-token prompt, exactly 128 new tokens; tokens/s
           = 128 / wall time of the whole call (its 16-token prefill included). HF runs
           `model.generate(do_sample=False, max_new_tokens=128, min_new_tokens=128)` and, as the
           leaner baseline, a hand-written loop that passes HF's cache back in (`cache=`, the
           transformers 5.x name of past_key_values); minillm runs `model.generate`.

Both sides use the same number of threads (torch, OpenBLAS, numba). OpenBLAS's other settings
come from the environment and are printed (see minillm.kernels.workers on its threads); only
NumPy's BLAS reads them, torch brings its own. Runs alternate between the two libraries, with a
short pause between runs so that neither inherits the other's spinning worker threads; each
figure is the median of --repeats runs (the min is printed too). The machine may be shared, so
only ratios measured side by side mean much.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

PREFILL_LENGTHS = (64, 256, 1024)
DECODE_PROMPT_LEN = 16
DECODE_NEW_TOKENS = 128
LOGIT_TOLERANCE = 1e-3
PAUSE_S = 0.05        # lets the other library's worker threads stop spinning


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=None,
                        help="minillm backend (default: numba if present, else numpy)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="threads for torch, OpenBLAS and numba alike (default: usable cores)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(PREFILL_LENGTHS),
                        help="prefill lengths T")
    parser.add_argument("--new-tokens", type=int, default=DECODE_NEW_TOKENS)
    parser.add_argument("--no-decode", action="store_true", help="skip the decode benchmark")
    return parser.parse_args(argv)


def limit_threads(n: int) -> None:
    """Must run before numpy or torch is imported: OpenBLAS reads its thread count at load."""
    for name in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):   # torch: set_num_threads
        os.environ[name] = str(n)


# ------------------------------------------------------------------------------------ models
def build_hf_model():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config()).eval().float()


def minillm_from_hf(hf_model, backend: str):
    """The HF model's weights (copied, float32, contiguous) in a minillm GPT2."""
    import numpy as np

    from minillm.checkpoint.weights import check_tensors, gpt2_tensors
    from minillm.model.config import GPT2Config
    from minillm.model.gpt2 import GPT2
    from minillm.model.params import params_from_hf

    state = {name: np.ascontiguousarray(t.detach().numpy(), dtype=np.float32)
             for name, t in hf_model.state_dict().items()}
    tensors = gpt2_tensors(state, "HF state dict")
    config = GPT2Config.from_dict(hf_model.config.to_dict())
    check_tensors(tensors, config)
    return GPT2(config, params_from_hf(tensors, config), backend=backend)


def default_backend() -> str:
    try:
        import minillm.kernels.backend  # noqa: F401
        return "numba"
    except ImportError:
        return "numpy"


def check_logits_agree(hf_model, model, T: int = 64) -> float:
    """Max |minillm - HF| over every logit of a random T-token prompt, and over the last-only
    cached path; raises if above LOGIT_TOLERANCE."""
    import numpy as np
    import torch

    from minillm.inference.kv_cache import KVCache

    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, T))
    with torch.inference_mode():
        hf_logits = hf_model(torch.from_numpy(ids)).logits.numpy()
    ours = model(ids)
    cache = KVCache.for_model(model.config, 1, max_len=T)
    ours_last = model.forward(ids, cache=cache, last_only=True).logits
    diff = max(np.abs(ours - hf_logits).max(), np.abs(ours_last[:, -1] - hf_logits[:, -1]).max())
    scale = np.abs(hf_logits).max()
    print(f"logits agree: max |minillm - HF| = {diff:.2e} (largest |logit| {scale:.2f}, "
          f"tolerance {LOGIT_TOLERANCE:g})")
    if not diff <= LOGIT_TOLERANCE:
        sys.exit(f"logits differ by {diff:.2e} > {LOGIT_TOLERANCE:g}: not benchmarking")
    return float(diff)


# ------------------------------------------------------------------------------------ timing
def time_side_by_side(run_ours, run_hf, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per run of each, alternating ours/HF, after one untimed warm-up of each."""
    ours, hf = [], []
    run_ours()
    run_hf()
    for _ in range(repeats):
        for timings, run in ((ours, run_ours), (hf, run_hf)):
            time.sleep(PAUSE_S)
            start = time.perf_counter()
            run()
            timings.append(time.perf_counter() - start)
    return ours, hf


def prefill_runners(hf_model, model, T: int):
    import numpy as np
    import torch

    from minillm.inference.kv_cache import KVCache

    ids = np.random.default_rng(T).integers(0, model.config.vocab_size, (1, T))
    hf_ids = torch.from_numpy(ids)

    def run_ours():
        cache = KVCache.for_model(model.config, 1, max_len=T)
        return model.forward(ids, cache=cache, last_only=True).logits

    def run_hf():
        with torch.inference_mode():
            return hf_model(hf_ids, use_cache=True, logits_to_keep=1).logits

    return run_ours, run_hf


def decode_runners(hf_model, model, new_tokens: int):
    """Greedy generation of exactly new_tokens: minillm, HF generate, HF hand-written loop."""
    import numpy as np
    import torch

    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (1, DECODE_PROMPT_LEN))
    hf_ids = torch.from_numpy(ids)
    eos = hf_model.config.eos_token_id

    def run_ours():
        return model.generate(ids, new_tokens)

    def run_hf_generate():
        with torch.inference_mode():
            return hf_model.generate(hf_ids, attention_mask=torch.ones_like(hf_ids),
                                     do_sample=False, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, pad_token_id=eos)

    def run_hf_loop():
        with torch.inference_mode():
            out = hf_model(hf_ids, use_cache=True, logits_to_keep=1)
            tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
            for _ in range(new_tokens - 1):
                out = hf_model(tokens[-1], cache=out.cache, use_cache=True)
                tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
            return torch.cat([hf_ids, *tokens], dim=1)

    return run_ours, run_hf_generate, run_hf_loop


def summary(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), min(times)


# ------------------------------------------------------------------------------------ report
def bench_prefill(hf_model, model, lengths, repeats: int) -> None:
    print(f"\nprefill: one forward pass over T tokens -> KV cache + next-token logits "
          f"(median of {repeats}, min in brackets)")
    print(f"{'T':>6} {'minillm ms':>18} {'HF ms':>18} {'HF / minillm':>13}")
    for T in lengths:
        ours, hf = time_side_by_side(*prefill_runners(hf_model, model, T), repeats)
        (ours_med, ours_min), (hf_med, hf_min) = summary(ours), summary(hf)
        print(f"{T:>6} {ours_med * 1e3:>9.1f} ({ours_min * 1e3:>6.1f}) "
              f"{hf_med * 1e3:>9.1f} ({hf_min * 1e3:>6.1f}) {hf_med / ours_med:>12.2f}x")


def bench_decode(hf_model, model, new_tokens: int, repeats: int) -> None:
    import numpy as np

    run_ours, run_hf_generate, run_hf_loop = decode_runners(hf_model, model, new_tokens)
    same = np.array_equal(run_ours(), run_hf_generate().numpy())
    print(f"\ndecode: greedy, KV cache, {DECODE_PROMPT_LEN}-token prompt + {new_tokens} new "
          f"tokens; tokens/s = {new_tokens} / wall time (median of {repeats}, best in brackets)")
    print(f"greedy tokens identical to HF generate: {same}")
    print(f"{'HF side':>22} {'minillm tok/s':>18} {'HF tok/s':>18} {'minillm / HF':>13}")
    for label, run_hf in (("generate()", run_hf_generate), ("hand-written loop", run_hf_loop)):
        ours, hf = time_side_by_side(run_ours, run_hf, repeats)
        (ours_med, ours_min), (hf_med, hf_min) = summary(ours), summary(hf)
        print(f"{label:>22} {new_tokens / ours_med:>9.1f} ({new_tokens / ours_min:>6.1f}) "
              f"{new_tokens / hf_med:>9.1f} ({new_tokens / hf_min:>6.1f}) "
              f"{hf_med / ours_med:>12.2f}x")


def print_setup(hf_model, model, threads: int, torch_default_threads: int) -> None:
    import numba
    import numpy as np
    import torch
    import transformers

    from blas_kernels import openblas_kernels     # benchmarks/, beside this script

    print(f"minillm backend {model.backend.name!r}; HF transformers {transformers.__version__}, "
          f"torch {torch.__version__} (attention: {hf_model.config._attn_implementation})")
    print(f"threads: torch {torch.get_num_threads()} (its default here: {torch_default_threads}), "
          f"numba {numba.get_num_threads()}, OpenBLAS {os.environ['OPENBLAS_NUM_THREADS']} "
          f"(asked for {threads}); numpy {np.__version__}; {openblas_kernels()}; "
          f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', '(unset)')}")


def main(argv=None) -> int:
    args = parse_args(argv)
    limit_threads(args.threads)
    import torch

    torch_default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    hf_model = build_hf_model()
    model = minillm_from_hf(hf_model, args.backend or default_backend())
    print_setup(hf_model, model, args.threads, torch_default_threads)
    check_logits_agree(hf_model, model)
    bench_prefill(hf_model, model, args.lengths, args.repeats)
    if not args.no_decode:
        bench_decode(hf_model, model, args.new_tokens, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
