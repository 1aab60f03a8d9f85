"""Every setting of a training run, in one dataclass that a TOML file and CLI flags fill in.

A config file uses the field names as keys (`n_layer = 4`, `batch_size = 16`); a CLI flag is
the same name with dashes (`--n-layer 4`) and wins over the file.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class TrainConfig:
    data: str = ""                  # a .txt file (split by document) or a folder with train.txt + val.txt
    out: str = ""                   # the run's folder: checkpoint, optimiser state, log, loss curve
    tokenizer: str = "gpt2"         # "gpt2" or a folder with vocab.json + merges.txt
    init: str | None = None         # start from this checkpoint's weights (fine-tuning)
    # model shape (ignored with init, which brings its own)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    context: int = 128              # T: tokens per training window, and the model's n_positions
    vocab_size: int | None = None   # default: the tokenizer's; must equal it
    # optimisation
    batch_size: int = 16            # B windows per step
    steps: int = 1000
    lr: float = 1e-3                # peak learning rate, reached after warm-up
    min_lr: float = 1e-4            # where the cosine decay ends
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95             # nanoGPT's choice for small batches: v follows the gradients faster
    eps: float = 1e-8
    grad_clip: float = 1.0          # max global gradient norm; 0 turns clipping off
    # bookkeeping
    eval_interval: int = 100        # validate and save a checkpoint every this many steps
    eval_windows: int = 64          # validation windows of `context` tokens
    val_fraction: float = 0.1       # of a single text file's documents, held out
    seed: int = 0
    backend: str = "numpy"
    init_std: float = 0.02          # N(0, std) initial weights (GPT-2's)

    def __post_init__(self) -> None:
        positive = ("n_layer", "n_head", "n_embd", "context", "batch_size", "steps", "eval_interval",
                    "eval_windows")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "min_lr", "weight_decay", "eps", "grad_clip", "init_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


# What fixes the model's arrays: a resumed run must agree on all of them.
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "context", "vocab_size")


def load_config_file(path: str | Path) -> dict:
    """The settings of a TOML file, checked against TrainConfig's field names."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"config file {path}: {error}") from None
    unknown = sorted(set(values) - set(TrainConfig.field_names()))
    if unknown:
        raise ValueError(f"config file {path}: unknown setting(s) {unknown}; "
                         f"expected some of {TrainConfig.field_names()}")
    # Paths in a config file are relative to the file, so the command works from any folder.
    for key in ("data", "out", "init", "tokenizer"):
        if isinstance(values.get(key), str) and values[key] != "gpt2":
            values[key] = str((path.parent / values[key]).resolve())
    return values
