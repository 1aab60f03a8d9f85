"""A plain-torch GPT-2 with its KV cache as explicit tensors, written to be exported to ONNX.

Two entry points, one graph each:
    Prefill  ids (B, T)                       -> logits (B, V) of the last position,
                                                 key_i, value_i (B, H, T, d) per layer
    Decode   ids (B, 1), past key_i / value_i -> logits (B, V), key_i, value_i (B, H, P + 1, d)

The attention and GELU are written the way transformers' GPT2Attention used to be (a sliced
lower-triangular mask, torch.where, GELU's tanh form), the pattern that
onnxruntime.transformers.optimizer --model_type gpt2 recognises and fuses.
"""
from __future__ import annotations

import math

import torch
from torch import nn

GELU_SCALE = math.sqrt(2.0 / math.pi)


class GPT2Core(nn.Module):
    """The weights of one GPT-2 (minillm's GPT2Params, [in, out] linear layout) and its forward."""

    def __init__(self, config, params):
        super().__init__()
        # Python ints, not shapes read off tensors: the exporter keeps them as constants.
        self.n_head, self.head_dim, self.n_embd = config.n_head, config.head_dim, config.n_embd
        self.eps = config.layer_norm_epsilon
        tensor = lambda a: nn.Parameter(torch.from_numpy(a.copy()), requires_grad=False)  # noqa: E731
        self.wte, self.wpe = tensor(params.wte), tensor(params.wpe)
        self.ln_f = (tensor(params.ln_f_gain), tensor(params.ln_f_bias))
        self.blocks = nn.ModuleList()
        for block in params.blocks:
            module = nn.Module()
            for name, value in vars(block).items():
                setattr(module, name, tensor(value))
            self.blocks.append(module)
        n = config.n_positions
        self.register_buffer("causal", torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n),
                             persistent=False)
        self.register_buffer("masked", torch.tensor(torch.finfo(torch.float32).min), persistent=False)

    def forward(self, ids: torch.Tensor, past: list[tuple[torch.Tensor, torch.Tensor]] | None):
        B, T = ids.shape
        P = 0 if past is None else past[0][0].shape[2]
        positions = torch.arange(P, P + T, dtype=torch.long, device=ids.device)
        x = self.wte[ids] + self.wpe[positions]
        present = []
        for i, p in enumerate(self.blocks):
            h = nn.functional.layer_norm(x, (self.n_embd,), p.ln_1_gain, p.ln_1_bias, self.eps)
            attn, kv = self._attention(h @ p.attn_qkv_weight + p.attn_qkv_bias,
                                       None if past is None else past[i])
            present.append(kv)
            x = x + attn @ p.attn_proj_weight + p.attn_proj_bias
            h = nn.functional.layer_norm(x, (self.n_embd,), p.ln_2_gain, p.ln_2_bias, self.eps)
            x = x + _gelu(h @ p.mlp_fc_weight + p.mlp_fc_bias) @ p.mlp_proj_weight + p.mlp_proj_bias
        x = nn.functional.layer_norm(x[:, -1], (self.n_embd,), *self.ln_f, self.eps)
        return x @ self.wte.T, present                             # (B, V): the last position only

    def _attention(self, qkv: torch.Tensor, past):
        B, T, _ = qkv.shape
        H, d = self.n_head, self.head_dim
        q, k, v = (t.view(B, T, H, d).transpose(1, 2) for t in qkv.split(self.n_embd, dim=2))
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)                  # (B, H, T, P + T)
        S = k.shape[2]
        scores = torch.where(self.causal[:, :, S - T:S, :S], scores, self.masked)
        heads = torch.softmax(scores, dim=-1) @ v                          # (B, H, T, d)
        return heads.transpose(1, 2).reshape(B, T, self.n_embd), (k, v)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(GELU_SCALE * (x + 0.044715 * torch.pow(x, 3.0))))


class Prefill(nn.Module):
    def __init__(self, core: GPT2Core):
        super().__init__()
        self.core = core

    def forward(self, ids):
        logits, present = self.core(ids, None)
        return (logits, *[t for kv in present for t in kv])


class Decode(nn.Module):
    def __init__(self, core: GPT2Core):
        super().__init__()
        self.core = core

    def forward(self, ids, *past_flat):
        past = list(zip(past_flat[0::2], past_flat[1::2]))
        logits, present = self.core(ids, past)
        return (logits, *[t for kv in present for t in kv])


def kv_names(prefix: str, n_layer: int) -> list[str]:
    """key_0, value_0, key_1, ... with a prefix: the order Prefill and Decode use."""
    return [f"{prefix}{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]
