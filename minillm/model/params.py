"""The arrays that make up a GPT-2 model, named once, with their shapes and their HF names.

Linear weights are stored [in, out] (the layout of GPT-2's Conv1D), so a layer is `x @ W + b`.
The LM head has no weights of its own: it reuses the token embedding (`logits = h @ wte.T`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from minillm.model.config import GPT2Config


@dataclass
class BlockParams:
    ln_1_gain: np.ndarray          # (C,)
    ln_1_bias: np.ndarray          # (C,)
    attn_qkv_weight: np.ndarray    # (C, 3C)  q, k, v projections side by side
    attn_qkv_bias: np.ndarray      # (3C,)
    attn_proj_weight: np.ndarray   # (C, C)
    attn_proj_bias: np.ndarray     # (C,)
    ln_2_gain: np.ndarray          # (C,)
    ln_2_bias: np.ndarray          # (C,)
    mlp_fc_weight: np.ndarray      # (C, 4C)
    mlp_fc_bias: np.ndarray        # (4C,)
    mlp_proj_weight: np.ndarray    # (4C, C)
    mlp_proj_bias: np.ndarray      # (C,)


@dataclass
class GPT2Params:
    wte: np.ndarray                # (V, C) token embedding, also the LM head
    wpe: np.ndarray                # (P, C) learned position embedding
    blocks: list[BlockParams]      # n_layer of them
    ln_f_gain: np.ndarray          # (C,)
    ln_f_bias: np.ndarray          # (C,)


# Field name -> the tensor name inside block `h.{i}.` of an HF GPT-2 checkpoint.
HF_BLOCK_NAMES: dict[str, str] = {
    "ln_1_gain": "ln_1.weight",
    "ln_1_bias": "ln_1.bias",
    "attn_qkv_weight": "attn.c_attn.weight",
    "attn_qkv_bias": "attn.c_attn.bias",
    "attn_proj_weight": "attn.c_proj.weight",
    "attn_proj_bias": "attn.c_proj.bias",
    "ln_2_gain": "ln_2.weight",
    "ln_2_bias": "ln_2.bias",
    "mlp_fc_weight": "mlp.c_fc.weight",
    "mlp_fc_bias": "mlp.c_fc.bias",
    "mlp_proj_weight": "mlp.c_proj.weight",
    "mlp_proj_bias": "mlp.c_proj.bias",
}
HF_TOP_NAMES: dict[str, str] = {
    "wte": "wte.weight",
    "wpe": "wpe.weight",
    "ln_f_gain": "ln_f.weight",
    "ln_f_bias": "ln_f.bias",
}


def block_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Expected shape of every BlockParams field."""
    C = config.n_embd
    return {
        "ln_1_gain": (C,), "ln_1_bias": (C,),
        "attn_qkv_weight": (C, 3 * C), "attn_qkv_bias": (3 * C,),
        "attn_proj_weight": (C, C), "attn_proj_bias": (C,),
        "ln_2_gain": (C,), "ln_2_bias": (C,),
        "mlp_fc_weight": (C, 4 * C), "mlp_fc_bias": (4 * C,),
        "mlp_proj_weight": (4 * C, C), "mlp_proj_bias": (C,),
    }


def top_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """Expected shape of every top-level GPT2Params array."""
    C = config.n_embd
    return {"wte": (config.vocab_size, C), "wpe": (config.n_positions, C),
            "ln_f_gain": (C,), "ln_f_bias": (C,)}


def hf_state_dict_shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> expected shape, for every tensor a GPT-2 checkpoint must hold."""
    shapes = {HF_TOP_NAMES[f]: s for f, s in top_shapes(config).items()}
    per_block = block_shapes(config)
    for i in range(config.n_layer):
        for field, shape in per_block.items():
            shapes[f"h.{i}.{HF_BLOCK_NAMES[field]}"] = shape
    return shapes


def params_from_hf(tensors: dict[str, np.ndarray], config: GPT2Config) -> GPT2Params:
    """Assemble GPT2Params from already-validated HF-named float32 arrays."""
    blocks = [
        BlockParams(**{f: tensors[f"h.{i}.{hf}"] for f, hf in HF_BLOCK_NAMES.items()})
        for i in range(config.n_layer)
    ]
    top = {f: tensors[hf] for f, hf in HF_TOP_NAMES.items()}
    return GPT2Params(blocks=blocks, **top)


def params_to_hf(params: GPT2Params) -> dict[str, np.ndarray]:
    """The inverse of params_from_hf: HF tensor name -> array."""
    tensors = {hf: getattr(params, f) for f, hf in HF_TOP_NAMES.items()}
    for i, block in enumerate(params.blocks):
        for f, hf in HF_BLOCK_NAMES.items():
            tensors[f"h.{i}.{hf}"] = getattr(block, f)
    return tensors


def random_params(config: GPT2Config, seed: int = 0, std: float = 0.02) -> GPT2Params:
    """GPT-2's initialisation: N(0, std) weights, zero biases, LayerNorm gain 1 / bias 0.

    The residual output projections are scaled by 1/sqrt(2 n_layer), as in the GPT-2 paper,
    so the residual stream's variance does not grow with depth. Used for benchmarks and tests.
    """
    rng = np.random.default_rng(seed)
    residual_std = std / np.sqrt(2 * config.n_layer)
    shapes = block_shapes(config)

    def normal(shape, scale):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    def block() -> BlockParams:
        arrays = {}
        for field in fields(BlockParams):
            shape = shapes[field.name]
            if field.name.endswith("gain"):
                arrays[field.name] = np.ones(shape, np.float32)
            elif field.name.endswith("bias"):
                arrays[field.name] = np.zeros(shape, np.float32)
            elif field.name in ("attn_proj_weight", "mlp_proj_weight"):
                arrays[field.name] = normal(shape, residual_std)
            else:
                arrays[field.name] = normal(shape, std)
        return BlockParams(**arrays)

    C = config.n_embd
    return GPT2Params(
        wte=normal((config.vocab_size, C), std),
        wpe=normal((config.n_positions, C), std / 2),
        blocks=[block() for _ in range(config.n_layer)],
        ln_f_gain=np.ones(C, np.float32),
        ln_f_bias=np.zeros(C, np.float32),
    )
