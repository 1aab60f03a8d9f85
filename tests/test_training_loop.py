"""The training loop end to end on small real text: it learns, it resumes bit for bit, it stops
cleanly on Ctrl-C, and every bad input is a clear error that loses nothing."""
import json
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from minillm.cli import main
from minillm.model.gpt2 import GPT2
from minillm.training import TrainConfig, TrainingError, loop, train
from minillm.training.data import DataError
from minillm.checkpoint.weights import read_safetensors

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data" / "shakespeare"


@pytest.fixture(autouse=True)
def one_blas_thread():
    # Tiny matmuls on an oversubscribed machine (pytest-xdist workers) are 10-20x slower
    # with OpenBLAS's spinning threads than on one thread.
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """300 KB of the training plays and 40 KB of a held-out play, and a 512-token BPE of them."""
    from minillm.tokenizer.train import train_bpe
    folder = tmp_path_factory.mktemp("data")
    train_text = (SHAKESPEARE / "train.txt").read_text(encoding="utf-8")[:300_000]
    (folder / "train.txt").write_text(train_text, encoding="utf-8")
    (folder / "val.txt").write_text((SHAKESPEARE / "val.txt").read_text(encoding="utf-8")[:40_000],
                                    encoding="utf-8")
    train_bpe([train_text], 512).save(folder / "tokenizer")
    return folder


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    settings = dict(data=str(data), out=str(out), tokenizer=str(data / "tokenizer"), n_layer=2,
                    n_head=2, n_embd=32, context=32, batch_size=4, steps=8, eval_interval=4,
                    warmup_steps=2, lr=3e-3, eval_windows=4)
    return TrainConfig(**{**settings, **changes})


def unigram_entropy(tokens: np.ndarray) -> float:
    """H = -sum p log p of the token frequencies: the loss of the best model that ignores context."""
    p = np.bincount(tokens) / len(tokens)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def test_validation_loss_falls_well_below_the_unigram_entropy(small_data, tmp_path):
    config = tiny_config(small_data, tmp_path / "run", n_embd=64, context=64, batch_size=16,
                         steps=300, eval_interval=100, warmup_steps=20, lr=5e-3, eval_windows=32)
    result = train(config, progress=False)
    entropy = unigram_entropy(np.fromfile(tmp_path / "run" / "tokens" / "train.bin", np.uint16))
    assert result.val_loss < entropy - 0.8, (result.val_loss, entropy)   # measured: 3.98 vs 5.17
    val_losses = [r["val_loss"] for r in map(json.loads, open(tmp_path / "run" / "log.jsonl")) if "val_loss" in r]
    assert len(val_losses) == 3 and val_losses[-1] < val_losses[0]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 10_000


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_resuming_continues_bit_for_bit(small_data, tmp_path, backend):
    whole = tiny_config(small_data, tmp_path / "whole", backend=backend)
    train(whole, progress=False)
    parts = replace(whole, out=str(tmp_path / "parts"))
    first = train(parts, progress=False, stop_after=3)
    assert first.interrupted and first.step == 3
    assert json.loads((tmp_path / "parts" / "trainer_state.json").read_text())["step"] == 3
    train(parts, resume=True, progress=False)
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = read_safetensors(tmp_path / "whole" / name), read_safetensors(tmp_path / "parts" / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name


def test_ctrl_c_finishes_the_step_saves_and_resumes(small_data, tmp_path):
    config = tiny_config(small_data, tmp_path / "run", steps=100_000, eval_interval=100_000)
    # what was installed before (pytest's default, or what a test runner's worker chose)
    handler_before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        result = train(config, progress=False)
    finally:
        timer.cancel()
    assert result.interrupted and 0 < result.step < config.steps
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["step"] == result.step
    assert signal.getsignal(signal.SIGINT) is handler_before                 # handler restored
    resumed = train(replace(config, steps=result.step + 2), resume=True, progress=False)
    assert resumed.step == result.step + 2 and not resumed.interrupted


def test_checkpoint_is_a_complete_hf_folder(small_data, tmp_path):
    train(tiny_config(small_data, tmp_path / "run"), progress=False)
    run = tmp_path / "run"
    hf_config = json.loads((run / "config.json").read_text())
    assert hf_config["model_type"] == "gpt2" and hf_config["vocab_size"] == 512
    assert hf_config["eos_token_id"] == hf_config["bos_token_id"] == 511     # <|endoftext|>
    assert "lm_head.weight" not in read_safetensors(run / "model.safetensors")  # tied
    from minillm.checkpoint.pretrained import tokenizer_for
    model, tokenizer = GPT2.from_pretrained(run), tokenizer_for(run)
    assert tokenizer.n_vocab == model.config.vocab_size == 512
    text = "ROMEO:\nBut soft, what light"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_fine_tuning_starts_from_the_init_weights(small_data, tmp_path):
    train(tiny_config(small_data, tmp_path / "base"), progress=False)
    start = GPT2.from_pretrained(tmp_path / "base").named_parameters()
    tuned = tiny_config(small_data, tmp_path / "tuned", init=str(tmp_path / "base"), steps=1,
                        eval_interval=1, warmup_steps=0, lr=1e-6, weight_decay=0.0)
    train(tuned, progress=False)
    after = GPT2.from_pretrained(tmp_path / "tuned").named_parameters()
    assert all(np.abs(after[k] - start[k]).max() < 1e-5 for k in start)     # one tiny step away


def test_training_step_stays_float32(small_data, tmp_path):
    """Every array the backend receives or returns during a training step is float32."""
    seen = []

    class Float32Checker:
        def __init__(self, backend):
            self.backend = backend

        def __getattr__(self, name):
            method = getattr(self.backend, name)

            def checked(*args):
                result = method(*args)
                outputs = result if isinstance(result, tuple) else (result,)
                for a in (*args, *outputs):
                    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                        seen.append((name, a.dtype))
                return result
            return checked

    from minillm.training import loss_and_grads
    model = GPT2.from_pretrained(Path(__file__).parent / "data" / "training_reference")
    model.backend = Float32Checker(model.backend)
    rng = np.random.default_rng(0)
    loss, grads = loss_and_grads(model, rng.integers(0, 67, (2, 9)), rng.integers(0, 67, (2, 9)))
    assert seen and all(dtype == np.float32 for _, dtype in seen), set(seen)
    assert all(g.dtype == np.float32 for g in grads.values())


# ---- bad input -----------------------------------------------------------------------------
def test_data_shorter_than_one_window_is_refused(small_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text((small_data / "train.txt").read_text()[:5000])
    (data / "val.txt").write_text("Exeunt.")
    with pytest.raises(DataError, match="fewer than one window"):
        train(replace(tiny_config(small_data, tmp_path / "run"), data=str(data)), progress=False)


def test_a_vocabulary_that_does_not_match_the_tokenizer_is_refused(small_data, tmp_path):
    with pytest.raises(ValueError, match="vocab_size 600 but its tokenizer has 512"):
        train(tiny_config(small_data, tmp_path / "run", vocab_size=600), progress=False)


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(small_data, tmp_path, monkeypatch):
    real, calls = loop.loss_and_grads, []

    def nan_at_step_6(model, ids, targets):
        calls.append(1)
        loss, grads = real(model, ids, targets)
        return (float("nan") if len(calls) == 6 else loss), grads

    monkeypatch.setattr(loop, "loss_and_grads", nan_at_step_6)
    config = tiny_config(small_data, tmp_path / "run")
    with pytest.raises(TrainingError, match=r"loss nan at step 6.*checkpoint \(step 4\) is kept"):
        train(config, progress=False)
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["step"] == 4


def test_an_output_folder_with_another_run_is_refused_unless_asked(small_data, tmp_path):
    config = tiny_config(small_data, tmp_path / "run", steps=4)
    train(config, progress=False)
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(config, progress=False)
    assert train(config, overwrite=True, progress=False).step == 4
    log_steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "log.jsonl")]
    assert log_steps.count(1) == 1                         # the old run's log went with it


def test_resume_needs_optimiser_state_and_the_same_shape(small_data, tmp_path):
    config = tiny_config(small_data, tmp_path / "run", steps=4)
    with pytest.raises(TrainingError, match="holds no training run"):
        train(config, resume=True, progress=False)
    train(config, progress=False)
    with pytest.raises(TrainingError, match="n_layer=2, but n_layer=3 was given"):
        train(replace(config, n_layer=3), resume=True, progress=False)
    (tmp_path / "run" / "optimizer.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no optimizer.safetensors"):
        train(replace(config, steps=6), resume=True, progress=False)


# ---- the command ---------------------------------------------------------------------------
def test_cli_trains_and_reports(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(small_data), "--out", str(out), "--tokenizer", str(small_data / "tokenizer"),
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context", "16", "--batch-size", "2",
            "--steps", "3", "--warmup-steps", "1", "--eval-interval", "3", "--eval-windows", "2",
            "--lr", "1e-3", "--seed", "1", "--backend", "numpy", "--quiet"]
    assert main(args) == 0
    assert "finished at step 3" in capsys.readouterr().out
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["config"]["seed"] == 1 and state["config"]["n_embd"] == 16
    assert main(args) == 2                                   # the folder holds a run now
    error = capsys.readouterr().err
    assert error.startswith("minillm train: ") and "--resume" in error and "Traceback" not in error
    assert main(["train", "--out", str(out), "--steps", "4", "--resume", "--quiet"]) == 0


def test_cli_reads_a_config_file_and_flags_win(small_data, tmp_path, capsys):
    config_file = tmp_path / "run.toml"
    config_file.write_text(f'data = "{small_data}"\nout = "run"\ntokenizer = "{small_data / "tokenizer"}"\n'
                           'n_layer = 1\nn_head = 2\nn_embd = 16\ncontext = 16\nbatch_size = 2\n'
                           'steps = 5\nwarmup_steps = 1\neval_interval = 2\neval_windows = 2\n')
    assert main(["train", "--config", str(config_file), "--steps", "2", "--quiet"]) == 0
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())   # out: beside the file
    assert state["step"] == 2 and state["config"]["n_embd"] == 16
    config_file.write_text("n_layers = 2\n")
    assert main(["train", "--config", str(config_file)]) == 2
    assert "unknown setting(s) ['n_layers']" in capsys.readouterr().err


def test_a_half_replaced_checkpoint_is_refused_on_resume(small_data, tmp_path):
    config = tiny_config(small_data, tmp_path / "run", steps=8)
    train(config, progress=False, stop_after=4)
    older = (tmp_path / "run" / "optimizer.safetensors").read_bytes()
    train(config, resume=True, progress=False, stop_after=6)
    (tmp_path / "run" / "optimizer.safetensors").write_bytes(older)   # as if the save stopped midway
    with pytest.raises(ValueError, match="optimizer.safetensors is not the one trainer_state.json"):
        train(config, resume=True, progress=False)


def test_resuming_a_finished_run_reports_its_saved_losses(small_data, tmp_path):
    config = tiny_config(small_data, tmp_path / "run", steps=4)
    done = train(config, progress=False)
    again = train(config, resume=True, progress=False)
    assert (again.step, again.train_loss, again.val_loss) == (4, done.train_loss, done.val_loss)
