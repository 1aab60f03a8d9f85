"""Weights in fewer bits: float16, and int8 with one scale per output channel (or per block).

Why. Decoding one token multiplies one row of activations by every weight of the model once, so
its speed is set by how many bytes of weights the memory can deliver per second
(notebooks/08_systems.ipynb measures it). Halving or quartering the bytes raises that ceiling
by 2x or 4x; the arithmetic is unchanged, still float32.

Layout. A linear layer y = x W + b with W (in, out) is stored by output channel, as W^T
(out, in): output o is then one dot product along a contiguous row, read once, in order. The
token embedding wte (V, C) is already in that form for the LM head (logits = h @ wte^T), and
its rows are what the embedding lookup reads.

    float16:  w ~ f16(w)                          2 bytes a weight, relative error <= 2^-11
    int8:     w[o, i] ~ scale[o, b] * q[o, i]     b = i // block, q in [-127, 127]
              scale[o, b] = max_i |w[o, i]| / 127 over block b: the largest weight of each
              block is exact, every other is off by at most scale / 2.
              By default the block is the whole row (one scale per output channel):
              1 byte + 4 / in bytes a weight.

The block size trades accuracy for speed. Smaller blocks follow the weights' local range
(llama.cpp's q8_0 uses 32), but each block's partial sum is a horizontal add across a vector
register, which the matrix-vector kernel pays once per block and row. Measured on GPT-2 124M's
shapes (2 cores, streaming every weight once, `benchmarks/bench_matvec.py`): blocks of 128 are
1.1-1.3x slower than one scale per row, blocks of 32 ~2x, which makes int8 decoding
compute-bound instead of memory-bound. What the
blocks buy on the bundled model is small: max |logit error| against float32 0.17 (a row), 0.16
(128), 0.10 (32); held-out loss +0.0006 (a row) and +0.0004 (128) nats/token on 10k tokens.
So the default is one scale per row, and `quantize(..., block=128)` (or any divisor of the row)
is there for weights whose rows mix very different magnitudes.

Nothing here is expanded to float32 ahead of time except by `dequantize` (the reference the
kernels in minillm/kernels/matvec_cpu.py are tested against, and the NumPy backend's path).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

DTYPES = ("float32", "float16", "int8")
INT8_MAX = 127         # symmetric: -127..127, so that -q is always representable


@dataclass(frozen=True)
class QuantizedMatrix:
    """A float32 matrix M (rows, cols) stored as float16, or int8 + float32 scales per block.

    As a linear layer's weight it holds W^T: rows = out, cols = in (see the module docstring)."""

    dtype: str                    # "float16" or "int8"
    data: np.ndarray              # (rows, cols) float16 or int8, C-contiguous
    scales: np.ndarray | None     # (rows, cols // block) float32 for int8, else None

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    @property
    def block(self) -> int:
        """int8: inputs per scale (cols when there is one scale per row); 0 for float16."""
        return 0 if self.scales is None else self.data.shape[1] // self.scales.shape[1]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def dequantize(self) -> np.ndarray:
        """M as float32 (rows, cols): the reference every kernel is checked against."""
        if self.dtype == "float16":
            return self.data.astype(np.float32)
        rows, cols = self.shape
        blocks = self.data.reshape(rows, cols // self.block, self.block).astype(np.float32)
        return (blocks * self.scales[:, :, None]).reshape(rows, cols)

    def take_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows M[ids] as float32: ids (...) -> (..., cols). The embedding lookup."""
        data = self.data[ids]                                          # (..., cols)
        if self.dtype == "float16":
            return data.astype(np.float32)
        blocks = data.reshape(*data.shape[:-1], -1, self.block).astype(np.float32)
        return (blocks * self.scales[ids][..., None]).reshape(data.shape)


def quantize(matrix: np.ndarray, dtype: str, block: int | None = None) -> QuantizedMatrix:
    """Store a float32 matrix (rows, cols) as `dtype` ("float16" or "int8").

    block (int8): inputs per scale, a divisor of the row length. By default the whole row: one
    scale per output channel (the module docstring says why)."""
    if matrix.ndim != 2 or matrix.dtype != np.float32:
        raise ValueError(f"quantize expects a 2-D float32 matrix, got {matrix.dtype} {matrix.shape}")
    if dtype == "float16":
        return QuantizedMatrix("float16", _to_float16(matrix), None)
    if dtype == "int8":
        return _quantize_int8(matrix, matrix.shape[1] if block is None else block)
    raise ValueError(f"unknown weight dtype {dtype!r}; expected one of {DTYPES}")


def _to_float16(matrix: np.ndarray) -> np.ndarray:
    """Round to nearest float16; a weight beyond float16's range (65504) is an error, not inf."""
    limit = np.finfo(np.float16).max
    if not np.all(np.abs(matrix) <= limit):
        raise ValueError(f"weights up to {np.abs(matrix).max():g} do not fit float16 (max {limit:g})")
    return np.ascontiguousarray(matrix.astype(np.float16))


def _quantize_int8(matrix: np.ndarray, block: int) -> QuantizedMatrix:
    rows, cols = matrix.shape
    if not 0 < block <= cols or cols % block:
        raise ValueError(f"int8 blocks of {block} must divide the row length, got {cols}")
    blocks = matrix.reshape(rows, cols // block, block)                   # (rows, n_blocks, block)
    scales = np.abs(blocks).max(axis=2) / np.float32(INT8_MAX)           # (rows, n_blocks)
    safe = np.where(scales > 0, scales, np.float32(1.0))                 # an all-zero block stays 0
    q = np.rint(blocks / safe[:, :, None])                               # ties to even, as q8_0
    q = np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8).reshape(rows, cols)
    return QuantizedMatrix("int8", q, scales.astype(np.float32))


# ---- using them in the model ----------------------------------------------------------------
def as_linear_weight(weight: np.ndarray, dtype: str) -> np.ndarray | QuantizedMatrix:
    """A linear layer's weight (in, out) in `dtype`: float32 unchanged, else quantised W^T."""
    if dtype == "float32":
        return weight
    return quantize(np.ascontiguousarray(weight.T), dtype)


def linear_weight_shape(weight) -> tuple[int, int]:
    """(in, out) of a linear weight, whether float32 (in, out) or a QuantizedMatrix of W^T."""
    if isinstance(weight, QuantizedMatrix):
        n_out, n_in = weight.shape
        return n_in, n_out
    return weight.shape


def dequantized_linear_weight(weight) -> np.ndarray:
    """The float32 (in, out) weight a linear layer multiplies by."""
    if isinstance(weight, QuantizedMatrix):
        return weight.dequantize().T
    return weight


def embedding_rows(wte, ids: np.ndarray) -> np.ndarray:
    """wte[ids] as float32: ids (B, T) -> (B, T, C), whether wte is float32 or quantised."""
    return wte.take_rows(ids) if isinstance(wte, QuantizedMatrix) else wte[ids]


def lm_head_weight(wte):
    """The LM head's weight (C, V): wte^T; a quantised wte (V, C) already holds it by output row."""
    return wte if isinstance(wte, QuantizedMatrix) else wte.T


def weight_dtype(params) -> str:
    """"float32", "float16" or "int8": how the model's big matrices are stored."""
    return params.wte.dtype if isinstance(params.wte, QuantizedMatrix) else "float32"


LINEAR_WEIGHTS = ("attn_qkv_weight", "attn_proj_weight", "mlp_fc_weight", "mlp_proj_weight")


def quantize_params(params, dtype: str):
    """GPT2Params with the big matrices in `dtype`: every linear weight (as W^T) and wte.

    What stays float32, and why: biases, LayerNorm gains and the position embedding are <1%
    of the weights and read once per token; quantising them would buy nothing."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown weight dtype {dtype!r}; expected one of {DTYPES}")
    current = weight_dtype(params)
    if current == dtype:
        return params
    if current != "float32":
        raise ValueError(f"the weights are already {current}; quantise from the float32 model instead")
    blocks = [replace(b, **{f: as_linear_weight(getattr(b, f), dtype) for f in LINEAR_WEIGHTS})
              for b in params.blocks]
    return replace(params, wte=quantize(params.wte, dtype), blocks=blocks)


def weight_bytes(params) -> int:
    """Bytes of memory the model's parameters take, as stored (the tied head counted once)."""
    from minillm.model.params import params_to_hf

    return sum(a.nbytes for a in params_to_hf(params).values())
