"""Checking the token ids a model is given, before any work is done on them."""
from __future__ import annotations

import numpy as np


def check_token_ids(ids, vocab_size: int) -> tuple[np.ndarray, bool]:
    """Validate token ids: (T,) or (B, T), integers in [0, vocab_size), T >= 1.

    Returns them as (B, T) int64 and whether the input was 1-D. TypeError for a non-integer
    dtype, ValueError for a bad shape or an id out of range. `GPT2.forward` and `generate`
    both check their ids here (a module of its own, so that generation needs nothing of gpt2.py).
    """
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
    if ids.ndim not in (1, 2) or ids.shape[-1] == 0:
        raise ValueError(f"token ids must have shape (T,) or (B, T) with T >= 1, got {ids.shape}")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        raise ValueError(f"token id {ids[bad].flat[0]} is out of range: ids must be in [0, {vocab_size})")
    squeeze = ids.ndim == 1
    return (ids[None, :] if squeeze else ids).astype(np.int64), squeeze
