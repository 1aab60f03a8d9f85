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


class ReferenceFileError(ValueError):
    """A reference file that is not an .npz of recorded outputs that fit the model."""


def load_reference(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, or ReferenceFileError naming the file and what is wrong."""
    try:
        data = np.load(path, allow_pickle=False)     # never unpickle: a reference is plain arrays
    except (OSError, ValueError, EOFError) as err:
        raise ReferenceFileError(f"{path} is not an .npz file of reference outputs ({err})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ReferenceFileError(f"{path} is a single .npy array, expected an .npz archive of "
                                 "reference outputs (scripts/make_reference.py writes one)")
    try:
        with data:
            return {name: data[name] for name in data.files}
    except Exception as err:      # a damaged member: zipfile, zlib and numpy each raise their own
        raise ReferenceFileError(f"{path}: cannot read its arrays ({type(err).__name__}: {err})") from None


def check_reference(reference: dict, config, path) -> None:
    """Every array the checks will read, with the shape the model's config implies.

    A file with nothing to check (no recorded prompt, no batch) is an error, not a pass."""
    names = prompt_names(reference)
    if not names and "batch.greedy" not in reference:
        raise ReferenceFileError(f"{path} holds no recorded prompts ('NAME.ids') and no batch "
                                 "('batch.greedy'): there would be nothing to check")
    if names:
        _check_array(reference, "logit_columns", path, ndim=1, ids_below=config.vocab_size)
    n_columns = len(reference.get("logit_columns", ()))
    for name in names:
        T = _check_array(reference, f"{name}.ids", path, ndim=1,
                         ids_below=config.vocab_size, n_positions=config.n_positions).shape[0]
        _check_array(reference, f"{name}.logits_last", path, shape=(config.vocab_size,))
        _check_array(reference, f"{name}.logits_columns", path, shape=(T, n_columns))
        _check_array(reference, f"{name}.hidden_states", path,
                     shape=(config.n_layer + 1, T, config.n_embd))
        if f"{name}.greedy" in reference:
            _check_array(reference, f"{name}.greedy", path, ndim=1, longer_than=T,
                         ids_below=config.vocab_size, n_positions=config.n_positions)
    if "batch.greedy" in reference:
        shape = _check_array(reference, "batch.ids", path, ndim=2, ids_below=config.vocab_size,
                             n_positions=config.n_positions).shape
        _check_array(reference, "batch.attention_mask", path, shape=shape, ids_below=2)
        greedy = _check_array(reference, "batch.greedy", path, ndim=2, longer_than=shape[1],
                              ids_below=config.vocab_size, n_positions=config.n_positions)
        if greedy.shape[0] != shape[0]:
            raise ReferenceFileError(f"{path}: batch.greedy has {greedy.shape[0]} rows but "
                                     f"batch.ids has {shape[0]}")


def _check_array(reference: dict, key: str, path, shape=None, ndim=None, ids_below=None,
                 n_positions=None, longer_than=0) -> np.ndarray:
    """reference[key], checked; ids_below: an integer array with values in [0, ids_below)."""
    if key not in reference:
        raise ReferenceFileError(f"{path} has no array '{key}'")
    array = reference[key]
    what = f"{path}: '{key}' has shape {array.shape} and dtype {array.dtype}"
    if shape is not None and array.shape != shape:
        raise ReferenceFileError(f"{what}, expected shape {shape}")
    if ndim is not None and array.ndim != ndim:
        raise ReferenceFileError(f"{what}, expected {ndim} dimension(s)")
    if ids_below is None:
        if array.dtype.kind != "f":
            raise ReferenceFileError(f"{what}, expected floating-point values")
        return array
    if array.dtype.kind not in "iub" or ((array < 0) | (array >= ids_below)).any():
        raise ReferenceFileError(f"{what}, expected integers in [0, {ids_below})")
    length = array.shape[-1]
    if n_positions is not None and not longer_than < length <= n_positions:
        raise ReferenceFileError(f"{what}, expected a length in ({longer_than}, {n_positions}] "
                                 "(the model's context)")
    return array


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
