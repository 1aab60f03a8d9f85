"""A training run's folder: a complete Hugging Face GPT-2 checkpoint plus what resuming needs.

    out/config.json, model.safetensors     the weights, hub names, tied head (HF loads them)
    out/vocab.json, merges.txt             the tokenizer (GPT2TokenizerFast loads them)
    out/optimizer.safetensors              AdamW's m and v per weight
    out/trainer_state.json                 step, settings, last validation loss
    out/log.jsonl, loss.png                one JSON line per step / evaluation, the loss curve

Every file is written into out/.saving/ and renamed into place, trainer_state.json last. The
state file records the sha256 of the weights and optimiser state it goes with, so a resume
refuses a folder where an interruption left files of two different saves.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from minillm.checkpoint.weights import read_safetensors, save_checkpoint, write_safetensors

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TENSOR_FILES = ("model.safetensors", OPTIMIZER_FILE)


def save_training_checkpoint(out: Path, model, tokenizer, optimizer, state: dict) -> None:
    """Write the model, tokenizer, optimiser state and `state` (a JSON-able dict) into out."""
    out = Path(out)
    staging = out / ".saving"
    shutil.rmtree(staging, ignore_errors=True)
    eot = tokenizer.eot_token
    save_checkpoint(model.params, model.config, staging,
                    extra_config={"bos_token_id": eot, "eos_token_id": eot, "n_ctx": model.config.n_positions})
    tokenizer.save(staging)
    write_safetensors(staging / OPTIMIZER_FILE, optimizer.state_arrays())
    # The renames below are atomic one by one, not together: the state file names the exact
    # weights and optimiser state it belongs to, so a half-replaced set is caught on resume.
    state = {**state, "sha256": {name: _sha256(staging / name) for name in TENSOR_FILES}}
    (staging / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    for name in sorted(os.listdir(staging), key=lambda n: n == STATE_FILE):   # state file last
        os.replace(staging / name, out / name)
    staging.rmdir()


def read_state(out: Path) -> dict | None:
    """trainer_state.json of a run folder, or None if it holds no run."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a valid training state file: {error}") from None


def load_optimizer_state(out: Path, optimizer, step: int) -> None:
    """Fill `optimizer` from out/optimizer.safetensors, or a clear error if it is missing."""
    path = Path(out) / OPTIMIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume from {out}: it has no {OPTIMIZER_FILE} (a model "
                                "folder without optimiser state); use --init to fine-tune from it instead")
    check_complete(Path(out))
    optimizer.load_state_arrays(read_safetensors(path), step)


def check_complete(out: Path) -> None:
    """ValueError unless out's weights and optimiser state are the ones its state file names
    (they are not if a save was interrupted between two renames)."""
    expected = (read_state(out) or {}).get("sha256", {})
    for name, digest in expected.items():
        if _sha256(out / name) != digest:
            raise ValueError(f"cannot resume from {out}: its {name} is not the one {STATE_FILE} "
                             "was saved with (a save was interrupted); the folder holds no complete checkpoint")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
