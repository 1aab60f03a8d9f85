"""A model's parameters arranged for the decoding-step kernel (minillm.kernels.decode_step_cpu):
tuples, one entry per layer, of the model's own arrays, as numba passes them to a compiled
function; which parameters the kernel can take; and how to tell that the model still holds
the arrays an arrangement was made from.

Nothing is copied: float32 weights are passed as they are (W (in, out)), float16 as their
bits (uint16, which the kernel widens in registers), int8 as their codes and per-row scales.
tests/test_decode_step.py covers every case.
"""
from __future__ import annotations

import numpy as np

from minillm.model.quantize import LINEAR_WEIGHTS

NO_SCALES = np.zeros((0, 1), np.float32)   # `scales` of a weight that has none (numba wants one type)
VECTORS = ("ln_1_gain", "ln_1_bias", "ln_2_gain", "ln_2_bias",
           "attn_qkv_bias", "attn_proj_bias", "mlp_fc_bias", "mlp_proj_bias")


class StepWeights:
    """A model's parameters as the step kernel takes them: tuples (one entry per layer) of the
    model's own arrays, nothing copied, so that updating a weight in place is seen here too.
    `sources` keeps every parameter object it was made from: `key(params) == weights.key` says
    whether the model still holds exactly those (none replaced)."""

    def __init__(self, params):
        blocks = params.blocks
        self.dtype = _kind(params.wte)
        self.sources = _sources(params)
        self.key = tuple(map(id, self.sources))          # valid: `sources` keeps each one alive
        self.weights = tuple(tuple(_stored(getattr(b, name)) for b in blocks) for name in LINEAR_WEIGHTS)
        self.scales = tuple(tuple(_scales(getattr(b, name)) for b in blocks) for name in LINEAR_WEIGHTS)
        self.vectors = tuple(tuple(getattr(b, name) for b in blocks) for name in VECTORS)
        self.ln_f = (params.ln_f_gain, params.ln_f_bias)
        self.wte, self.wte_scales = _stored(params.wte), _scales(params.wte)
        self.n_layer, (self.n_vocab, self.width) = len(blocks), params.wte.shape


def key(params) -> tuple:
    """The identity of every parameter object the step kernel reads (compare with StepWeights.key)."""
    return tuple(map(id, _sources(params)))


def _sources(params) -> list:
    return ([getattr(b, name) for b in params.blocks for name in LINEAR_WEIGHTS + VECTORS]
            + [params.wte, params.ln_f_gain, params.ln_f_bias])


def unsupported_reason(params) -> str | None:
    """Why the step kernel cannot run these parameters, or None if it can."""
    matrices = [getattr(b, name) for b in params.blocks for name in LINEAR_WEIGHTS] + [params.wte]
    kinds = {_kind(m) for m in matrices}
    if len(kinds) != 1:
        return f"weights of mixed kinds {sorted(kinds)}"
    for m in matrices:
        array = _stored(m)
        if not array.flags.c_contiguous:
            return "a weight that is not C-contiguous"
        if _kind(m) == "float32" and array.dtype != np.float32:
            return f"a {array.dtype} weight"
        if _kind(m) == "int8" and m.scales.shape[1] != 1:
            return "int8 weights with blocked scales (the step kernel takes one scale per row)"
    vectors = [getattr(b, name) for b in params.blocks for name in VECTORS]
    vectors += [params.ln_f_gain, params.ln_f_bias]
    if not all(v.dtype == np.float32 and v.ndim == 1 and v.flags.c_contiguous for v in vectors):
        return "a bias or LayerNorm vector that is not a contiguous float32 array"
    return None


def _kind(matrix) -> str:
    return "float32" if isinstance(matrix, np.ndarray) else matrix.dtype


def _stored(matrix):
    """The array the kernels read: float32 as it is, float16 as its bits, int8 as its codes."""
    if isinstance(matrix, np.ndarray):
        return matrix
    return matrix.data.view(np.uint16) if matrix.dtype == "float16" else matrix.data


def _scales(matrix):
    return matrix.scales if _kind(matrix) == "int8" else NO_SCALES
