"""The loss of a batch and its gradient with respect to every weight, by hand.

    forward:   x_0 = wte[ids] + wpe[0..T-1]
               x_{l+1} = block_l(x_l)                    (the same equations as minillm.model)
               logits = LN_f(x_L) wte^T ;  loss = cross_entropy(logits, targets)
    backward:  the same steps in reverse, each layer's backward (beside its forward in
               minillm/model: layers.py, attention.py, loss.py) turning dL/d(output) into dL/d(input) and
               dL/d(its weights).

The forward records, per block, the inputs each backward needs (a `BlockTape`); nothing else
is kept. Two gradients need a sum over paths:
  - the residual stream: x_{l+1} = x_l + f(x_l), so dx_l = dx_{l+1} + (f's backward of dx_{l+1});
  - the tied embedding: wte is read by the embedding lookup and by the LM head, so its gradient
    is the head's (dlogits^T h) plus the lookup's (a scatter-add of dx_0 into the rows of ids,
    where a repeated id adds once per occurrence).

Shapes: B batch, T positions, C = n_embd, H heads of d = C / H, V = vocab_size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minillm.model.attention import merge_heads, split_heads
from minillm.model.backends import TrainingBackend
from minillm.model.inputs import check_token_ids
from minillm.model.params import HF_BLOCK_NAMES, BlockParams


@dataclass
class BlockTape:
    """What one block's backward needs from its forward."""
    x: np.ndarray          # (B, T, C)   block input
    h1: np.ndarray         # (B, T, C)   LN_1(x)
    q: np.ndarray          # (B, H, T, d)
    k: np.ndarray          # (B, H, T, d)
    v: np.ndarray          # (B, H, T, d)
    heads: np.ndarray      # (B, H, T, d) attention output
    saved: object          # the backend's attention statistics (or None)
    merged: np.ndarray     # (B, T, C)   heads side by side, input of c_proj
    x1: np.ndarray         # (B, T, C)   x + attention: input of the MLP half
    h2: np.ndarray         # (B, T, C)   LN_2(x1)
    fc: np.ndarray         # (B, T, 4C)  c_fc output, GELU's input
    act: np.ndarray        # (B, T, 4C)  GELU(fc), input of the down-projection


def block_forward(x: np.ndarray, p: BlockParams, n_head: int, eps: float, backend):
    """One block, as minillm.model.GPT2._block computes it, keeping its tape.  x: (B, T, C)"""
    h1 = backend.layer_norm(x, p.ln_1_gain, p.ln_1_bias, eps)             # (B, T, C)
    qkv = backend.linear(h1, p.attn_qkv_weight, p.attn_qkv_bias)          # (B, T, 3C)
    q, k, v = (split_heads(part, n_head) for part in np.split(qkv, 3, axis=-1))  # (B, H, T, d)
    heads, saved = backend.attention_train(q, k, v)                       # (B, H, T, d)
    merged = merge_heads(heads)                                           # (B, T, C)
    x1 = x + backend.linear(merged, p.attn_proj_weight, p.attn_proj_bias)  # (B, T, C)
    h2 = backend.layer_norm(x1, p.ln_2_gain, p.ln_2_bias, eps)            # (B, T, C)
    fc = backend.linear(h2, p.mlp_fc_weight, p.mlp_fc_bias)               # (B, T, 4C)
    act = backend.gelu(fc)                                                # (B, T, 4C)
    out = x1 + backend.linear(act, p.mlp_proj_weight, p.mlp_proj_bias)    # (B, T, C)
    return out, BlockTape(x, h1, q, k, v, heads, saved, merged, x1, h2, fc, act)


def block_backward(dout: np.ndarray, tape: BlockTape, p: BlockParams, eps: float, backend):
    """dL/dx of the block input and dL/d(each BlockParams field).  dout: (B, T, C)

    Returns (dx, g): dx (B, T, C) and g mapping every BlockParams field name (ln_1_gain, ...,
    mlp_proj_bias) to its gradient, shaped like the weight. Each layer's backward goes through
    `backend` (linear_backward, gelu_backward, layer_norm_backward, and attention_backward,
    which takes tape.heads and tape.saved besides q, k, v)."""
    ### BEGIN SOLUTION a6: the block's backward: both halves in reverse, the residual paths added
    g = {}
    # MLP half: out = x1 + act W_proj + b; the residual passes dout straight to x1.
    dact, g["mlp_proj_weight"], g["mlp_proj_bias"] = backend.linear_backward(dout, tape.act, p.mlp_proj_weight)
    dfc = backend.gelu_backward(dact, tape.fc)                                       # (B, T, 4C)
    dh2, g["mlp_fc_weight"], g["mlp_fc_bias"] = backend.linear_backward(dfc, tape.h2, p.mlp_fc_weight)
    dx1, g["ln_2_gain"], g["ln_2_bias"] = backend.layer_norm_backward(dh2, tape.x1, p.ln_2_gain, eps)
    dx1 += dout                                                                      # (B, T, C)

    # Attention half: x1 = x + merged W_proj + b.
    dmerged, g["attn_proj_weight"], g["attn_proj_bias"] = backend.linear_backward(dx1, tape.merged, p.attn_proj_weight)
    n_head = tape.q.shape[1]
    dheads = split_heads(dmerged, n_head)                                            # (B, H, T, d)
    dq, dk, dv = backend.attention_backward(dheads, tape.q, tape.k, tape.v, tape.heads, tape.saved)
    dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, 3C)
    dh1, g["attn_qkv_weight"], g["attn_qkv_bias"] = backend.linear_backward(dqkv, tape.h1, p.attn_qkv_weight)
    dx, g["ln_1_gain"], g["ln_1_bias"] = backend.layer_norm_backward(dh1, tape.x, p.ln_1_gain, eps)
    dx += dx1                                                                        # (B, T, C)
    return dx, g
    ### END SOLUTION


def embedding_backward(dx0: np.ndarray, ids: np.ndarray, vocab_size: int, n_positions: int):
    """x_0 = wte[ids] + wpe[positions]: scatter dx0 (B, T, C) back into the rows it read.

    Returns dwte (V, C), where row t sums dx0 over every occurrence of id t, and dwpe (P, C),
    where row i sums over the batch (positions 0..T-1; later rows get 0)."""
    ### BEGIN SOLUTION a6: the embedding's backward: scatter-add into wte's rows, sum over the batch for wpe
    B, T, C = dx0.shape
    dwte = np.zeros((vocab_size, C), dx0.dtype)
    np.add.at(dwte, ids.reshape(-1), dx0.reshape(-1, C))    # unbuffered: repeats all add
    dwpe = np.zeros((n_positions, C), dx0.dtype)
    dwpe[:T] = dx0.sum(axis=0)
    return dwte, dwpe
    ### END SOLUTION


def check_training_batch(ids, targets, config) -> tuple[np.ndarray, np.ndarray]:
    """ids and targets as (B, T) int64, or a ValueError that says what is wrong."""
    if np.ndim(ids) != 2:
        raise ValueError(f"ids must have shape (batch, T), got {np.shape(ids)}")
    ids, _ = check_token_ids(ids, config.vocab_size)
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be integers, got dtype {targets.dtype}")
    if targets.shape != ids.shape:
        raise ValueError(f"targets have shape {targets.shape} but ids have shape {ids.shape}: "
                         f"they must match (targets already shifted by one)")
    if ids.shape[1] > config.n_positions:
        raise ValueError(f"a sequence of {ids.shape[1]} tokens is longer than the model's "
                         f"context of {config.n_positions}")
    return ids, targets.astype(np.int64)


def loss_and_grads(model, ids, targets) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy of `targets` given `ids`, and its gradient for every weight.

    ids, targets: (B, T) integers, targets already shifted (targets[b, t] is the token after
    ids[b, t]), -100 where not counted. Returns (loss, grads) with grads keyed by the hub
    tensor names of `model.named_parameters()` (wte.weight once, the head being tied), each
    float32 and shaped like its weight. Runs on the model's backend ("numpy" or "numba").
    """
    config, p, backend = model.config, model.params, model.backend
    if not isinstance(backend, TrainingBackend):
        raise TypeError(f"the {getattr(backend, 'name', type(backend).__name__)!r} backend has no "
                        "backward passes: train on the 'numpy' or 'numba' backend")
    ids, targets = check_training_batch(ids, targets, config)
    B, T = ids.shape
    eps = config.layer_norm_epsilon

    x = p.wte[ids] + p.wpe[:T]                                                # (B, T, C)
    tapes = []
    for block in p.blocks:
        x, tape = block_forward(x, block, config.n_head, eps, backend)        # (B, T, C)
        tapes.append(tape)
    h = backend.layer_norm(x, p.ln_f_gain, p.ln_f_bias, eps)                  # (B, T, C)
    logits = backend.linear(h, p.wte.T)                                       # (B, T, V)
    loss, dlogits = backend.cross_entropy(logits, targets)                    # (B, T, V)
    del logits

    grads = {}
    # Tied head: logits = h wte^T, a linear layer with weight wte^T (C, V), so its backward
    # gives dh = dlogits wte and d(wte^T) = h^T dlogits, the head's part of dwte (transposed).
    dh, dwte_head_t, _ = backend.linear_backward(dlogits, h, p.wte.T)          # (B, T, C), (C, V)
    dwte_head = dwte_head_t.T                                                 # (V, C)
    del dlogits
    dx, grads["ln_f.weight"], grads["ln_f.bias"] = backend.layer_norm_backward(dh, x, p.ln_f_gain, eps)
    for i in reversed(range(len(p.blocks))):
        dx, block_grads = block_backward(dx, tapes[i], p.blocks[i], eps, backend)
        tapes[i] = None                                                       # free as we go
        for field, hub in HF_BLOCK_NAMES.items():
            grads[f"h.{i}.{hub}"] = block_grads[field]
    dwte_embed, grads["wpe.weight"] = embedding_backward(dx, ids, config.vocab_size, config.n_positions)
    grads["wte.weight"] = dwte_head + dwte_embed                              # both paths
    return loss, {name: grads[name] for name in model.named_parameters()}
