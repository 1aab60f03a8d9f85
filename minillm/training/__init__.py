"""Training: the loss and its gradient written by hand, AdamW, and the loop that makes weights.

    backprop.py    loss_and_grads: the forward with a tape, then every layer's backward
    optim.py       AdamW, global-norm clipping, warm-up + cosine learning rate
    data.py        text -> token ids on disk (memory-mapped) -> (B, T + 1) windows
    loop.py        train(): the loop, validation, checkpoints, resume, Ctrl-C
    checkpoint.py  a run's folder: an HF GPT-2 checkpoint plus optimiser state
    config.py      TrainConfig: every setting, from a TOML file and flags
"""
from minillm.training.backprop import loss_and_grads
from minillm.training.config import TrainConfig
from minillm.training.loop import TrainingError, train
from minillm.training.optim import AdamW, clip_grad_norm, learning_rate

__all__ = ["loss_and_grads", "AdamW", "clip_grad_norm", "learning_rate", "train", "TrainConfig",
           "TrainingError"]
