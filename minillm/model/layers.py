"""The elementwise and per-row pieces of a GPT-2 block: LayerNorm, GELU, softmax, linear.

Every function takes and returns float32 arrays; shapes are written as (..., C) where the
leading axes are any batch/time axes and C is the feature width.
"""
from __future__ import annotations

import numpy as np

# sqrt(2/pi) from the tanh approximation of GELU (Hendrycks & Gimpel, 2016), the form GPT-2 uses.
_GELU_TANH_SCALE = np.float32(np.sqrt(2.0 / np.pi))
_GELU_CUBIC = np.float32(0.044715)


def layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """y = (x - mean) / sqrt(var + eps) * gain + bias, statistics over the last axis.

    x: (..., C); gain, bias: (C,). var is the biased (1/C) variance, as in PyTorch.
    """
    ### BEGIN SOLUTION a3: LayerNorm over the last axis
    mean = x.mean(axis=-1, keepdims=True)                      # (..., 1)
    centered = x - mean                                        # (..., C)
    var = (centered * centered).mean(axis=-1, keepdims=True)   # (..., 1)
    inv_std = 1.0 / np.sqrt(var + np.float32(eps))             # (..., 1); eps as float32 keeps float32
    return centered * inv_std * gain + bias                    # (..., C)
    ### END SOLUTION


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).  (...) -> (...)

    GPT-2 was trained with this approximation, not the exact erf form; the two differ by up
    to ~1e-3, which a 1e-4 logit check notices.
    """
    ### BEGIN SOLUTION a3: GELU in GPT-2's tanh form
    inner = _GELU_TANH_SCALE * (x + _GELU_CUBIC * x * x * x)
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))
    ### END SOLUTION


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along axis; subtracting the max avoids overflow.

    A row that is entirely -inf (every position masked) returns zeros instead of NaN.
    """
    ### BEGIN SOLUTION a2: numerically stable softmax
    row_max = x.max(axis=axis, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, np.float32(0.0))
    weights = np.exp(x - row_max)
    total = weights.sum(axis=axis, keepdims=True)
    return weights / np.where(total > 0, total, np.float32(1.0))
    ### END SOLUTION


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x @ W + b with W stored [in, out], the layout of GPT-2's Conv1D.  (..., in) -> (..., out)"""
    out = x @ weight
    if bias is not None:
        out += bias
    return out
