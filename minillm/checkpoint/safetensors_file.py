"""The safetensors container: reading and writing the file format, checked byte by byte.

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
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

# Bytes per element of every dtype the safetensors format defines.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 100_000_000     # the safetensors library's own limit


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
    if not (isinstance(shape, list) and all(is_count(n) for n in shape)):
        raise CheckpointError(f"{path}: tensor '{name}' has invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(is_count, offsets))):
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


def is_count(value) -> bool:
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
