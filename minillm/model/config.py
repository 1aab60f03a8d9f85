"""GPT-2 hyper-parameters: the handful of numbers that fix every array's shape."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257      # 256 bytes + 50000 merges + <|endoftext|>
    n_positions: int = 1024      # longest context the position table covers
    n_embd: int = 768            # width C of the residual stream
    n_layer: int = 12            # number of transformer blocks
    n_head: int = 12             # attention heads per block
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPT2Config.{name} must be a positive int, got {value!r}")
        # A zero, negative or NaN epsilon would not fail here but turn LayerNorm into NaNs.
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"GPT2Config.layer_norm_epsilon must be a finite number > 0, got {eps!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        """Width d_k of one attention head."""
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPT2Config":
        """Build from a dict such as HF's config.json, ignoring keys that do not shape the model."""
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known)

    def n_params(self) -> int:
        """Parameter count with the LM head tied to the token embedding (so counted once)."""
        C, L = self.n_embd, self.n_layer
        embeddings = self.vocab_size * C + self.n_positions * C
        per_block = (
            2 * 2 * C                 # two LayerNorms (gain + bias)
            + C * 3 * C + 3 * C       # attention: fused q,k,v projection
            + C * C + C               # attention: output projection
            + C * 4 * C + 4 * C       # MLP: expand to 4C
            + 4 * C * C + C           # MLP: project back to C
        )
        return embeddings + L * per_block + 2 * C   # + final LayerNorm


# The four released GPT-2 checkpoints differ only in depth, width and head count.
GPT2_SIZES: dict[str, GPT2Config] = {
    "gpt2": GPT2Config(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPT2Config(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPT2Config(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPT2Config(n_layer=48, n_head=25, n_embd=1600),
}
