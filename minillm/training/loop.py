"""The training loop: draw a batch, loss and gradients, clip, AdamW, repeat; validate and save.

    for step in range(start, steps):
        lr = schedule(step)
        ids, targets = batch(seed, step)                 (B, T) each
        loss, grads = loss_and_grads(model, ids, targets)
        clip_grad_norm(grads, grad_clip); optimizer.step(grads)
        every eval_interval steps: validation loss, checkpoint, log, loss curve

Every random choice is a function of (seed, step), and the checkpoint holds the exact float32
weights and optimiser state, so stopping at any checkpoint and resuming gives bit for bit the
run that never stopped. Ctrl-C finishes the step under way, saves, and exits.
"""
from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minillm.model.config import GPT2Config
from minillm.model.loss import negative_log_likelihood
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params
from minillm.checkpoint.pretrained import TOKENIZER_FILES, check_vocab_sizes, has_tokenizer_files, tokenizer_for
from minillm.tokenizer.bpe import Tokenizer
from minillm.training import checkpoint
from minillm.training.backprop import loss_and_grads
from minillm.training.config import SHAPE_KEYS, TrainConfig
from minillm.training.data import batch_rng, check_windows, eval_windows, prepare_tokens, sample_batch
from minillm.training.optim import AdamW, clip_grad_norm, learning_rate
from minillm.training.plot import plot_loss_curve


class TrainingError(RuntimeError):
    """A run that cannot start or go on, with what was wrong and what was kept."""


@dataclass
class TrainResult:
    step: int                     # steps completed
    train_loss: float             # of the last step
    val_loss: float | None        # at the last evaluation
    interrupted: bool = False


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Run (or resume) the training run that `config` describes, in the folder config.out.

    stop_after: save and stop once this many steps are done, as a Ctrl-C would (the schedule
    still runs to config.steps, so a resumed run continues the same curve)."""
    out = Path(config.out)
    config, state = _check_out_folder(config, out, resume, overwrite)
    model, tokenizer = _load_model(config, out if state else None)
    optimizer = AdamW(model.named_parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                      eps=config.eps, weight_decay=config.weight_decay)
    start = 0
    if state:
        checkpoint.load_optimizer_state(out, optimizer, state["step"])
        start = state["step"]
    splits = prepare_tokens(Path(config.data), tokenizer, out / "tokens", config.val_fraction, config.seed)
    check_windows(splits.train, config.context, "training")
    check_windows(splits.val, config.context, "validation")
    val_ids, val_targets = eval_windows(splits.val, config.context, config.eval_windows)
    run = _Run(config, out, model, tokenizer, optimizer, (val_ids, val_targets), state or {})
    return run.loop(splits.train, start, progress, stop_after)


class _Run:
    """One run's moving parts, so the loop itself reads as the steps above."""

    def __init__(self, config, out, model, tokenizer, optimizer, val_windows, state: dict):
        self.config, self.out, self.model = config, out, model
        self.tokenizer, self.optimizer, self.val_windows = tokenizer, optimizer, val_windows
        # A resumed run starts from the saved losses (what it reports if no step is left).
        self.last_val, self.last_loss = state.get("val_loss"), state.get("train_loss", float("nan"))
        self.stop_requested = False

    def loop(self, train_tokens: np.ndarray, start: int, progress: bool, stop_after: int | None) -> TrainResult:
        c = self.config
        bar = tqdm(total=c.steps, initial=start, desc="training", disable=not progress,
                   dynamic_ncols=True)
        previous_handler = _catch_interrupt(self)
        try:
            for step in range(start, c.steps):
                began = time.perf_counter()
                ### BEGIN SOLUTION a7: one training step (learning rate, batch, gradients, clipping, AdamW)
                self.optimizer.lr = learning_rate(step, c.lr, c.warmup_steps, c.steps, c.min_lr)
                ids, targets = sample_batch(train_tokens, c.batch_size, c.context, batch_rng(c.seed, step))
                loss, grads = loss_and_grads(self.model, ids, targets)
                norm = clip_grad_norm(grads, c.grad_clip or math.inf)     # inf: measure, never clip
                self._check_finite(step, loss, norm)
                self.optimizer.step(grads)
                self.model.backend.clear()      # weights changed in place: drop derived copies
                ### END SOLUTION
                self.last_loss = loss
                tokens_per_s = ids.size / (time.perf_counter() - began)
                self._log({"step": step + 1, "loss": loss, "lr": self.optimizer.lr,
                           "grad_norm": norm, "tokens_per_s": round(tokens_per_s, 1)})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.optimizer.lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
                done = step + 1
                self.stop_requested |= stop_after is not None and done >= stop_after
                if done % c.eval_interval == 0 or done == c.steps or self.stop_requested:
                    self._evaluate_and_save(done)
                if self.stop_requested:
                    return TrainResult(done, loss, self.last_val, interrupted=True)
            return TrainResult(c.steps, self.last_loss, self.last_val)
        finally:
            bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)

    def _check_finite(self, step: int, loss: float, norm: float) -> None:
        if np.isfinite(loss) and np.isfinite(norm):
            return
        state = checkpoint.read_state(self.out)
        kept = f"the last good checkpoint (step {state['step']}) is kept in {self.out}" if state \
            else "no checkpoint had been saved yet"
        what = f"loss {loss}" if not np.isfinite(loss) else f"gradient norm {norm}"
        raise TrainingError(f"{what} at step {step + 1}: stopping before the update; {kept}. "
                            "A lower --lr or a smaller --grad-clip usually helps.")

    def _evaluate_and_save(self, step: int) -> None:
        self.last_val = evaluate(self.model, *self.val_windows, self.config.batch_size)
        self._log({"step": step, "val_loss": self.last_val})
        state = {"step": step, "config": self.config.to_dict(), "val_loss": self.last_val,
                 "train_loss": self.last_loss, "model": self.model.config.to_dict()}
        checkpoint.save_training_checkpoint(self.out, self.model, self.tokenizer, self.optimizer, state)
        plot_loss_curve(self.out / "log.jsonl", self.out / "loss.png")

    def _log(self, record: dict) -> None:
        record["time"] = round(time.time(), 2)            # wall clock, for loss against minutes
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")


def evaluate(model: GPT2, ids: np.ndarray, targets: np.ndarray, batch_size: int) -> float:
    """Mean cross-entropy (nats per token) over the windows ids, targets: (W, T) each."""
    total, count = 0.0, 0
    for start in range(0, len(ids), batch_size):
        logits = model(ids[start:start + batch_size])                 # (b, T, V)
        nll, n = negative_log_likelihood(logits, targets[start:start + batch_size])
        total, count = total + nll, count + n
    return total / count


def _catch_interrupt(run: _Run):
    """Make the first Ctrl-C ask the loop to stop after this step (and save); a second one
    interrupts at once. Returns the handler to restore, or None off the main thread."""
    def request_stop(signum, frame):
        run.stop_requested = True
        signal.signal(signal.SIGINT, restore)
        print("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit now)")
    try:
        previous = signal.signal(signal.SIGINT, request_stop)
    except ValueError:          # signal only works in the main thread
        return None
    restore = signal.SIG_DFL if previous is None else previous   # None: set outside Python
    return restore


# ---- set-up ------------------------------------------------------------------------------
def _check_out_folder(config: TrainConfig, out: Path, resume: bool, overwrite: bool):
    """The config to run and the saved state (None for a new run), refusing to mix runs."""
    state = checkpoint.read_state(out)
    if resume:
        if state is None:
            raise TrainingError(f"cannot resume: {out} holds no training run ({checkpoint.STATE_FILE} is missing)")
        return _resumed_config(config, state, out), state
    if state is not None and not overwrite:
        raise TrainingError(f"{out} already holds a training run (step {state['step']}): pass "
                            "--resume to continue it, or --overwrite to start a new one there")
    if out.is_dir() and (out / "model.safetensors").exists() and not overwrite:
        raise TrainingError(f"{out} already holds a model: pass --overwrite to replace it, or choose another --out")
    if overwrite and out.is_dir():
        for name in ("log.jsonl", "loss.png", checkpoint.STATE_FILE, checkpoint.OPTIMIZER_FILE):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return config, None


def _resumed_config(config: TrainConfig, state: dict, out: Path) -> TrainConfig:
    """config, once its model shape is known to agree with the saved run's."""
    saved = state["config"]
    for key in SHAPE_KEYS:
        if getattr(config, key) != saved.get(key):
            raise TrainingError(f"cannot resume {out}: it trains a model with {key}={saved.get(key)}, "
                                f"but {key}={getattr(config, key)} was given")
    return config


def _load_model(config: TrainConfig, resume_from: Path | None) -> tuple[GPT2, Tokenizer]:
    """The model and tokenizer to train: the saved run's, an --init checkpoint's, or new ones."""
    if resume_from is not None:
        return GPT2.from_pretrained(resume_from, backend=config.backend), tokenizer_for(resume_from)
    if config.tokenizer != "gpt2" and not has_tokenizer_files(config.tokenizer):
        raise TrainingError(f"--tokenizer {config.tokenizer} is not a folder with "
                            f"{' and '.join(TOKENIZER_FILES)} (nor 'gpt2')")
    if config.init:
        model = GPT2.from_pretrained(config.init, backend=config.backend)
        # The init checkpoint's own tokenizer if it has one, else the one named by --tokenizer.
        tokenizer = tokenizer_for(config.init if has_tokenizer_files(config.init) else config.tokenizer)
    else:
        tokenizer = tokenizer_for(config.tokenizer)
        shape = GPT2Config(vocab_size=config.vocab_size or tokenizer.n_vocab, n_positions=config.context,
                           n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head)
        model = GPT2(shape, random_params(shape, seed=config.seed, std=config.init_std), backend=config.backend)
    check_vocab_sizes(model.config.vocab_size, tokenizer.n_vocab, config.init or "the new model")
    if config.context > model.config.n_positions:
        raise TrainingError(f"context {config.context} is longer than the model's n_positions "
                            f"{model.config.n_positions}")
    return model, tokenizer
