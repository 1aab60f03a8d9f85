"""Encode speed of the readable and fast tokenizers against tiktoken, and BPE training time.

    .venv/bin/python benchmarks/bench_tokenizer.py [--mb 2] [--repeats 3]

The text comes from the Python standard library, so no download is needed: English is the
prose of ``pydoc``'s help topics and the library's docstrings; code is the library's own
source. Each figure is the best of ``--repeats`` runs on one thread (tiktoken's
``encode_ordinary`` runs on the calling thread), so the readable tokenizer's piece cache is
warm; the fast tokenizer and tiktoken keep no cache.
"""

from __future__ import annotations

import argparse
import ast
import functools
import pydoc_data.topics
import sysconfig
import time
from pathlib import Path

import tiktoken

from minillm.tokenizer.bpe import ENDOFTEXT, GPT2_SPLIT_PATTERN, Tokenizer
from minillm.tokenizer.train import train_bpe


@functools.cache
def stdlib_sources() -> tuple[Path, ...]:
    """The standard library's ``.py`` files, sorted; found once (the walk takes seconds)."""
    return tuple(sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")))


def english_text(n_bytes: int) -> str:
    """pydoc's help topics, then standard-library docstrings, up to ``n_bytes`` of UTF-8."""
    parts = list(pydoc_data.topics.topics.values())
    size = sum(len(part.encode()) for part in parts)
    for path in stdlib_sources():
        if size >= n_bytes:
            break
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue  # test fixtures with deliberately broken syntax or encodings
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring:
                    parts.append(docstring + "\n\n")
                    size += len(parts[-1].encode())
    return _truncate("".join(parts), n_bytes)


def code_text(n_bytes: int) -> str:
    """Standard-library source files, concatenated, up to ``n_bytes`` of UTF-8."""
    parts, size = [], 0
    for path in stdlib_sources():
        if size >= n_bytes:
            break
        try:
            parts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
        size += len(parts[-1].encode())
    return _truncate("".join(parts), n_bytes)


def _truncate(text: str, n_bytes: int) -> str:
    return text.encode()[:n_bytes].decode(errors="ignore")


def tiktoken_gpt2(tokenizer: Tokenizer) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding with the same vocabulary, built from the repository's files."""
    ranks = {tokenizer.token_bytes(token_id): token_id for token_id in tokenizer.vocab.values()}
    return tiktoken.Encoding("gpt2_local", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: tokenizer.eot_token})


def encode_speed(encoder: Tokenizer | tiktoken.Encoding, text: str, repeats: int) -> float:
    """MB/s of ``encoder.encode_ordinary(text)``, best of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode_ordinary(text)
        times.append(time.perf_counter() - start)
    return len(text.encode()) / 1e6 / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=2.0,
                        help="megabytes of each kind of text (default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per measurement, of which the best counts (default 3)")
    args = parser.parse_args()
    n_bytes = int(args.mb * 1e6)

    readable = Tokenizer.gpt2(fast=False)
    fast = Tokenizer.gpt2(fast=True)
    reference = tiktoken_gpt2(readable)
    fast.encode_ordinary("warm up")  # loads the compiled code

    row = "{:<8} {:>5} {:>9} {:>7} {:>9}   {:>13} {:>13}"
    print(row.format("text", "MB", "readable", "fast", "tiktoken", "fast/tiktoken",
                     "fast/readable"))
    print(row.format("", "", "MB/s", "MB/s", "MB/s", "", ""))
    training_bytes = 1_000_000
    english = english_text(max(n_bytes, training_bytes))  # parsed once, cut to size for each use
    for name, text in [("english", _truncate(english, n_bytes)), ("code", code_text(n_bytes))]:
        ids = reference.encode_ordinary(text)
        assert fast.encode_ordinary(text) == ids == readable.encode_ordinary(text), "ids differ"
        mb_s = {
            label: encode_speed(encoder, text, args.repeats)
            for label, encoder in [("readable", readable), ("fast", fast), ("tiktoken", reference)]
        }
        print(row.format(
            name, f"{len(text.encode()) / 1e6:.2f}",
            *(f"{mb_s[label]:.2f}" for label in ["readable", "fast", "tiktoken"]),
            f"{mb_s['fast'] / mb_s['tiktoken']:.2f}x", f"{mb_s['fast'] / mb_s['readable']:.1f}x",
        ))

    training_text = _truncate(english, training_bytes)
    start = time.perf_counter()
    trained = train_bpe([training_text], vocab_size=1000)
    seconds = time.perf_counter() - start
    megabytes = len(training_text.encode()) / 1e6
    print(f"\ntrain_bpe: vocab {trained.n_vocab}, {megabytes:.2f} MB of English, {seconds:.2f} s")


if __name__ == "__main__":
    main()
