"""Start-up time: `minillm generate` end to end, cold and warm, and loading `Tokenizer.gpt2()`.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 3]

Every figure is measured in a fresh subprocess, because start-up is what a new process pays:
imports, parsing the vocabulary, loading numba's cached machine code.

* cold: `minillm generate --max-new-tokens 20 "ROMEO:"` with NUMBA_CACHE_DIR set to an empty
  folder, so numba compiles every kernel it needs (a first run after installing or editing).
* warm: the same command once the cache is filled.
* tokenizer: `Tokenizer.gpt2()`, then its first encode (which loads the compiled kernels), with
  tiktoken's reading of the same two files plus an encode as the baseline.

The figures are the best of --repeats runs (cold: one run per fresh cache). The machine's load
average is printed, since other work on the cores inflates every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minillm.tokenizer.bpe import GPT2_SPLIT_PATTERN

REPO_ROOT = Path(__file__).resolve().parents[1]
GENERATE = [sys.executable, "-m", "minillm", "generate", "--max-new-tokens", "20", "ROMEO:"]
PROMPT = "ROMEO: Hello world, and good morrow."

# Each prints one JSON line of seconds. The timer starts before the first import.
TOKENIZER_CODE = f"""
import time; start = time.perf_counter()
from minillm.tokenizer.bpe import Tokenizer
imported = time.perf_counter()
tokenizer = Tokenizer.gpt2()
loaded = time.perf_counter()
tokenizer.encode({PROMPT!r})
encoded = time.perf_counter()
import json; print(json.dumps({{"import": imported - start, "load": loaded - imported,
                                "first_encode": encoded - loaded}}))
"""
TIKTOKEN_CODE = f"""
import time; start = time.perf_counter()
import json, tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks   # tiktoken's reader of the two files
folder = {str(REPO_ROOT / "weights" / "gpt2")!r}
ranks = data_gym_to_mergeable_bpe_ranks(folder + "/vocab.bpe", folder + "/encoder.json")
encoding = tiktoken.Encoding("gpt2", pat_str={GPT2_SPLIT_PATTERN!r}, mergeable_ranks=ranks,
                             special_tokens={{"<|endoftext|>": 50256}})
encoding.encode_ordinary({PROMPT!r})
print(json.dumps({{"load_and_encode": time.perf_counter() - start}}))
"""


def environment(numba_cache: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
           "TIKTOKEN_CACHE_DIR": ""}                   # "": tiktoken reads the files themselves
    if numba_cache is not None:
        env["NUMBA_CACHE_DIR"] = numba_cache
    return env


def wall_time(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds a subprocess runs, and its stderr (where the compiling notice goes)."""
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, result.stderr


def python_json(code: str, env: dict[str, str]) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: min(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    with tempfile.TemporaryDirectory() as cache:
        cold, stderr = wall_time(GENERATE, environment(cache))
        notice = next((line for line in stderr.splitlines() if "compiling" in line), "(no notice)")
        print(f"generate, cold numba cache: {cold:6.2f} s   first line on stderr: {notice}")
        warm_env = environment(cache)
        warm = min(wall_time(GENERATE, warm_env)[0] for _ in range(args.repeats))
        print(f"generate, warm:             {warm:6.2f} s")

        tokenizer = best_of([python_json(TOKENIZER_CODE, warm_env) for _ in range(args.repeats)])
        tiktoken = best_of([python_json(TIKTOKEN_CODE, warm_env) for _ in range(args.repeats)])
    load = tokenizer["import"] + tokenizer["load"]
    print(f"Tokenizer.gpt2(), warm:     {load:6.2f} s (import {tokenizer['import']:.2f} + "
          f"load {tokenizer['load']:.2f}); first encode {tokenizer['first_encode']:.2f} s")
    print(f"tiktoken load + encode:     {tiktoken['load_and_encode']:6.2f} s; minillm load + "
          f"encode is {(load + tokenizer['first_encode']) / tiktoken['load_and_encode']:.1f}x that")


if __name__ == "__main__":
    main()
