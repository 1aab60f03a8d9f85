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


def check_attention_mask(attention_mask, shape: tuple[int, int], chunked: bool = False) -> np.ndarray:
    """Validate a (B, past + T) attention mask: only 0 (padding) and 1 (real token), and at
    least one real token per row (a row of padding alone has nothing to attend to, and
    softmax over no keys is 0/0). Returns it as bool.

    chunked: the call fills a KV cache, and a long left padding may cover the whole of an early
    chunk; its outputs are never read, and later chunks bring the row's tokens, so an all-0 row
    is allowed then."""
    mask = np.asarray(attention_mask)
    if mask.shape != shape:
        raise ValueError(f"attention_mask must have shape (batch, cached + new) = {shape}, "
                         f"got {mask.shape}")
    if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    real = mask.astype(bool)
    empty_rows = np.flatnonzero(~real.any(axis=1))
    if empty_rows.size and not chunked:
        raise ValueError(f"attention_mask row {empty_rows[0]} is all 0: every row needs at least "
                         "one real token (1)")
    return real
