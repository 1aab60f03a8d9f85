"""Record what the oracles of tests/oracles.py compute, for the graded tests to compare against.

The student copy does not ship the oracles that compute an assignment's answer (they are
withheld in assignments/assignments.toml), so the graded tests read these recordings instead:

    python scripts/record_oracles.py

It writes tests/data/oracles/:
    layers.npz         LayerNorm (x, gain, bias, expected) and GELU (x, expected) in float64
    attention.npz      causal attention in float64, per case: q, k, v, key_valid, expected
    bpe_training.json  the naive trainer on the tokenizer corpus: its merges, and the pieces,
                       pair counts and pair index after chosen numbers of merges

Every input comes from a fixed seed, so rerunning writes identical files; tests/test_oracles.py
(instructor-only) fails when a recording no longer matches its oracle.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1] / "tests"
OUT = TESTS / "data" / "oracles"
sys.path.insert(0, str(TESTS))

from oracles import (gelu_tanh_f64, layer_norm_f64, naive_attention, naive_merges,  # noqa: E402
                     naive_pair_counts, naive_pieces_with_pair)

# name -> (batch, heads, queries, keys, head size, left padding of each sequence)
ATTENTION_CASES = {
    "queries_6_keys_6": (2, 3, 6, 6, 8, None),
    "queries_1_keys_7": (2, 3, 1, 7, 8, None),
    "queries_3_keys_8": (2, 3, 3, 8, 8, None),
    "left_padding": (2, 2, 5, 5, 4, (2, 0)),
}
BPE_MERGES = 200          # merges of the whole corpus
BPE_STEPS = (0, 1, 2, 3, 4, 5, 10, 20, 50, 100, 149)   # trainer states recorded after k merges


def layer_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    x, gain, bias = (rng.standard_normal(shape).astype(np.float32) for shape in ((3, 5, 16), 16, 16))
    x *= 3
    gelu_x = np.linspace(-8, 8, 10001, dtype=np.float32)
    return {"layer_norm/x": x, "layer_norm/gain": gain, "layer_norm/bias": bias,
            "layer_norm/expected": layer_norm_f64(x, gain, bias, 1e-5),
            "gelu/x": gelu_x, "gelu/expected": gelu_tanh_f64(gelu_x)}


def attention_cases() -> dict[str, np.ndarray]:
    arrays = {}
    for seed, (name, (B, H, Tq, Tk, d, padding)) in enumerate(ATTENTION_CASES.items()):
        rng = np.random.default_rng(seed)
        q, k = ((2 * rng.standard_normal((B, H, n, d))).astype(np.float32) for n in (Tq, Tk))
        v = rng.standard_normal((B, H, Tk, d)).astype(np.float32)
        key_valid = np.ones((B, Tk), bool)
        for b, n_pad in enumerate(padding or ()):
            key_valid[b, :n_pad] = False
        expected = naive_attention(q, k, v, key_valid if padding else None)
        arrays |= {f"{name}/q": q, f"{name}/k": k, f"{name}/v": v, f"{name}/key_valid": key_valid,
                   f"{name}/padded": np.array(padding is not None), f"{name}/expected": expected}
    return arrays


def bpe_training(corpus: str) -> dict:
    from minillm.tokenizer.bpe import bytes_to_unicode
    from minillm.tokenizer.train import count_pieces, merge_ids

    symbol = bytes_to_unicode()
    tokens = list(symbol.values())                   # id -> the token, spelled as GPT-2 does
    merges = naive_merges([corpus], BPE_MERGES)
    for left, right in merges:
        tokens.append(tokens[left] + tokens[right])
    piece_counts = count_pieces([corpus])
    counts = list(piece_counts.values())
    byte_ids = {byte: i for i, byte in enumerate(symbol)}
    pieces = [[byte_ids[byte] for byte in piece.encode()] for piece in piece_counts]
    states = {}
    for step, pair in enumerate(merges[:max(BPE_STEPS) + 1]):
        if step in BPE_STEPS:
            pair_counts = naive_pair_counts(pieces, counts)
            index = naive_pieces_with_pair(pieces)
            states[str(step)] = {
                "pieces": pieces,
                "pair_counts": sorted([*pair, n] for pair, n in pair_counts.items()),
                "pieces_with_pair": sorted([*pair, sorted(ix)] for pair, ix in index.items()),
            }
        pieces = [merge_ids(piece, pair, 256 + step) for piece in pieces]
    return {"tokens": tokens, "merges": [[tokens[a], tokens[b]] for a, b in merges],
            "trainer_states": states}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "layers.npz", **layer_cases())
    np.savez_compressed(OUT / "attention.npz", **attention_cases())
    with open(TESTS / "data" / "tokenizer_corpus.txt", encoding="utf-8", newline="") as f:
        corpus = f.read()
    with open(OUT / "bpe_training.json", "w", encoding="utf-8") as f:
        json.dump(bpe_training(corpus), f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}/layers.npz, attention.npz and bpe_training.json")


if __name__ == "__main__":
    main()
