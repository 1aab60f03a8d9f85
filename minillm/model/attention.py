"""Causal multi-head scaled-dot-product attention, the reference every kernel is tested against.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + M) V

Q: (B, H, Tq, d), K, V: (B, H, Tk, d). The Tq queries are the *last* Tq of the Tk positions
(Tq == Tk in a full forward pass; Tq == 1 when decoding with a KV cache), so query i sits at
absolute position Tk - Tq + i and may attend to keys 0..Tk - Tq + i. M is 0 where attention is
allowed and -inf where it is not (future keys, and left-padding keys in a batch).

The 1/sqrt(d_k) goes *inside* the softmax: with q, k entries of unit variance, q.k has variance
d_k, and dividing by sqrt(d_k) brings it back to 1 so the softmax does not saturate.
"""
from __future__ import annotations

import numpy as np

from minillm.model.layers import softmax


def causal_mask(n_queries: int, n_keys: int) -> np.ndarray:
    """Additive mask M: (Tq, Tk) float32, 0 where key j <= query position, -inf after it."""
    ### BEGIN SOLUTION a2: the causal mask (0 where a query may see the key, -inf after it)
    query_pos = np.arange(n_keys - n_queries, n_keys)[:, None]   # (Tq, 1) absolute positions
    key_pos = np.arange(n_keys)[None, :]                         # (1, Tk)
    return np.where(key_pos <= query_pos, np.float32(0.0), np.float32(-np.inf))
    ### END SOLUTION


def attention_mask_bias(key_valid: np.ndarray | None, n_queries: int, n_keys: int) -> np.ndarray:
    """The full additive mask: causal, plus -inf on padding keys.

    key_valid: (B, Tk) bool, False on left-padding positions, or None for no padding.
    Returns (Tq, Tk) without padding, (B, 1, Tq, Tk) with it (broadcasts over heads).
    """
    mask = causal_mask(n_queries, n_keys)                                  # (Tq, Tk)
    if key_valid is None:
        return mask
    padding = np.where(key_valid, np.float32(0.0), np.float32(-np.inf))    # (B, Tk)
    return mask[None, None, :, :] + padding[:, None, None, :]              # (B, 1, Tq, Tk)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                     key_valid: np.ndarray | None = None) -> np.ndarray:
    """softmax(Q K^T / sqrt(d) + M) V.  q: (B,H,Tq,d), k, v: (B,H,Tk,d) -> (B,H,Tq,d).

    A query whose keys are all masked (a padding row) gets a zero output, not NaN.
    """
    ### BEGIN SOLUTION a2: causal scaled dot-product attention
    n_queries, head_dim = q.shape[-2], q.shape[-1]
    n_keys = k.shape[-2]
    scale = np.float32(1.0 / np.sqrt(head_dim))
    scores = (q @ k.swapaxes(-1, -2)) * scale                              # (B, H, Tq, Tk)
    scores = scores + attention_mask_bias(key_valid, n_queries, n_keys)    # (B, H, Tq, Tk)
    weights = softmax(scores, axis=-1)                                     # (B, H, Tq, Tk)
    return weights @ v                                                     # (B, H, Tq, d)
    ### END SOLUTION


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """(B, T, C) -> (B, H, T, C/H): each head sees its own slice of the features."""
    ### BEGIN SOLUTION a2: splitting the features into heads
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
    ### END SOLUTION


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, H, T, d) -> (B, T, H*d): concatenate the heads back into the residual width."""
    ### BEGIN SOLUTION a2: merging the heads back
    B, H, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * d)
    ### END SOLUTION


def causal_attention_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray,
                              v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of O = softmax(S) V, S = Q K^T / sqrt(d) + M, for a full causal pass (Tq = Tk).

    dout, q, k, v: (B, H, T, d) -> dq, dk, dv: (B, H, T, d). P is recomputed from Q and K
    (O(T^2) memory, as in the forward). Backwards through the three steps:

        dV = P^T dO                                  O = P V
        dP = dO V^T
        dS = P * (dP - rowsum(dP * P))               softmax, row by row; rowsum(dP * P) = rowsum(dO * O)
        dQ = dS K / sqrt(d),   dK = dS^T Q / sqrt(d)    S = Q K^T / sqrt(d)

    Masked entries have P = 0, so dS is 0 there and no gradient reaches future keys.
    """
    ### BEGIN SOLUTION a6: attention's backward: dV, dP, the softmax backward dS, dQ and dK
    T, head_dim = q.shape[-2], q.shape[-1]
    scale = np.float32(1.0 / np.sqrt(head_dim))
    scores = (q @ k.swapaxes(-1, -2)) * scale + causal_mask(T, T)      # (B, H, T, T)
    weights = softmax(scores, axis=-1)                                 # (B, H, T, T)  P
    dv = weights.swapaxes(-1, -2) @ dout                               # (B, H, T, d)
    dweights = dout @ v.swapaxes(-1, -2)                               # (B, H, T, T)  dP
    row_dot = (dweights * weights).sum(axis=-1, keepdims=True)         # (B, H, T, 1)
    dscores = weights * (dweights - row_dot)                           # (B, H, T, T)  dS
    dq = (dscores @ k) * scale                                         # (B, H, T, d)
    dk = (dscores.swapaxes(-1, -2) @ q) * scale                        # (B, H, T, d)
    return dq, dk, dv
    ### END SOLUTION
