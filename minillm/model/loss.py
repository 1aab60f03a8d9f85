"""Cross-entropy of next-token logits, fused with its softmax for the backward pass.

    loss = mean over counted positions of  -log softmax(logits)[target]
         = mean of  logsumexp(logits) - logits[target]

Targets equal to IGNORE_INDEX (-100, PyTorch's and HF's convention) are not counted: padding,
or positions a caller does not want scored (the context part of a sliding evaluation window).
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """logits - logsumexp(logits) along the last axis, shifted by the max so exp cannot overflow."""
    shifted = logits - logits.max(axis=-1, keepdims=True)                   # (..., V)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))   # (..., V)


def counted_rows(logits: np.ndarray, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """logits as (N, V) rows, targets as (N,), and the indices of the counted rows, checked."""
    V = logits.shape[-1]
    logits_rows = logits.reshape(-1, V)                                      # (N, V)
    targets_rows = np.asarray(targets).reshape(-1)                           # (N,)
    if np.shape(targets) != logits.shape[:-1]:
        raise ValueError(f"targets of shape {np.shape(targets)} do not match logits of shape "
                         f"{logits.shape}: expected {logits.shape[:-1]}")
    counted = targets_rows != IGNORE_INDEX                                   # (N,) bool
    bad = counted & ((targets_rows < 0) | (targets_rows >= V))
    if bad.any():
        raise ValueError(f"target id {targets_rows[bad][0]} is out of range: targets must be in "
                         f"[0, {V}) or {IGNORE_INDEX}")
    return logits_rows, targets_rows, np.flatnonzero(counted)


def loss_rows(logits: np.ndarray, targets):
    """counted_rows, for a mean loss: a ValueError if no target is counted (0 / 0)."""
    logits_rows, targets_rows, rows = counted_rows(logits, targets)
    if len(rows) == 0:
        raise ValueError(f"every target is {IGNORE_INDEX} (ignored): there is no loss to compute")
    return logits_rows, targets_rows, rows


def negative_log_likelihood(logits: np.ndarray, targets) -> tuple[float, int]:
    """The summed -log p(target) over counted targets, and how many were counted (no gradient).
    logits: (..., V), targets: (...)."""
    logits_rows, targets_rows, rows = counted_rows(logits, targets)
    log_probs = log_softmax(logits_rows[rows])                               # (n, V)
    return float(-log_probs[np.arange(len(rows)), targets_rows[rows]].sum()), len(rows)


def cross_entropy(logits: np.ndarray, targets) -> tuple[float, np.ndarray]:
    """The mean loss over counted targets and dL/dlogits.  logits: (..., V), targets: (...).

    With p = softmax(logits) and n counted targets, the gradient of the mean is

        dL/dlogits = (p - onehot(target)) / n      on counted rows, 0 on ignored ones

    because d/dz_j [logsumexp(z) - z_t] = p_j - [j == t]. Computing it from the log-softmax
    already at hand is what "fused" means: no separate softmax backward, no V x V Jacobian.
    """
    logits_rows, targets_rows, rows = loss_rows(logits, targets)   # (N, V), (N,), counted row indices
    ### BEGIN SOLUTION a6: the mean loss and its gradient (p - onehot) / n, 0 on ignored rows
    n = np.float32(len(rows))
    log_probs = log_softmax(logits_rows)                                     # (N, V)
    loss = -log_probs[rows, targets_rows[rows]].sum() / n                    # float32, as in torch
    dlogits = np.exp(log_probs)                                              # (N, V) = p
    dlogits[rows, targets_rows[rows]] -= np.float32(1.0)                     # p - onehot
    dlogits *= np.float32(1.0) / n
    ignored = np.ones(len(targets_rows), bool)
    ignored[rows] = False
    dlogits[ignored] = 0.0
    return float(loss), dlogits.reshape(logits.shape)
    ### END SOLUTION
