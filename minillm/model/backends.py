"""Backends: who does the two heavy operations of the model, matmul and attention.

The model is written once. Everything it computes goes through plain NumPy except
`linear` (x @ W + b, ~all of the FLOPs) and `attention` (softmax(QK^T/sqrt(d) + M) V),
which it asks its backend for. The "numpy" backend is the readable reference; "numba" and
"cuda" run the kernels in `minillm.kernels`, each tested against that reference.

The backend also runs `layer_norm` and `gelu`: cheap in FLOPs, but elementwise passes over
(T, 4C) arrays that a fused kernel does in one loop instead of NumPy's chain of temporaries.
"""
from __future__ import annotations

import importlib

import numpy as np

from minillm.model import layers
from minillm.model.attention import causal_attention


class NumpyBackend:
    """The reference: BLAS matmul through `@`, attention exactly as written in attention.py."""

    name = "numpy"

    def linear(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
        """(..., in) @ (in, out) + (out,) -> (..., out)"""
        return layers.linear(x, weight, bias)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  key_valid: np.ndarray | None = None) -> np.ndarray:
        """q: (B,H,Tq,d), k, v: (B,H,Tk,d), key_valid: (B,Tk) bool or None -> (B,H,Tq,d)"""
        return causal_attention(q, k, v, key_valid)

    def layer_norm(self, x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
        """(..., C) -> (..., C), statistics over the last axis"""
        return layers.layer_norm(x, gain, bias, eps)

    def gelu(self, x: np.ndarray) -> np.ndarray:
        """GELU, tanh form.  (...) -> (...)"""
        return layers.gelu(x)


# name -> "module:class"; imported on first use so numba/CUDA load only when asked for.
_BACKENDS = {
    "numpy": "minillm.model.backends:NumpyBackend",
    "numba": "minillm.kernels.backend:NumbaBackend",
    "cuda": "minillm.kernels.backend:CudaBackend",
}


def available_backends() -> list[str]:
    return list(_BACKENDS)


def get_backend(backend) -> object:
    """A backend instance from its name (or an instance, returned as is)."""
    if not isinstance(backend, str):
        return backend
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {available_backends()}")
    module_name, class_name = _BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)()
