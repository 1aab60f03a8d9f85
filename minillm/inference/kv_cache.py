"""The KV cache: keys and values of every past position, kept so each new token costs O(T), not O(T^2).

Without a cache, generating token t re-runs the whole prefix through every layer. But a
position's key and value depend only on that position and the ones before it (the model is
causal), so they never change once computed: store them, and each step only needs the new
token's q, k, v. The cache is preallocated to the full length up front, so a step writes into
it instead of growing (and copying) arrays.
"""
from __future__ import annotations

import numpy as np

from minillm.model.config import GPT2Config


class KVCache:
    """keys[layer], values[layer]: (B, H, max_len, d) float32; positions [0, length) are filled."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_dim: int, max_len: int):
        shape = (batch_size, n_head, max_len, head_dim)
        # One block for every layer's keys and values, each a C-contiguous view into it: freed
        # and allocated again (a cache per prompt), one block comes back from the same memory,
        # where 2 x n_layer blocks were returned to the OS and faulted in page by page again
        # (~5,500 page faults, 5% of a 256-token prefill of GPT-2 124M, measured)
        storage = np.zeros((2, n_layer, *shape), np.float32)
        self.keys = list(storage[0])
        self.values = list(storage[1])
        self.max_len = max_len
        self.length = 0

    @classmethod
    def for_model(cls, config: GPT2Config, batch_size: int = 1, max_len: int | None = None) -> "KVCache":
        """A cache for `batch_size` sequences of up to max_len (default: the full context) tokens."""
        max_len = config.n_positions if max_len is None else max_len
        if not 0 < max_len <= config.n_positions:
            raise ValueError(f"max_len must be in [1, {config.n_positions}], got {max_len}")
        return cls(config.n_layer, batch_size, config.n_head, config.head_dim, max_len)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def update(self, layer: int, new_keys: np.ndarray, new_values: np.ndarray):
        """Write this step's (B, H, T_new, d) keys/values after the stored ones and return all
        (B, H, length + T_new, d) of them. The model calls advance() once every layer is done."""
        ### BEGIN SOLUTION a4: the cache update (write the new keys/values, return all of them)
        start, stop = self.length, self.length + new_keys.shape[2]
        if stop > self.max_len:
            raise ValueError(f"KV cache is full: {self.length} cached + {new_keys.shape[2]} new "
                             f"positions exceed its max_len of {self.max_len}")
        self.keys[layer][:, :, start:stop] = new_keys
        self.values[layer][:, :, start:stop] = new_values
        return self.keys[layer][:, :, :stop], self.values[layer][:, :, :stop]
        ### END SOLUTION

    def advance(self, n_new: int) -> None:
        self.length += n_new

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values))
