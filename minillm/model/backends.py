"""Backends: who computes the model's heavy operations, behind one small interface.

The model is written once. Everything it computes goes through plain NumPy except the four
methods of `Backend` below: `linear` (x @ W + b, ~all of the FLOPs), `attention`
(softmax(QK^T/sqrt(d) + M) V), and `layer_norm` and `gelu`, cheap in FLOPs but elementwise
passes over (T, 4C) arrays that a fused kernel does in one loop instead of NumPy's chain of
temporaries. "numpy" is the readable reference; "numba" and "cuda" run the kernels in
`minillm.kernels`, each tested against that reference.

One optional method: `decode_step(params, config, x, cache)`, a whole decoding step of B
sequences (one new token each, x (B, 1, C), no attention_mask) in one call, returning the logits
(B, V), or None to let the model run its layers as usual (`GPT2._whole_step`). The numba backend has one
(`minillm/kernels/decode_step_cpu.py`, tested against the model's own loop).
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import numpy as np

from minillm.model import layers, loss
from minillm.model.attention import causal_attention, causal_attention_backward
from minillm.model.quantize import dequantized_linear_weight


class Backend(Protocol):
    """The contract. Every array is float32; B batch, H heads, T tokens, d head size."""

    name: str

    def linear(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        """x (..., in) @ weight (in, out) + bias (out,) -> (..., out). weight may be a
        transposed view (the LM head passes wte.T), or a minillm.model.quantize.QuantizedMatrix
        holding W^T (out, in) in float16 or int8 (a model loaded with dtype=...)."""

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  key_valid: np.ndarray | None = None) -> np.ndarray:
        """Causal attention. q (B, H, Tq, d); k, v (B, H, Tk, d), possibly views into the KV
        cache; the queries are the last Tq of the Tk positions. key_valid (B, Tk) bool marks
        real (not padding) keys, None for all. -> (B, H, Tq, d)."""

    def layer_norm(self, x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
        """LayerNorm over the last axis: x (..., C), gain and bias (C,) -> (..., C)."""

    def gelu(self, x: np.ndarray) -> np.ndarray:
        """GELU, tanh form, elementwise: (...) -> (...)."""


@runtime_checkable
class TrainingBackend(Backend, Protocol):
    """What training needs on top (minillm.training.backprop): the backward of each of the
    four operations. The "numpy" and "numba" backends have them."""

    def linear_backward(self, dy: np.ndarray, x: np.ndarray, weight: np.ndarray):
        """Gradients of y = x W + b: dy (..., out), x (..., in), weight (in, out) ->
        dx (..., in), dweight (in, out), dbias (out,)."""

    def attention_train(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, object]:
        """Causal attention over a whole window (Tq = Tk = T, no padding): q, k, v (B, H, T, d)
        -> out (B, H, T, d) and whatever the backward needs besides the inputs ("saved")."""

    def attention_backward(self, dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                           out: np.ndarray, saved) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """dq, dk, dv (B, H, T, d) from dout (B, H, T, d), the forward's inputs, out and saved."""

    def gelu_backward(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        """dx (...) of GELU from dy (...) and its input x (...)."""

    def layer_norm_backward(self, dy: np.ndarray, x: np.ndarray, gain: np.ndarray,
                            eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gradients of LayerNorm: dy, x (..., C), gain (C,) -> dx (..., C), dgain, dbias (C,)."""

    def clear(self) -> None:
        """Forget anything derived from the weights (they were just updated in place)."""

    def cross_entropy(self, logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean cross-entropy over targets != -100 and its gradient: logits (..., V), targets
        (...) -> (loss, dlogits (..., V)), as minillm.model.loss.cross_entropy."""


class NumpyBackend:
    """The reference: BLAS matmul through `@`, attention exactly as written in attention.py."""

    name = "numpy"

    def linear(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        # Quantised weights: widened to float32 for this call only (the reference's way; the
        # numba backend never holds a float32 copy).
        return layers.linear(x, dequantized_linear_weight(weight), bias)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  key_valid: np.ndarray | None = None) -> np.ndarray:
        return causal_attention(q, k, v, key_valid)

    def layer_norm(self, x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
        return layers.layer_norm(x, gain, bias, eps)

    def gelu(self, x: np.ndarray) -> np.ndarray:
        return layers.gelu(x)

    def linear_backward(self, dy: np.ndarray, x: np.ndarray, weight: np.ndarray):
        return layers.linear_backward(dy, x, weight)

    def attention_train(self, q: np.ndarray, k: np.ndarray, v: np.ndarray):
        return causal_attention(q, k, v), None           # the backward recomputes P

    def attention_backward(self, dout, q, k, v, out, saved):
        return causal_attention_backward(dout, q, k, v)

    def gelu_backward(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        return layers.gelu_backward(dy, x)

    def layer_norm_backward(self, dy: np.ndarray, x: np.ndarray, gain: np.ndarray, eps: float):
        return layers.layer_norm_backward(dy, x, gain, eps)

    def cross_entropy(self, logits: np.ndarray, targets: np.ndarray):
        return loss.cross_entropy(logits, targets)

    def clear(self) -> None:
        """Nothing to forget: the reference keeps no copies of the weights."""


def _numba() -> Backend:
    from minillm.kernels.backend import NumbaBackend   # compiles (or loads) numba kernels
    return NumbaBackend()


def _cuda() -> Backend:
    from minillm.kernels.backend import CudaBackend    # needs a GPU or numba's CUDA simulator
    return CudaBackend()


# name -> a function that builds it; numba and CUDA are imported only when asked for.
BACKENDS: dict[str, Callable[[], Backend]] = {"numpy": NumpyBackend, "numba": _numba, "cuda": _cuda}


def available_backends() -> list[str]:
    return list(BACKENDS)


def get_backend(backend: str | Backend) -> Backend:
    """A backend from its name, or `backend` itself if it is already one."""
    if not isinstance(backend, str):
        # Check now: a wrong object (None, a number) would otherwise fail at the first forward.
        missing = [m for m in ("linear", "attention", "layer_norm", "gelu")
                   if not callable(getattr(backend, m, None))]
        if missing:
            raise TypeError(f"backend must be a name ({', '.join(available_backends())}) or an "
                            f"object with the Backend methods; got {backend!r} "
                            f"({type(backend).__name__}), which lacks {', '.join(missing)}")
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {available_backends()}")
    return BACKENDS[backend]()
