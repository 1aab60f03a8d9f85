"""GPT-2: token + position embeddings, n_layer pre-LayerNorm transformer blocks, tied LM head.

    x_0 = wte[ids] + wpe[positions]                              (B, T, C)
    for each block:
        x = x + Attn(LN_1(x))                                    (B, T, C)
        x = x + MLP(LN_2(x))       MLP(h) = GELU(h W_fc + b) W_proj + b
    logits = LN_f(x) @ wte^T                                     (B, T, V)

Shapes: B batch, T tokens this call, C = n_embd, H = n_head, d = C / H, V = vocab_size.
Linear layers, attention, LayerNorm and GELU go through `self.backend` (the "numpy" backend
runs the references in layers.py and attention.py); everything else is plain NumPy, float32
throughout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minillm.inference.kv_cache import KVCache
from minillm.model.attention import merge_heads, split_heads
from minillm.model.backends import get_backend
from minillm.model.config import GPT2Config
from minillm.model.inputs import check_attention_mask, check_token_ids
from minillm.model.params import BlockParams, GPT2Params, params_to_hf
from minillm.model.quantize import embedding_rows, lm_head_weight, quantize_params, weight_dtype


@dataclass
class ForwardOutput:
    logits: np.ndarray                       # (B, T, V) or (T, V) for 1-D input
    hidden_states: list[np.ndarray] | None   # n_layer + 1 arrays, shaped like the input + (C,)


class GPT2:
    def __init__(self, config: GPT2Config, params: GPT2Params, backend="numpy"):
        self.config = config
        self.params = params
        self.backend = get_backend(backend)

    @classmethod
    def from_pretrained(cls, path: str | Path, backend="numpy", dtype: str = "float32") -> "GPT2":
        """Load a GPT-2 checkpoint: a directory with model.safetensors (+ config.json), a
        .safetensors file, or a released model name (gpt2, gpt2-medium, ...) already downloaded.

        dtype: how to hold the big matrices in memory, "float32", "float16" or "int8"
        (minillm.model.quantize); the computation stays float32 either way."""
        from minillm.checkpoint.weights import load_checkpoint, resolve_model_path

        config, params = load_checkpoint(resolve_model_path(path))
        return cls(config, quantize_params(params, dtype), backend=backend)

    def quantized(self, dtype: str) -> "GPT2":
        """This model with its weights in `dtype` ("float16" or "int8"), same backend."""
        return GPT2(self.config, quantize_params(self.params, dtype), backend=self.backend)

    @property
    def weight_dtype(self) -> str:
        """"float32", "float16" or "int8": how the weights are held."""
        return weight_dtype(self.params)

    def set_backend(self, backend) -> None:
        """Switch the kernels used from now on: "numpy", "numba" or "cuda"."""
        self.backend = get_backend(backend)

    def named_parameters(self) -> dict[str, np.ndarray]:
        """The model's own arrays keyed by hub tensor name (`wte.weight` once: the head is tied).

        The arrays are not copies: updating one in place (as an optimiser does) updates the model."""
        if self.weight_dtype != "float32":
            raise ValueError(f"the weights are held as {self.weight_dtype}, for inference only: "
                             f"train (or save) the float32 model, loaded with dtype='float32'")
        return params_to_hf(self.params)

    def __call__(self, ids, **kwargs) -> np.ndarray:
        """Logits for every position: (T,) ids -> (T, V); (B, T) ids -> (B, T, V)."""
        return self.forward(ids, **kwargs).logits

    # ----------------------------------------------------------------------------------------
    def forward(self, ids, *, attention_mask=None, cache: KVCache | None = None,
                output_hidden_states: bool = False, last_only: bool = False) -> ForwardOutput:
        """Run the model on `ids`, continuing after `cache.length` cached positions if given.

        attention_mask: (B, past + T), 1 for real tokens and 0 for (left) padding, covering
        the cached positions too (HF's convention). Positions count real tokens only, so a
        left-padded prompt gets the same positions, and logits, as the prompt alone.
        hidden_states follow HF: the embeddings, the input of each later block, and the
        final LayerNorm's output (n_layer + 1 arrays).
        last_only: compute logits for the last position only, (B, 1, V) — all that choosing
        the next token needs, and it skips (T - 1) / T of the LM head's work.
        """
        ids, squeeze = check_token_ids(ids, self.config.vocab_size)       # (B, T) int64
        key_valid, positions = self._positions(ids.shape, attention_mask, cache)

        p = self.params
        x = self._embed(ids, positions)                                   # (B, T, C)
        if cache is not None and ids.shape[1] == 1 and key_valid is None and not output_hidden_states:
            logits = self._whole_step(x, cache)                           # (B, 1, V) or None
            if logits is not None:
                cache.advance(1)
                return _output(logits, None, squeeze)
        hidden = [x]
        for layer, block in enumerate(p.blocks):
            x = self._block(x, block, layer, cache, key_valid)            # (B, T, C)
            hidden.append(x)
        x = self._layer_norm(x, p.ln_f_gain, p.ln_f_bias)                 # (B, T, C)
        hidden[-1] = x
        logits = self._lm_head(x[:, -1:] if last_only else x)             # (B, T or 1, V)

        if cache is not None:
            cache.advance(ids.shape[1])
        return _output(logits, hidden if output_hidden_states else None, squeeze)

    def _whole_step(self, x: np.ndarray, cache: KVCache) -> np.ndarray | None:
        """Logits (B, 1, V) of one new token of each of B sequences, if the backend runs a
        decoding step as one kernel (NumbaBackend: minillm/kernels/decode_step_cpu.py, tested
        against the loop over the blocks below); None if it does not. x: the tokens'
        embeddings (B, 1, C)."""
        decode_step = getattr(self.backend, "decode_step", None)
        logits = None if decode_step is None else decode_step(self.params, self.config, x, cache)
        return None if logits is None else logits.reshape(x.shape[0], 1, -1)

    def _embed(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Token embedding + position embedding.  ids, positions: (B, T) -> (B, T, C)"""
        return embedding_rows(self.params.wte, ids) + self.params.wpe[positions]

    def _block(self, x: np.ndarray, p: BlockParams, layer: int,
               cache: KVCache | None, key_valid: np.ndarray | None) -> np.ndarray:
        """One pre-LayerNorm transformer block.  x: (B, T, C) -> (B, T, C)"""
        H = self.config.n_head

        h = self._layer_norm(x, p.ln_1_gain, p.ln_1_bias)                 # (B, T, C)
        qkv = self.backend.linear(h, p.attn_qkv_weight, p.attn_qkv_bias)  # (B, T, 3C)
        C = x.shape[-1]     # views by slicing: what np.split returns, without its ~20 us a call
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]      # 3 x (B, T, C)
        q, k, v = split_heads(q, H), split_heads(k, H), split_heads(v, H)  # 3 x (B, H, T, d)
        if cache is not None:
            k, v = cache.update(layer, k, v)                              # (B, H, past+T, d)
        heads = self.backend.attention(q, k, v, key_valid)                # (B, H, T, d)
        attn = self.backend.linear(merge_heads(heads), p.attn_proj_weight, p.attn_proj_bias)
        x = x + attn                                                      # (B, T, C)

        ### BEGIN SOLUTION a3: the MLP half of the block (LN_2, fc, GELU, proj, residual)
        h = self._layer_norm(x, p.ln_2_gain, p.ln_2_bias)                 # (B, T, C)
        h = self.backend.gelu(self.backend.linear(h, p.mlp_fc_weight, p.mlp_fc_bias))  # (B, T, 4C)
        return x + self.backend.linear(h, p.mlp_proj_weight, p.mlp_proj_bias)  # (B, T, C)
        ### END SOLUTION

    def _layer_norm(self, x: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """LayerNorm over the last axis with the model's epsilon.  (..., C) -> (..., C)"""
        return self.backend.layer_norm(x, gain, bias, self.config.layer_norm_epsilon)

    def _lm_head(self, x: np.ndarray) -> np.ndarray:
        """Logits from the tied embedding: x (B, T, C) @ wte^T (C, V) -> (B, T, V)"""
        return self.backend.linear(x, lm_head_weight(self.params.wte))

    # ----------------------------------------------------------------------------------------
    def _positions(self, shape: tuple[int, int], attention_mask, cache: KVCache | None):
        """Key padding mask (B, past+T) bool or None, and the (B, T) position of each new token."""
        B, T = shape
        past = 0 if cache is None else cache.length
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"cache holds {cache.batch_size} sequences but ids have batch size {B}")
        if past + T > self.config.n_positions:
            raise ValueError(f"sequence of {past + T} tokens ({past} cached + {T} new) is longer "
                             f"than the model's context of {self.config.n_positions}")
        if attention_mask is None:
            return None, np.broadcast_to(np.arange(past, past + T), (B, T))
        key_valid = check_attention_mask(attention_mask, (B, past + T), chunked=cache is not None)
        # Position = number of real tokens before this one; padding positions are never read.
        positions = np.cumsum(key_valid, axis=1)[:, past:] - 1    # (B, T)
        return key_valid, np.maximum(positions, 0)

    # ----------------------------------------------------------------------------------------
    def generate(self, ids, max_new_tokens: int | None = None, **kwargs) -> np.ndarray:
        """Prompt + new ids; the arguments are minillm.inference.generate.GenerationConfig's."""
        from minillm.inference.generate import generate
        return generate(self, ids, max_new_tokens, **kwargs)

    def stream(self, ids, max_new_tokens: int | None = None, **kwargs):
        """Yield new token ids one at a time; see minillm.inference.generate.stream."""
        from minillm.inference.generate import stream
        return stream(self, ids, max_new_tokens, **kwargs)


def _output(logits: np.ndarray, hidden: list[np.ndarray] | None, squeeze: bool) -> ForwardOutput:
    """The forward pass's result, 1-D input giving 1-D-shaped output (the batch axis dropped)."""
    if squeeze:
        logits = logits[0]
        hidden = None if hidden is None else [h[0] for h in hidden]
    return ForwardOutput(logits, hidden)
