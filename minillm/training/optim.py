"""AdamW, global-norm gradient clipping and the learning-rate schedule, over named arrays.

Everything works on dicts keyed by hub tensor names (`GPT2.named_parameters()` and the grads
of `loss_and_grads`), updated in place, float32 throughout.
"""
from __future__ import annotations

import math

import numpy as np


def decays(name: str, param: np.ndarray) -> bool:
    """nanoGPT's rule: weight decay on matrices and embeddings (ndim >= 2), none on biases and
    LayerNorm gains/biases (ndim 1), which have no "size" that shrinking them would control."""
    return param.ndim >= 2


class AdamW:
    """torch.optim.AdamW, exactly: Adam with bias correction and *decoupled* weight decay.

    For each parameter p with gradient g, at step t = 1, 2, ...:

        p <- p - lr * weight_decay * p              (decay applied to p itself, not added to g)
        m <- beta1 m + (1 - beta1) g                first moment
        v <- beta2 v + (1 - beta2) g^2              second moment
        m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)     undo the zero start
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)   eps outside the sqrt

    Weight decay applies only where `decays(name, p)` (matrices and embeddings). `lr` may be
    changed between steps (the schedule sets it). State: m, v per parameter and the step count.
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        for name, p in params.items():
            if p.dtype != np.float32:
                raise TypeError(f"parameter {name} is {p.dtype}; AdamW updates float32 arrays")
            if not p.flags.writeable:
                raise ValueError(f"parameter {name} is read-only; AdamW updates arrays in place")
        self.params = params
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.step_count = 0
        self.exp_avg = {name: np.zeros_like(p) for name, p in params.items()}      # m
        self.exp_avg_sq = {name: np.zeros_like(p) for name, p in params.items()}   # v

    def step(self, grads: dict[str, np.ndarray]) -> None:
        """One update of every parameter from grads (same names, same shapes)."""
        if grads.keys() != self.params.keys():
            missing = sorted(self.params.keys() - grads.keys())
            extra = sorted(grads.keys() - self.params.keys())
            raise KeyError(f"grads must name every parameter: missing {missing}, unknown {extra}")
        ### BEGIN SOLUTION a7: the AdamW update: moments, bias corrections, decoupled weight decay
        self.step_count += 1
        beta1, beta2 = self.betas
        # Bias corrections in float64 as Python floats, the way torch computes them.
        bias1 = 1.0 - beta1 ** self.step_count
        step_size = self.lr / bias1
        bias2_sqrt = math.sqrt(1.0 - beta2 ** self.step_count)
        for name, p in self.params.items():
            g, m, v = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            if decays(name, p):
                p *= np.float32(1.0 - self.lr * self.weight_decay)
            m += np.float32(1.0 - beta1) * (g - m)      # torch's lerp: m + (1 - beta1)(g - m)
            v *= np.float32(beta2)
            v += np.float32(1.0 - beta2) * g * g
            denom = np.sqrt(v) / np.float32(bias2_sqrt) + np.float32(self.eps)
            p -= np.float32(step_size) * m / denom
        ### END SOLUTION

    def state_arrays(self) -> dict[str, np.ndarray]:
        """m and v as one flat dict, for saving: `exp_avg.<name>`, `exp_avg_sq.<name>`."""
        return ({f"exp_avg.{n}": a for n, a in self.exp_avg.items()}
                | {f"exp_avg_sq.{n}": a for n, a in self.exp_avg_sq.items()})

    def load_state_arrays(self, arrays: dict[str, np.ndarray], step_count: int) -> None:
        """The inverse of state_arrays, checking that every parameter's state is there."""
        for name, p in self.params.items():
            for key, store in ((f"exp_avg.{name}", self.exp_avg), (f"exp_avg_sq.{name}", self.exp_avg_sq)):
                if key not in arrays:
                    raise KeyError(f"optimiser state has no {key}")
                if arrays[key].shape != p.shape:
                    raise ValueError(f"optimiser state {key} has shape {arrays[key].shape}, "
                                     f"but the parameter has shape {p.shape}")
                store[name] = np.array(arrays[key], dtype=np.float32)
        self.step_count = step_count


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale every gradient by min(1, max_norm / (total_norm + 1e-6)), in place, and return the
    total norm before clipping: torch.nn.utils.clip_grad_norm_'s semantics (the 1e-6 is its
    guard against dividing by zero). total_norm = sqrt(sum over all entries of g^2): one norm
    over the whole model, so clipping keeps the update's direction."""
    ### BEGIN SOLUTION a7: clipping by the global gradient norm
    norms = np.array([np.linalg.norm(g.reshape(-1)) for g in grads.values()], np.float32)
    total_norm = np.float32(np.linalg.norm(norms))
    clip_coef = np.float32(max_norm) / (total_norm + np.float32(1e-6))
    if clip_coef < 1.0:
        for g in grads.values():
            g *= clip_coef
    return float(total_norm)
    ### END SOLUTION


def learning_rate(step: int, max_lr: float, warmup_steps: int, total_steps: int,
                  min_lr: float = 0.0) -> float:
    """Linear warm-up to max_lr over warmup_steps, then cosine decay to min_lr at total_steps.

        lr(s) = max_lr (s + 1) / warmup_steps                                   s < warmup
        lr(s) = min_lr + (max_lr - min_lr) (1 + cos(pi progress)) / 2,  progress = (s - warmup) / (total - warmup)

    Step s counts from 0. Warm-up matters for Adam: its first steps divide by a second moment
    estimated from a handful of gradients, and a small lr keeps those noisy steps small.
    """
    ### BEGIN SOLUTION a7: the linear warm-up and the cosine decay
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    ### END SOLUTION
