"""config.json: Hugging Face's GPT-2 config, read and checked field by field.

A config that HF would read differently from minillm (another activation, untied head, a
setting that changes the attention) is refused rather than silently misread.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from minillm.checkpoint.safetensors_file import CheckpointError, is_count
from minillm.json_files import read_json_object
from minillm.model.config import GPT2_SIZES, GPT2Config

_BLOCK_INDEX = re.compile(r"h\.(\d+)\.")


# config.json keys HF's GPT2Config reads under another name (its attribute_map).
HF_ALIASES = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
              "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}
SHAPE_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
# HF settings that would change GPT-2's math, and the values minillm implements. An absent key
# takes HF's default, which is the supported value. gelu_pytorch_tanh is the same tanh GELU.
SUPPORTED_SETTINGS = {
    "model_type": ("gpt2",),
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "reorder_and_upcast_attn": (False,),
    "add_cross_attention": (False,),
    "tie_word_embeddings": (True,),
}
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def config_from_json(path: Path) -> GPT2Config:
    """GPT2Config from HF's config.json, every setting checked (CheckpointError naming the file).

    A key that is missing takes HF's GPT2Config default, as in HF. But a file that names none
    of the shape keys (vocab_size, n_positions, n_embd, n_layer, n_head), `{}` included, is an
    error: HF would read it as the 124M model, which for a file next to weights is almost
    surely a mistake. Keys that do not affect the computation (dropout, transformers_version,
    ...) are ignored; those that would change it must have the value GPT-2 uses.
    """
    values = read_json_object(path, CheckpointError, "a JSON object ({...}) of GPT-2 settings")
    for alias, key in HF_ALIASES.items():
        if alias in values:
            if key in values and values[key] != values[alias]:
                raise CheckpointError(f"{path}: {alias}={values[alias]!r} and {key}={values[key]!r} "
                                      "disagree (HF reads both as the same setting)")
            values[key] = values.pop(alias)
    if not any(key in values for key in SHAPE_KEYS):
        raise CheckpointError(f"{path} names none of {', '.join(SHAPE_KEYS)}; a GPT-2 config.json "
                              "must give the model's shape (HF would silently use the 124M one)")
    _check_supported_settings(path, values)
    try:
        config = GPT2Config.from_dict(values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid GPT-2 config: {err}") from None
    _check_derived_settings(path, values, config)
    return config


def _check_supported_settings(path: Path, values: dict) -> None:
    for key, supported in SUPPORTED_SETTINGS.items():
        # Compare types too: in Python 1 == True, but `"scale_attn_weights": 1` is not a bool.
        if key in values and not any(type(values[key]) is type(s) and values[key] == s
                                     for s in supported):
            expected = " or ".join(json.dumps(s) for s in supported)
            raise CheckpointError(f"{path}: {key}={values[key]!r} is not supported; minillm "
                                  f"implements the original GPT-2 ({key} = {expected})")


def _check_derived_settings(path: Path, values: dict, config: GPT2Config) -> None:
    """Keys whose valid values depend on the shape: n_inner, n_ctx and the special token ids."""
    n_inner = values.get("n_inner")
    if n_inner is not None and not (is_count(n_inner) and n_inner == 4 * config.n_embd):
        raise CheckpointError(f"{path}: n_inner={n_inner!r} is not supported; GPT-2's MLP is "
                              f"4 * n_embd = {4 * config.n_embd} wide (n_inner null or that)")
    if "n_ctx" in values and not (is_count(values["n_ctx"]) and values["n_ctx"] == config.n_positions):
        raise CheckpointError(f"{path}: n_ctx={values['n_ctx']!r} must equal n_positions="
                              f"{config.n_positions} (both are the context length)")
    for key in TOKEN_ID_KEYS:
        ids = values.get(key)
        ids = ids if isinstance(ids, list) else [ids]
        if not all(i is None or (is_count(i) and i < config.vocab_size) for i in ids):
            raise CheckpointError(f"{path}: {key}={values[key]!r} must be null or a token id in "
                                  f"[0, vocab_size={config.vocab_size})")


def infer_config(tensors: dict[str, np.ndarray]) -> GPT2Config:
    """Read the config off the tensor shapes when there is no config.json.

    Widths, vocabulary, context and depth are visible in the shapes; the number of heads is
    not (it only splits c_attn's columns), so it is taken from the released GPT-2 size of
    that width.
    """
    for name in ("wte.weight", "wpe.weight"):
        if name not in tensors:
            raise CheckpointError(f"checkpoint is missing tensor '{name}', needed to infer "
                                  "the config (there is no config.json)")
        if tensors[name].ndim != 2:
            raise CheckpointError(f"tensor '{name}' has shape {tensors[name].shape}, "
                                  "expected a matrix")
    vocab_size, n_embd = tensors["wte.weight"].shape
    n_positions = tensors["wpe.weight"].shape[0]
    block_ids = {int(m.group(1)) for name in tensors if (m := _BLOCK_INDEX.match(name))}
    n_layer = max(block_ids) + 1 if block_ids else 0
    n_head = {c.n_embd: c.n_head for c in GPT2_SIZES.values()}.get(n_embd)
    if n_head is None:
        widths = ", ".join(str(c.n_embd) for c in GPT2_SIZES.values())
        raise CheckpointError(
            f"cannot infer n_head for n_embd={n_embd}: it is not the width of a released "
            f"GPT-2 ({widths}). Put a config.json (with n_head) next to the weights")
    if n_layer == 0:
        raise CheckpointError("checkpoint has no transformer blocks (no 'h.0.*' tensors)")
    return GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd,
                      n_layer=n_layer, n_head=n_head)

