"""A short training run, start to finish: it learns, it follows its schedule, and the folder it
writes is a GPT-2 checkpoint that Hugging Face transformers' GPT2LMHeadModel loads as it is.

The run (RUN below): a 2-layer, 32-wide GPT-2 with 2 heads, trained for 200 steps of 8 windows
of 32 tokens (51k tokens, a few seconds on one CPU core) on the first 200 KB of
data/shakespeare/train.txt, validated on the first 20 KB of val.txt, with the 512-token BPE of
tests/data/minillm_checkpoint. Every random choice is seeded, so the run is the same every time.

Measured on this run, the validation loss (nats per token) that the run reaches:

    AdamW, clipping and the schedule as assignment 7 asks       4.56
    Adam with L2 regularisation (decay added to the gradient)   4.97
    the best model that ignores context (the unigram entropy)   5.09
    the learning rate stuck at 1% of its peak                   5.74
    plain SGD (p -= lr g) at the same learning rate             5.91
    no update at all (the initial model)                        6.23
    v in place of sqrt(v) in the denominator                    26 (diverges)
    the update's sign flipped                                   176 (diverges)

so VAL_LOSS_THRESHOLD = 4.8 passes the solution with a margin of 0.24 and fails every broken
optimiser above, including the one that still learns a little. Subtler bugs train almost as
well (no bias correction: 4.61, no clipping: 4.55, no warm-up: 4.74); the comparisons with
torch in tests/test_training_reference.py catch those.

The text is tokenised with the readable BPE of assignment 1 (minillm.tokenizer.bpe), the model
runs on the numpy backend: the run needs assignments 1, 2, 3 and 6 done.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from minillm.checkpoint.hf_config import SUPPORTED_SETTINGS, config_from_json
from minillm.checkpoint.safetensors_file import read_header
from minillm.checkpoint.weights import load_checkpoint
from minillm.model.gpt2 import GPT2
from minillm.tokenizer.bpe import Tokenizer
from minillm.training import TrainConfig, learning_rate, loop, train
from minillm.training.data import eval_windows

pytestmark = pytest.mark.assignment(7, uses=[1, 2, 3, 6])

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "data" / "minillm_checkpoint"
RUN = dict(n_layer=2, n_head=2, n_embd=32, context=32, batch_size=8, steps=200, lr=1e-2,
           min_lr=1e-3, warmup_steps=10, weight_decay=0.1, grad_clip=1.0, eval_interval=100,
           eval_windows=64, seed=0, backend="numpy")
VAL_LOSS_THRESHOLD = 4.8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config, result, folder) of the run, trained once for the whole module."""
    data = tmp_path_factory.mktemp("data")
    for name, chars in (("train.txt", 200_000), ("val.txt", 20_000)):
        text = (REPO / "data" / "shakespeare" / name).read_text(encoding="utf-8")[:chars]
        (data / name).write_text(text, encoding="utf-8")
    out = tmp_path_factory.mktemp("run") / "small"
    config = TrainConfig(data=str(data), out=str(out), tokenizer=str(TOKENIZER), **RUN)
    # One BLAS thread: tiny matmuls on a shared machine are much slower with more.
    with pytest.MonkeyPatch.context() as patch, threadpool_limits(1):
        patch.setattr(loop, "tokenizer_for", Tokenizer.from_pretrained)   # the readable BPE
        result = train(config, progress=False)
    return config, result, out


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_the_run_gets_below_the_validation_loss_threshold(run):
    config, result, out = run
    assert result.step == config.steps and not result.interrupted
    assert result.val_loss < VAL_LOSS_THRESHOLD, (
        f"validation loss {result.val_loss:.3f} after {config.steps} steps; the solution "
        f"reaches 4.56, a model that ignores context 5.09 at best")
    val_losses = [r["val_loss"] for r in read_log(out) if "val_loss" in r]
    assert len(val_losses) == 2 and val_losses[1] < val_losses[0]


def test_every_step_follows_the_schedule(run):
    """One log line per step, with the schedule's learning rate of that step (the schedule
    itself is checked against torch's in tests/test_training_reference.py), a finite gradient
    norm, and a first loss that is the untrained model's (about ln V)."""
    config, _, out = run
    steps = [r for r in read_log(out) if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, config.steps + 1))
    for s, record in enumerate(steps):
        expected = learning_rate(s, config.lr, config.warmup_steps, config.steps, config.min_lr)
        assert record["lr"] == pytest.approx(expected, rel=1e-12), f"step {s}"
        assert math.isfinite(record["loss"]) and 0 < record["grad_norm"] < math.inf, f"step {s}"
    assert steps[config.warmup_steps - 1]["lr"] == pytest.approx(config.lr)     # the peak
    assert steps[0]["loss"] == pytest.approx(math.log(512), abs=0.05)   # before any update
    losses = [r["loss"] for r in steps]
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 1.0


def gpt2_lm_head_tensors(V: int, P: int, C: int, n_layer: int) -> dict[str, list[int]]:
    """The tensors of a GPT2LMHeadModel checkpoint in the hub's names (no `transformer.`
    prefix, which HF adds when loading), Conv1D weights stored [in, out]; the LM head is tied
    to wte, so it has no tensor of its own."""
    tensors = {"wte.weight": [V, C], "wpe.weight": [P, C], "ln_f.weight": [C], "ln_f.bias": [C]}
    for i in range(n_layer):
        h = f"h.{i}."
        tensors |= {h + "ln_1.weight": [C], h + "ln_1.bias": [C],
                    h + "attn.c_attn.weight": [C, 3 * C], h + "attn.c_attn.bias": [3 * C],
                    h + "attn.c_proj.weight": [C, C], h + "attn.c_proj.bias": [C],
                    h + "ln_2.weight": [C], h + "ln_2.bias": [C],
                    h + "mlp.c_fc.weight": [C, 4 * C], h + "mlp.c_fc.bias": [4 * C],
                    h + "mlp.c_proj.weight": [4 * C, C], h + "mlp.c_proj.bias": [C]}
    return tensors


def test_the_checkpoint_is_a_gpt2_folder_that_transformers_loads(run):
    config, _, out = run
    hf = json.loads((out / "config.json").read_text(encoding="utf-8"))
    expected = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                "activation_function": "gelu_new", "vocab_size": 512, "n_positions": 32,
                "n_ctx": 32, "n_embd": 32, "n_layer": 2, "n_head": 2, "layer_norm_epsilon": 1e-5,
                "bos_token_id": 511, "eos_token_id": 511}                    # 511: <|endoftext|>
    assert {key: hf.get(key) for key in expected} == expected
    for key, supported in SUPPORTED_SETTINGS.items():       # nothing HF would read differently
        assert hf.get(key, supported[0]) in supported, key

    # The safetensors header, read by hand: exactly GPT2LMHeadModel's tensors, float32, packed.
    raw = (out / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert header.pop("__metadata__") == {"format": "pt"}                # what transformers checks
    wanted = gpt2_lm_head_tensors(512, 32, 32, 2)
    assert sorted(header) == sorted(wanted)
    assert {name: (e["dtype"], e["shape"]) for name, e in header.items()} == \
        {name: ("F32", shape) for name, shape in wanted.items()}
    spans = sorted(e["data_offsets"] for e in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - header_len
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(end - start == 4 * math.prod(header[n]["shape"]) for n, (start, end) in
               ((n, header[n]["data_offsets"]) for n in header))

    # minillm's strict checks: the header, config.json, and the loader (names, shapes, finite).
    entries, _ = read_header(out / "model.safetensors")
    assert set(entries) == set(wanted)
    assert config_from_json(out / "config.json").to_dict() == load_checkpoint(out)[0].to_dict()
    tokenizer = Tokenizer.from_pretrained(out)                           # vocab.json + merges.txt
    assert tokenizer.n_vocab == 512 and tokenizer.eot_token == 511

    # The folder holds the trained weights: reloaded, they give the logged validation loss.
    model = GPT2.from_pretrained(out)
    val = np.fromfile(out / "tokens" / "val.bin", dtype=np.uint16)
    ids, targets = eval_windows(val, config.context, config.eval_windows)
    state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["step"] == config.steps
    assert loop.evaluate(model, ids, targets, config.batch_size) == pytest.approx(state["val_loss"], rel=1e-6)
