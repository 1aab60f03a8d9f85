"""The checks behind `minillm verify`: does a model compute what Hugging Face transformers computes?

    minillm verify --model weights/reference              # uses weights/reference/reference.npz
    minillm verify --model gpt2                           # the released 124M model

With a reference file (made by scripts/make_reference.py) every prompt's logits and hidden
states must match within the tolerance (1e-4, max abs), and greedy continuations must give
the very same token ids. The released gpt2 has no reference file; it is checked by its
well-known greedy continuation of "The dog".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minillm.model.config import GPT2_SIZES

TOLERANCE = 1e-4
REFERENCE_FILE = "reference.npz"

# Greedy decoding of "The dog" by the released GPT-2 124M, as HF transformers produces it.
GPT2_PROMPT_IDS = [464, 3290]
GPT2_GREEDY_IDS = [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688, 290,
                   2688, 27262, 13, 198, 198, 464, 3290]


def find_reference(model_path: Path, reference: str | None) -> Path | None:
    if reference is not None:
        if not Path(reference).is_file():
            raise FileNotFoundError(f"reference file not found: {reference}")
        return Path(reference)
    model_dir = model_path if model_path.is_dir() else model_path.parent
    candidate = model_dir / REFERENCE_FILE
    return candidate if candidate.is_file() else None


def is_gpt2_124m(config) -> bool:
    return config == GPT2_SIZES["gpt2"]


def load_reference(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def prompt_names(reference: dict) -> list[str]:
    return [name.removesuffix(".ids") for name in reference
            if name.endswith(".ids") and not name.startswith("batch.")]


# ----------------------------------------------------------------------------------------------
def max_diffs(model, reference: dict, name: str) -> tuple[float, float]:
    """Max abs difference of (logits, hidden states) for one recorded prompt.

    Logits are compared where they were stored: the full vocabulary at the last position,
    and a fixed subset of columns at every position.
    """
    out = model.forward(reference[f"{name}.ids"], output_hidden_states=True)
    columns = reference["logit_columns"]
    logit_diff = max(
        np.abs(out.logits[-1] - reference[f"{name}.logits_last"]).max(),
        np.abs(out.logits[:, columns] - reference[f"{name}.logits_columns"]).max())
    hidden_diff = max(np.abs(mine - theirs).max() for mine, theirs
                      in zip(out.hidden_states, reference[f"{name}.hidden_states"]))
    return float(logit_diff), float(hidden_diff)


def greedy_ids(model, ids, n_new: int, attention_mask=None) -> np.ndarray:
    """Greedy decoding the slow, obviously-correct way: rerun the whole sequence each step.

    ids: (T,) or (B, T); attention_mask (B, T) marks left padding with 0.
    """
    ids = np.asarray(ids, dtype=np.int64)
    mask = None if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    for _ in range(n_new):
        logits = model(ids, attention_mask=mask)                # (..., T, V)
        next_ids = logits[..., -1, :].argmax(axis=-1)           # (...)
        ids = np.concatenate([ids, next_ids[..., None]], axis=-1)
        if mask is not None:
            mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=-1)
    return ids


def continuation_check(model, label: str, prompt, expected, attention_mask=None) -> dict:
    expected = np.asarray(expected)
    n_new = expected.shape[-1] - np.shape(prompt)[-1]
    got = greedy_ids(model, prompt, n_new, attention_mask)
    mismatch = np.flatnonzero((got != expected).reshape(-1, expected.shape[-1]).any(axis=0))
    detail = "ids match" if mismatch.size == 0 else f"ids differ from position {mismatch[0]}"
    return {"check": f"greedy: {label}", "tokens": int(expected.shape[-1]),
            "logits": "-", "hidden": "-", "passed": mismatch.size == 0, "note": detail}


def reference_checks(model, reference: dict, tolerance: float) -> list[dict]:
    rows = []
    for name in prompt_names(reference):
        logit_diff, hidden_diff = max_diffs(model, reference, name)
        rows.append({"check": f"prompt: {name}", "tokens": len(reference[f"{name}.ids"]),
                     "logits": f"{logit_diff:.2e}", "hidden": f"{hidden_diff:.2e}",
                     "passed": max(logit_diff, hidden_diff) <= tolerance, "note": ""})
    for name in prompt_names(reference):
        if f"{name}.greedy" in reference:
            rows.append(continuation_check(model, name, reference[f"{name}.ids"],
                                           reference[f"{name}.greedy"]))
    if "batch.greedy" in reference:
        rows.append(continuation_check(model, "left-padded batch", reference["batch.ids"],
                                       reference["batch.greedy"], reference["batch.attention_mask"]))
    return rows
