"""llama.cpp: GGUF files from its own converter, timed by llama-bench, checked with llama-simple.

Conversion (once per weight type, cached in the work dir):
    python LLAMA_CPP_SRC/convert_hf_to_gguf.py FOLDER --outtype f32|f16|q8_0 --outfile X.gguf
Timing: one llama-bench process per model and round, `-r 1` (one sample of each test after its
own warm-up run), `-t threads`, JSON output; the f32 model with an f32 KV cache (`-ctk f32
-ctv f32`, which needs the one-line llama-bench patch described in benchmarks/README.md), the
others with llama.cpp's default f16 cache.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

WEIGHT_TYPES = ("f32", "f16", "q8_0")


class LlamaCppMissing(RuntimeError):
    """What is missing to run llama.cpp, in a sentence for the user."""


def find_binaries(bin_dir: str | None) -> dict[str, Path]:
    """llama-bench and llama-simple from bin_dir, else from PATH."""
    found = {}
    for name in ("llama-bench", "llama-simple"):
        path = Path(bin_dir) / name if bin_dir else shutil.which(name)
        if not path or not Path(path).is_file():
            where = f"in {bin_dir}" if bin_dir else "on PATH (give --llama-cpp-bin DIR)"
            raise LlamaCppMissing(f"no {name} {where}; see benchmarks/README.md to build it")
        found[name] = Path(path)
    return found


def gguf_file(folder: Path, gguf_dir: Path, weight_type: str, src_dir: str | None) -> Path:
    """The model in `folder` as GGUF of weight_type; converted once with the source's converter."""
    out = gguf_dir / f"gpt2-124m-{weight_type}.gguf"
    if out.exists():
        return out
    converter = Path(src_dir or "") / "convert_hf_to_gguf.py"
    if not src_dir or not converter.is_file():
        raise LlamaCppMissing(f"{out.name} is not in the work dir yet and converting it needs "
                              f"llama.cpp's source tree: give --llama-cpp-src DIR "
                              f"(the folder with convert_hf_to_gguf.py)")
    gguf_dir.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    print(f"llama.cpp: converting to {out.name} ...", flush=True)
    done = subprocess.run([sys.executable, str(converter), str(folder), "--outtype", weight_type,
                           "--outfile", str(partial)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"convert_hf_to_gguf.py failed for {weight_type}:\n{done.stderr[-3000:]}")
    partial.rename(out)
    return out


def bench_once(llama_bench: Path, gguf: Path, weight_type: str, threads: int,
               lengths: list[int], prompt_len: int, new_tokens: int) -> tuple[dict, dict]:
    """One sample of each test: {("prefill", T) or ("decode", 1): seconds}, and the run's setup.

    The decode test is `-pg prompt_len,new_tokens-1`: a prefill and new_tokens - 1 one-token
    steps, the work of generating new_tokens tokens (the prefill yields the first one)."""
    command = [str(llama_bench), "-m", str(gguf), "-t", str(threads), "-r", "1", "-o", "json",
               "-p", ",".join(map(str, lengths)), "-n", "0",
               "-pg", f"{prompt_len},{new_tokens - 1}"]
    if weight_type == "f32":
        command += ["-ctk", "f32", "-ctv", "f32"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"llama-bench failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    seconds, setup = {}, {}
    for test in json.loads(done.stdout):
        key = ("prefill", test["n_prompt"]) if test["n_gen"] == 0 else ("decode", 1)
        seconds[key] = test["samples_ns"][0] * 1e-9
        setup = {k: test.get(k) for k in ("build_commit", "n_threads", "type_k", "type_v",
                                          "n_batch", "n_ubatch", "flash_attn", "cpu_info")}
    return seconds, setup


def greedy_text(llama_simple: Path, gguf: Path, prompt: str, new_tokens: int) -> bytes:
    """llama-simple's output: the prompt's tokens and new_tokens greedy ones, as text pieces.

    llama-simple keeps its KV cache in f16 (it has no option for it), even for the f32 model."""
    done = subprocess.run([str(llama_simple), "-m", str(gguf), "-n", str(new_tokens), prompt],
                          capture_output=True)
    if done.returncode != 0:
        sys.exit(f"llama-simple failed:\n{done.stderr.decode(errors='replace')[-3000:]}")
    return done.stdout.removesuffix(b"\n")
