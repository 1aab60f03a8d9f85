"""Reading and writing GPT-2 checkpoints: Hugging Face's layouts of the `.safetensors` file
(the container itself: safetensors_file.py; config.json: hf_config.py).

What a GPT-2 checkpoint holds
-----------------------------
* Names: the hub files (e.g. openai-community/gpt2) use `h.0.attn.c_attn.weight`, ...,
  `wte.weight`, `wpe.weight`, `ln_f.weight`. Files written by `save_pretrained` of
  GPT2LMHeadModel put everything under `transformer.` and may add `lm_head.weight`.
* Conv1D layout: GPT-2's linear layers are "Conv1D" modules whose weight is stored
  [in, out], so a layer is `x @ W + b` with no transpose (torch's nn.Linear stores [out, in]).
  c_attn.weight is (C, 3C): the q, k and v projections side by side.
* Tied LM head: there is no separate output matrix; logits = h @ wte.T. An `lm_head.weight`
  in a file is accepted only if it is a copy of wte.
* Mask buffers: `h.N.attn.bias` is not a bias. It is the causal mask, a lower-triangular
  (1, 1, n_positions, n_positions) float32 matrix of ones, that old versions of transformers
  saved along with the weights; some files also hold `h.N.attn.masked_bias`, the scalar -1e4
  used in place of -inf. They carry no learned values and are skipped.

Everything is returned as C-contiguous float32: float16 and bfloat16 files are upcast. numpy
has no bfloat16, so those tensors are read as raw 16-bit patterns and widened by hand (a
bfloat16 number is exactly the top half of a float32).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from minillm.model.quantize import weight_dtype

from minillm.checkpoint.hf_config import config_from_json, infer_config
from minillm.checkpoint.locations import CHECKOUT_WEIGHTS, bundled_dir, downloads_dir
# The container's functions are also importable from here: one module to import for checkpoints.
from minillm.checkpoint.safetensors_file import (CheckpointError, float32_to_bfloat16_bits,  # noqa: F401
                                                 read_header, read_safetensors, write_safetensors)
from minillm.model.config import GPT2_SIZES, GPT2Config
from minillm.model.params import GPT2Params, hf_state_dict_shapes, params_from_hf, params_to_hf

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# The causal-mask buffers of old checkpoints: `h.3.attn.bias`, `h.3.attn.masked_bias`.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
HF_PREFIX = "transformer."
LM_HEAD = "lm_head.weight"




# ----------------------------------------------------------------------------------------------
# GPT-2 checkpoints
# ----------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> tuple[GPT2Config, GPT2Params]:
    """Load a GPT-2 checkpoint: a directory holding model.safetensors (and usually
    config.json), or a .safetensors file (config.json is looked for beside it).

    Without config.json the config is inferred from the tensor shapes (see infer_config).
    """
    weights_file, config_file = _checkpoint_files(Path(path))
    tensors = read_safetensors(weights_file, keep=lambda name: not is_mask_buffer(name))
    tensors = gpt2_tensors(tensors, weights_file)
    config = config_from_json(config_file) if config_file.is_file() else infer_config(tensors)
    check_tensors(tensors, config)
    # Pop while converting, so a half-precision file never has both copies in memory at once.
    tensors = {name: np.ascontiguousarray(tensors.pop(name), dtype=np.float32)
               for name in list(tensors)}
    check_finite(tensors, weights_file)
    return config, params_from_hf(tensors, config)


def _checkpoint_files(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        weights_file = path / WEIGHTS_FILE
        if not weights_file.is_file():
            raise FileNotFoundError(f"no {WEIGHTS_FILE} in {path}")
        return weights_file, path / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no such file or directory: {path}")
    return path, path.parent / CONFIG_FILE


def gpt2_tensors(tensors: dict[str, np.ndarray], source: Path | str = "checkpoint") -> dict:
    """Bring either HF layout to hub names: drop the `transformer.` prefix, the mask buffers
    and a tied lm_head.weight (after checking that it really is a copy of wte)."""
    ### BEGIN SOLUTION a3: bringing both HF layouts to hub names (prefix, tied LM head, mask buffers)
    renamed = {}
    for name, tensor in tensors.items():
        short = name.removeprefix(HF_PREFIX)
        if short in renamed:
            raise CheckpointError(f"{source} holds both '{short}' and '{HF_PREFIX}{short}'")
        renamed[short] = tensor
    lm_head = renamed.pop(LM_HEAD, None)
    if lm_head is not None:
        _check_tied_head(lm_head, renamed.get("wte.weight"), source)
    return {name: t for name, t in renamed.items() if not is_mask_buffer(name)}
    ### END SOLUTION


def is_mask_buffer(name: str) -> bool:
    """`h.N.attn.bias` / `h.N.attn.masked_bias` (with or without `transformer.`): the causal
    mask and its fill value, saved by old transformers versions; not parameters."""
    return _MASK_BUFFER.fullmatch(name.removeprefix(HF_PREFIX)) is not None


def _check_tied_head(lm_head: np.ndarray, wte: np.ndarray | None, source) -> None:
    if wte is None or lm_head.shape != wte.shape or not np.array_equal(lm_head, wte):
        raise CheckpointError(
            f"{source}: lm_head.weight is not a copy of wte.weight. GPT-2 ties its output "
            "layer to the token embedding (logits = h @ wte.T), so a checkpoint with its own "
            "LM head is a different model, which this loader does not support")



def check_tensors(tensors: dict[str, np.ndarray], config: GPT2Config) -> None:
    """Every tensor the config needs, with its exact shape, and nothing else."""
    # Each block has a dozen tensors: refuse an absurd n_layer before listing its names.
    if config.n_layer > len(tensors):
        raise CheckpointError(f"the config has n_layer={config.n_layer}, but the checkpoint holds "
                              f"only {len(tensors)} tensors, too few for that many blocks")
    expected = hf_state_dict_shapes(config)
    missing = [name for name in expected if name not in tensors]
    if missing:
        listed = ", ".join(f"'{n}' (expected shape {expected[n]})" for n in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"checkpoint is missing tensor {listed}{more}")
    extra = sorted(name for name in tensors if name not in expected)
    if extra:
        raise CheckpointError(f"checkpoint has unexpected tensor(s) {', '.join(map(repr, extra))}"
                              f" for a GPT-2 with {config.n_layer} layers")
    for name, shape in expected.items():
        found = tuple(tensors[name].shape)
        if found != shape:
            hint = ""
            if found == shape[::-1] and len(shape) == 2:
                hint = (" (transposed: stored [out, in] like nn.Linear, "
                        "but GPT-2's Conv1D stores [in, out])")
            raise CheckpointError(f"tensor '{name}' has shape {found}, expected {shape}{hint}")
    not_float = [n for n, t in tensors.items() if t.dtype.kind != "f"]
    if not_float:
        raise CheckpointError(f"tensor '{not_float[0]}' has dtype {tensors[not_float[0]].dtype}, "
                              "expected a floating-point type")


def check_finite(tensors: dict[str, np.ndarray], source) -> None:
    """No NaN or inf in any weight: such a model computes NaN logits for every input."""
    for name, tensor in tensors.items():
        n_bad = tensor.size - int(np.count_nonzero(np.isfinite(tensor)))
        if n_bad:
            raise CheckpointError(f"{source}: tensor '{name}' holds {n_bad} NaN or infinite "
                                  "value(s); the checkpoint is corrupt")


# Models that ship in the repository's weights/ folder, loadable by name like the released ones:
# a GPT-2 that minillm trained on Shakespeare (the default model), and the random-weight
# reference model whose logits HF recorded.
BUNDLED_MODELS = {"shakespeare": "trained by minillm on Shakespeare's plays (the default)",
                  "reference": "random weights, HF's logits recorded (for verification)"}
DEFAULT_MODEL = "shakespeare"


def resolve_model_path(name_or_path: str | Path) -> Path:
    """An existing path as is, a bundled model's name -> its bundled folder, or a released
    model's name -> the folder `minillm download` put it in (see checkpoint/locations.py)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if name in BUNDLED_MODELS and (bundled_dir() / name / WEIGHTS_FILE).is_file():
        return bundled_dir() / name
    if name in GPT2_SIZES:
        # A checkout's weights/<name>/ still counts: downloads went there before the user cache.
        model_dir = downloads_dir() / name
        for folder in (CHECKOUT_WEIGHTS / name, model_dir):
            if (folder / WEIGHTS_FILE).is_file():
                return folder
        raise FileNotFoundError(
            f"the weights of {name} are not downloaded: {model_dir / WEIGHTS_FILE} does not "
            f"exist. Run `minillm download {name}`, or put {WEIGHTS_FILE} and {CONFIG_FILE} "
            f"from https://huggingface.co/openai-community/{name} in {model_dir}/")
    raise FileNotFoundError(
        f"{name!r} is neither an existing file or directory nor a bundled or released model name "
        f"({', '.join([*BUNDLED_MODELS, *GPT2_SIZES])})")


def save_checkpoint(params: GPT2Params, config: GPT2Config, path: str | Path,
                    dtype=np.float32, prefix: str = "", lm_head: bool = False,
                    extra_config: dict | None = None) -> Path:
    """Write params in HF's layout: `path` (a directory) gets model.safetensors + config.json.

    dtype: np.float32, np.float16 or "bfloat16". prefix="transformer." and lm_head=True give
    the layout of save_pretrained instead of the hub's. extra_config: more config.json keys
    (e.g. a trained tokenizer's bos_token_id / eos_token_id, which HF reads from there).
    """
    if weight_dtype(params) != "float32":
        raise ValueError(f"cannot save {weight_dtype(params)} weights: minillm writes HF checkpoints "
                         f"from float32 weights (dtype=np.float16 or 'bfloat16' rounds them there)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bfloat16 = isinstance(dtype, str) and dtype == "bfloat16"
    store_dtype = np.float32 if bfloat16 else np.dtype(dtype)
    tensors = {prefix + name: np.asarray(t, dtype=store_dtype)
               for name, t in params_to_hf(params).items()}
    if lm_head:
        tensors[LM_HEAD] = np.asarray(params.wte, dtype=store_dtype)
    write_safetensors(path / WEIGHTS_FILE, tensors, bfloat16=bfloat16)
    hf_config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                 "activation_function": "gelu_new", **config.to_dict(), **(extra_config or {})}
    (path / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    return path
