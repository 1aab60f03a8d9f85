"""Reading and writing GPT-2 checkpoints in Hugging Face's `.safetensors` format.

The file format
---------------
A .safetensors file is three parts, nothing else:

    [8 bytes]  N, the header length, an unsigned 64-bit little-endian integer
    [N bytes]  the header: UTF-8 JSON, possibly padded with spaces
    [rest]     the raw tensor data, little-endian, row-major, tensors back to back

The header maps each tensor name to where its bytes are and how to read them:

    {"__metadata__": {"format": "pt"},
     "wte.weight": {"dtype": "F32", "shape": [50257, 768], "data_offsets": [0, 154389504]},
     ...}

`data_offsets` are [begin, end) byte positions counted from the start of the data section;
end - begin must equal (number of elements) x (bytes per element), and the tensors must tile
the data section exactly: no overlaps, no gaps, nothing after the last one. There is no
pickle and no code: a loader reads the header, then slices bytes.

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
import math
import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from minillm.model.config import GPT2_SIZES, GPT2Config
from minillm.model.params import GPT2Params, hf_state_dict_shapes, params_from_hf, params_to_hf

REPO_ROOT = Path(__file__).resolve().parents[2]      # minillm/checkpoint/ -> the repository
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# Bytes per element of every dtype the safetensors format defines.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 100_000_000     # the safetensors library's own limit

# The causal-mask buffers of old checkpoints: `h.3.attn.bias`, `h.3.attn.masked_bias`.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
_BLOCK_INDEX = re.compile(r"h\.(\d+)\.")
HF_PREFIX = "transformer."
LM_HEAD = "lm_head.weight"


class CheckpointError(ValueError):
    """A weights file that is malformed or does not hold a GPT-2 model."""


# ----------------------------------------------------------------------------------------------
# The safetensors container
# ----------------------------------------------------------------------------------------------
def read_header(path: str | Path) -> tuple[dict, int]:
    """Parse and validate a .safetensors header. Returns (tensor entries, data section start).

    Checks everything the header claims against the file, so a bad file fails here with a
    message naming the problem rather than somewhere inside a parser.
    """
    path = Path(path)
    file_size = path.stat().st_size
    if file_size < 8:
        raise CheckpointError(f"{path} is not a safetensors file: only {file_size} bytes, "
                              "too short for the 8-byte header length")
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > file_size - 8:
            raise CheckpointError(
                f"{path} is not a safetensors file: its first 8 bytes give a header length of "
                f"{header_len} bytes, but the file has only {file_size - 8} bytes after them")
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path} is not a safetensors file: header length "
                                  f"{header_len} bytes exceeds the format's {MAX_HEADER_BYTES}")
        raw_header = f.read(header_len)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} is not a safetensors file: its header is not valid "
                              f"JSON ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header must be a JSON object, "
                              f"got {type(header).__name__}")
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings, got {metadata!r}")
    data_start = 8 + header_len
    for name, entry in header.items():
        _check_entry(path, name, entry)
    _check_layout(path, header, file_size - data_start)
    return header, data_start


def _check_entry(path: Path, name: str, entry) -> None:
    """One header entry: a known dtype, a shape, and offsets spanning exactly its bytes."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{path}: header entry for tensor '{name}' must have dtype, "
                              f"shape and data_offsets, got {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{path}: tensor '{name}' has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(_is_count(n) for n in shape)):
        raise CheckpointError(f"{path}: tensor '{name}' has invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise CheckpointError(f"{path}: tensor '{name}' has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if begin > end:
        raise CheckpointError(f"{path}: tensor '{name}' has data_offsets out of order: "
                              f"begins at byte {begin} but ends at byte {end}")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - begin != expected:
        raise CheckpointError(
            f"{path}: tensor '{name}' ({dtype}, shape {tuple(shape)}) needs {expected} bytes "
            f"but its data_offsets [{begin}, {end}) span {end - begin}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(path: Path, header: dict, data_len: int) -> None:
    """The tensors must tile the data section exactly: no overlap, no gap, no overrun."""
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1], name) for name, e in header.items())
    position, previous = 0, None
    for begin, end, name in spans:
        if begin < position:
            raise CheckpointError(f"{path}: tensors '{previous}' and '{name}' overlap: "
                                  f"'{name}' begins at byte {begin}, before '{previous}' "
                                  f"ends at byte {position}")
        if begin > position:
            raise CheckpointError(f"{path}: gap in the data section: bytes [{position}, "
                                  f"{begin}) before tensor '{name}' belong to no tensor")
        position, previous = end, name
    if position > data_len:
        raise CheckpointError(
            f"{path} is truncated: its header promises {position} bytes of tensor data "
            f"(tensor '{previous}' ends at byte {position}) but only {data_len} bytes follow "
            "the header")
    if position < data_len:
        raise CheckpointError(f"{path}: {data_len - position} bytes after the last tensor's "
                              "data belong to no tensor")


def read_safetensors(path: str | Path, keep=lambda name: True) -> dict[str, np.ndarray]:
    """The tensors of a validated .safetensors file whose name passes `keep`; bfloat16 ones
    come back as float32, all others in their stored dtype."""
    header, data_start = read_header(path)
    header = {name: entry for name, entry in header.items() if keep(name)}
    for name, entry in header.items():
        if entry["dtype"].startswith("F8"):
            raise CheckpointError(f"{path}: tensor '{name}' has dtype {entry['dtype']}, "
                                  "which minillm cannot read")
    tensors = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for name, entry in header.items():
                if entry["dtype"] == "BF16":     # numpy cannot hold bfloat16: widen it ourselves
                    tensors[name] = _read_bfloat16(path, data_start, entry)
                else:
                    tensors[name] = f.get_tensor(name)
    except SafetensorError as err:       # a rule of the library's that read_header does not check
        raise CheckpointError(f"{path} is not a valid safetensors file: {err}") from None
    return tensors


def _read_bfloat16(path, data_start: int, entry: dict) -> np.ndarray:
    """bfloat16 is the top 16 bits of a float32: shift the raw patterns into place."""
    ### BEGIN SOLUTION a3: reading bfloat16 data and widening it to float32
    begin, end = entry["data_offsets"]
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        bits = np.frombuffer(f.read(end - begin), dtype="<u2")
    return (bits.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])
    ### END SOLUTION


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even); returns the 16-bit patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    round_half_even = np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))
    return ((bits + round_half_even) >> 16).astype(np.uint16)


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], bfloat16: bool = False,
                      metadata: dict[str, str] | None = None) -> None:
    """Write arrays as a .safetensors file; with bfloat16=True float arrays are stored as BF16.

    The header is padded with spaces to a multiple of 8 bytes so the data stays aligned.
    """
    numpy_to_safetensors = {"float32": "F32", "float16": "F16", "float64": "F64", "bool": "BOOL",
                            "uint8": "U8", "int8": "I8", "int32": "I32", "int64": "I64"}
    header, blobs, offset = {"__metadata__": metadata or {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if bfloat16 and array.dtype.kind == "f":
            dtype, blob = "BF16", float32_to_bfloat16_bits(array).astype("<u2").tobytes()
        else:
            dtype = numpy_to_safetensors[array.dtype.name]
            blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)


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
    values = _read_json_object(path)
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


def _read_json_object(path: Path) -> dict:
    """The JSON object in a file, or CheckpointError saying why it is not one."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the config: {err.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {raw[err.start]:#04x} at offset "
                              f"{err.start}); config.json must be JSON in UTF-8") from None
    if not text.strip():
        raise CheckpointError(f"{path} is empty; expected a JSON object of GPT-2 settings")
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err.msg} (line {err.lineno}, "
                              f"column {err.colno})") from None
    except RecursionError:
        raise CheckpointError(f"{path} is not a config: its JSON is nested too deeply") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} must hold a JSON object ({{...}}) of GPT-2 settings, "
                              f"got a JSON {_json_type(values)}")
    return values


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


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
    if n_inner is not None and not (_is_count(n_inner) and n_inner == 4 * config.n_embd):
        raise CheckpointError(f"{path}: n_inner={n_inner!r} is not supported; GPT-2's MLP is "
                              f"4 * n_embd = {4 * config.n_embd} wide (n_inner null or that)")
    if "n_ctx" in values and not (_is_count(values["n_ctx"]) and values["n_ctx"] == config.n_positions):
        raise CheckpointError(f"{path}: n_ctx={values['n_ctx']!r} must equal n_positions="
                              f"{config.n_positions} (both are the context length)")
    for key in TOKEN_ID_KEYS:
        ids = values.get(key)
        ids = ids if isinstance(ids, list) else [ids]
        if not all(i is None or (_is_count(i) and i < config.vocab_size) for i in ids):
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


def check_vocab_matches(config: GPT2Config, tokenizer_n_vocab: int) -> None:
    """The model's embedding table must have one row per token the tokenizer can emit."""
    if config.vocab_size != tokenizer_n_vocab:
        raise ValueError(f"vocabulary mismatch: the model has vocab_size={config.vocab_size} "
                         f"but the tokenizer has {tokenizer_n_vocab} tokens")


# Models that ship in the repository's weights/ folder, loadable by name like the released ones:
# a GPT-2 that minillm trained on Shakespeare (the default model), and the random-weight
# reference model whose logits HF recorded.
BUNDLED_MODELS = {"shakespeare": "trained by minillm on Shakespeare's plays (the default)",
                  "reference": "random weights, HF's logits recorded (for verification)"}
DEFAULT_MODEL = "shakespeare"


def resolve_model_path(name_or_path: str | Path) -> Path:
    """An existing path as is, a bundled model's name -> its bundled folder, or a released
    model's name -> the folder `minillm download` put it in (see checkpoint/locations.py)."""
    from minillm.checkpoint.locations import bundled_dir, downloads_dir

    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if name in BUNDLED_MODELS and (bundled_dir() / name / WEIGHTS_FILE).is_file():
        return bundled_dir() / name
    if name in GPT2_SIZES:
        # A checkout's weights/<name>/ still counts: downloads went there before the user cache.
        model_dir = downloads_dir() / name
        for folder in (REPO_ROOT / "weights" / name, model_dir):
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
