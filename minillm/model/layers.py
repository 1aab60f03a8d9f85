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


# ---------------------------------------------------------------------------------------------
# Backward passes. Each takes the upstream gradient dy = dL/dy (shaped like the forward's
# output) and the forward's inputs, and returns dL/d(each input), shaped like that input.
# What the forward computed cheaply (LayerNorm's statistics, GELU's tanh) is recomputed here
# rather than stored, so the training tape holds only the layer inputs.

def linear_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray):
    """y = x W + b.  dy: (..., out), x: (..., in), W: (in, out) -> dx, dW, db.

        dx = dy W^T              (..., in)
        dW = sum over rows of x^T dy    (in, out)   every row used the same W
        db = sum over rows of dy        (out,)
    """
    ### BEGIN SOLUTION a6: the backward of a linear layer: dx, dW, db
    n_in, n_out = weight.shape
    dy_rows = dy.reshape(-1, n_out)                              # (M, out)
    x_rows = x.reshape(-1, n_in)                                 # (M, in)
    dx = (dy_rows @ weight.T).reshape(x.shape)                   # (..., in)
    dweight = x_rows.T @ dy_rows                                 # (in, out)
    dbias = dy_rows.sum(axis=0)                                  # (out,)
    return dx, dweight, dbias
    ### END SOLUTION


def layer_norm_backward(dy: np.ndarray, x: np.ndarray, gain: np.ndarray, eps: float = 1e-5):
    """y = x_hat * g + b with x_hat = (x - mean) * r, r = 1 / sqrt(var + eps).  -> dx, dg, db.

    dx_hat = dy * g. Both mean and var depend on every x_j of the row, so the gradient of x_i
    collects three paths, the direct one and one through each statistic:

        dx = r * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))

    (the mean term is the path through `mean`, the x_hat term the path through `var`).
    x, dy: (..., C); gain: (C,). dg = sum of dy * x_hat and db = sum of dy over all rows.
    """
    ### BEGIN SOLUTION a6: LayerNorm's backward: dx (three paths), dgain, dbias
    C = x.shape[-1]
    mean = x.mean(axis=-1, keepdims=True)                                 # (..., 1)
    centered = x - mean                                                   # (..., C)
    inv_std = 1.0 / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + np.float32(eps))
    x_hat = centered * inv_std                                            # (..., C)
    dx_hat = dy * gain                                                    # (..., C)
    mean_dx_hat = dx_hat.mean(axis=-1, keepdims=True)                     # (..., 1)
    mean_dx_hat_x_hat = (dx_hat * x_hat).mean(axis=-1, keepdims=True)     # (..., 1)
    dx = inv_std * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat)     # (..., C)
    dgain = (dy * x_hat).reshape(-1, C).sum(axis=0)                       # (C,)
    dbias = dy.reshape(-1, C).sum(axis=0)                                 # (C,)
    return dx, dgain, dbias
    ### END SOLUTION


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """d/dx of 0.5 x (1 + tanh(u)), u = s (x + c x^3), s = sqrt(2/pi), c = 0.044715.

        dGELU/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) s (1 + 3 c x^2)

    dy, x: (...) -> dx: (...)
    """
    ### BEGIN SOLUTION a6: GELU's derivative (tanh form) times dy
    tanh_u = np.tanh(_GELU_TANH_SCALE * (x + _GELU_CUBIC * x * x * x))
    du_dx = _GELU_TANH_SCALE * (np.float32(1.0) + np.float32(3.0) * _GELU_CUBIC * x * x)
    half = np.float32(0.5)
    return dy * (half * (np.float32(1.0) + tanh_u) + half * x * (np.float32(1.0) - tanh_u * tanh_u) * du_dx)
    ### END SOLUTION
