"""A training run's folder: a complete Hugging Face GPT-2 checkpoint plus what resuming needs.

    out/config.json, model.safetensors     the weights, hub names, tied head (HF loads them)
    out/vocab.json, merges.txt             the tokenizer (GPT2TokenizerFast loads them)
    out/optimizer.safetensors              AdamW's m and v per weight
    out/trainer_state.json                 step, settings, last validation loss
    out/log.jsonl, loss.png                one JSON line per step / evaluation, the loss curve

Every file is written under a temporary name and renamed into place, trainer_state.json last,
so an interruption while saving leaves the previous checkpoint whole.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from minillm.checkpoint.weights import read_safetensors, save_checkpoint, write_safetensors

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"


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
    optimizer.load_state_arrays(read_safetensors(path), step)
