"""Bad input of every kind gives the library's own clear error, at the point of entry: config.json
files, corrupted weights, non-finite logits, wrong option types, undecodable prompts."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm.checkpoint.weights import CheckpointError, config_from_json, load_checkpoint
from minillm.inference.generate import generate
from minillm.inference.sampling import NonFiniteLogitsError, TokenChooser, apply_temperature, sample
from minillm.model.config import GPT2Config
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parents[1]
CHECKPOINT = DATA / "training_reference"          # 2 layers, 68 kB: quick to load many times
TINY = GPT2Config(vocab_size=20, n_positions=16, n_embd=8, n_layer=2, n_head=2)


def write_config(folder: Path, content) -> Path:
    path = folder / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def valid_config() -> dict:
    return json.loads((CHECKPOINT / "config.json").read_text())


# ------------------------------------------------------------------------------- config.json
@pytest.mark.parametrize("content, message", [
    (b"", r"config.json is empty"),
    (b"   \n", r"config.json is empty"),
    (b"{n_layer: 2}", r"config.json is not valid JSON: Expecting property name .* \(line 1, column 2\)"),
    (b'{"n_layer": 2,}', r"is not valid JSON"),
    (b'{"n_layer": "\xff"}', r"config.json is not UTF-8 text \(byte 0xff at offset 13\)"),
    (b"null", r"must hold a JSON object .* got a JSON null"),
    (b"[1, 2]", r"must hold a JSON object .* got a JSON array"),
    (b"12", r"got a JSON number"),
    (b"{}", r"names none of vocab_size, n_positions, n_embd, n_layer, n_head"),
    (b'{"model_type": "gpt2"}', r"names none of vocab_size"),
])
def test_config_that_is_not_a_json_object(tmp_path, content, message):
    with pytest.raises(CheckpointError, match=message):
        config_from_json(write_config(tmp_path, content))


@pytest.mark.parametrize("change, message", [
    ({"layer_norm_epsilon": "big"}, r"layer_norm_epsilon must be a finite number > 0, got 'big'"),
    ({"layer_norm_epsilon": -1}, r"layer_norm_epsilon must be a finite number > 0, got -1"),
    ({"layer_norm_epsilon": 0}, r"layer_norm_epsilon must be a finite number > 0"),
    ({"n_layer": 2.0}, r"n_layer must be a positive int, got 2.0"),
    ({"n_layer": True}, r"n_layer must be a positive int, got True"),
    ({"n_head": 5}, r"n_embd \(24\) must be divisible by n_head \(5\)"),
    ({"n_inner": 10}, r"n_inner=10 is not supported; GPT-2's MLP is 4 \* n_embd = 96 wide"),
    ({"tie_word_embeddings": False}, r"tie_word_embeddings=False is not supported"),
    ({"model_type": "llama"}, r"model_type='llama' is not supported"),
    ({"activation_function": "gelu"}, r"activation_function='gelu' is not supported"),
    ({"scale_attn_weights": False}, r"scale_attn_weights=False is not supported"),
    ({"scale_attn_weights": 1}, r"scale_attn_weights=1 is not supported"),
    ({"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx=True is not supported"),
    ({"reorder_and_upcast_attn": True}, r"reorder_and_upcast_attn=True is not supported"),
    ({"n_ctx": 32}, r"n_ctx=32 must equal n_positions=16"),
    ({"eos_token_id": 67}, r"eos_token_id=67 must be null or a token id in \[0, vocab_size=67\)"),
    ({"hidden_size": 48}, r"hidden_size=48 and n_embd=24 disagree"),
])
def test_config_fields_are_checked_at_load_time(tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message):
        config_from_json(write_config(tmp_path, {**valid_config(), **change}))


@pytest.mark.parametrize("folder", [REPO / "weights" / "reference", DATA / "training_reference",
                                    DATA / "minillm_checkpoint", REPO / "weights" / "shakespeare"])
def test_real_config_files_still_load(folder):
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} is not there")
    config = config_from_json(folder / "config.json")
    assert config.n_layer >= 1 and config.layer_norm_epsilon == 1e-5


def test_released_gpt2_config_and_hf_aliases(tmp_path):
    hub = {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
           "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
           "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
           "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
           "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
           "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True}},
           "vocab_size": 50257}
    assert config_from_json(write_config(tmp_path, hub)) == GPT2Config()
    aliased = {"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3,
               "max_position_embeddings": 16, "vocab_size": 67}
    assert config_from_json(write_config(tmp_path, aliased)) == \
        GPT2Config(vocab_size=67, n_positions=16, n_embd=24, n_layer=2, n_head=3)


def test_absurd_n_layer_is_refused_without_listing_its_tensors(tmp_path):
    folder = shutil.copytree(CHECKPOINT, tmp_path / "model")
    write_config(folder, {**valid_config(), "n_layer": 10**15})
    with pytest.raises(CheckpointError, match=r"n_layer=1000000000000000, but the checkpoint holds only"):
        load_checkpoint(folder)


def test_non_finite_weights_are_refused_at_load_time(tmp_path):
    from minillm.checkpoint.weights import save_checkpoint

    params = random_params(TINY, seed=0)
    params.blocks[1].mlp_fc_weight[0, 0] = np.nan
    folder = save_checkpoint(params, TINY, tmp_path / "nan")
    with pytest.raises(CheckpointError, match=r"tensor 'h.1.mlp.c_fc.weight' holds 1 NaN or infinite"):
        load_checkpoint(folder)


# ------------------------------------------------------------------------ non-finite logits
def model_with(change=None, config=TINY) -> GPT2:
    params = random_params(config, seed=0, std=0.3)
    if change:
        change(params)
    return GPT2(config, params)


def test_nan_weights_stop_generation_naming_the_block():
    def poison(params):
        params.blocks[1].mlp_fc_weight[:] = np.nan
    model = model_with(poison)
    for options in (dict(), dict(do_sample=True, top_p=0.9, seed=0), dict(use_cache=False)):
        with pytest.raises(NonFiniteLogitsError, match=r"NaN or inf at generation step 0: the first "
                                                       r"non-finite values appear in the output of block 1 "
                                                       r"or the final LayerNorm"):
            generate(model, [1, 2, 3], 5, **options)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_a_negative_epsilon_is_caught_in_the_first_block():
    # GPT2Config refuses eps <= 0; a model built around that check still must not print garbage.
    model = model_with()
    model.config = copy.copy(TINY)
    object.__setattr__(model.config, "layer_norm_epsilon", -1.0)
    with pytest.raises(NonFiniteLogitsError, match=r"appear in the output of block 0.*layer_norm_epsilon=-1.0"):
        generate(model, [1, 2, 3], 5)


@pytest.mark.filterwarnings("ignore:invalid value encountered", "ignore:overflow encountered")
def test_inf_in_the_embedding_and_overflowing_logits():
    def inf_wpe(params):
        params.wpe[4] = np.inf
    with pytest.raises(NonFiniteLogitsError, match=r"at generation step 3: .* in the embeddings"):
        generate(model_with(inf_wpe), [1, 2], 5)
    with pytest.raises(NonFiniteLogitsError, match=r"in row 1 of the batch"):
        generate(model_with(inf_wpe), [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]], 1,
                 attention_mask=[[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])

    def huge_head(params):            # ln_f's output stays finite; the head's dot products do not
        params.ln_f_gain[:] = 1e37
        params.wte *= 1e3
    with pytest.raises(NonFiniteLogitsError, match=r"the LM head: every hidden state is finite"):
        generate(model_with(huge_head), [1, 2], 3)


def test_a_tiny_temperature_is_computed_stably():
    logits = np.array([[1.0, 3.0, 3.0, -2.0]], dtype=np.float32)
    scaled = apply_temperature(logits, 1e-40)
    assert not np.isnan(scaled).any() and scaled[0, 1] == scaled[0, 2] == 0   # the rest -> -inf
    for temperature in (1e-40, 1e-300):
        picks = {int(sample(logits, np.random.default_rng(s), temperature=temperature, top_p=0.5)[0])
                 for s in range(20)}
        assert picks <= {1, 2}
    # Where HF's float32 division does not overflow, it is kept bit for bit.
    np.testing.assert_array_equal(apply_temperature(logits, 0.7), logits / np.float32(0.7))
    model = model_with()
    out = generate(model, [1, 2], 4, do_sample=True, temperature=1e-40, seed=0)
    np.testing.assert_array_equal(out, generate(model, [1, 2], 4))


def test_sampling_refuses_nan_logits():
    with pytest.raises(NonFiniteLogitsError, match="NaN or \\+inf"):
        sample(np.array([[0.0, np.nan, 1.0]]), np.random.default_rng(0), top_p=0.9)
    with pytest.raises(NonFiniteLogitsError, match="all -inf"):
        TokenChooser(do_sample=True)(np.full((1, 3), -np.inf))


# ------------------------------------------------------------------- backends, masks, options
@pytest.mark.parametrize("backend", [None, 123, object()])
def test_a_backend_that_is_not_one_is_a_type_error(backend):
    with pytest.raises(TypeError, match=r"backend must be a name \(numpy, numba, cuda\) or an object "
                                        r"with the Backend methods; got .* which lacks linear"):
        GPT2(TINY, random_params(TINY), backend=backend)


@pytest.mark.parametrize("mask, message", [
    ([[1, 2, 1]], r"only 0 \(padding\) and 1 \(real token\)"),
    ([[1, np.nan, 1]], r"only 0 \(padding\) and 1"),
    ([["1", "1", "1"]], r"only 0 \(padding\) and 1"),
    ([[0, 0, 0]], r"attention_mask row 0 is all 0"),
])
def test_forward_checks_the_attention_mask(mask, message):
    with pytest.raises(ValueError, match=message):
        model_with().forward([[1, 2, 3]], attention_mask=mask)


@pytest.mark.parametrize("options, message", [
    (dict(do_sample="no"), r"do_sample must be True or False, got 'no'"),
    (dict(do_sample=1), r"do_sample must be True or False, got 1"),
    (dict(use_cache="yes"), r"use_cache must be True or False, got 'yes'"),
    (dict(top_k=2.0, do_sample=True), r"top_k must be an int >= 1"),
    (dict(seed="1"), r"seed must be an int >= 0"),
    (dict(temperature="0.5"), r"temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), r"temperature must be a finite number >= 0"),
    (dict(top_p=True, do_sample=True), r"top_p must be a number in \(0, 1\]"),
])
def test_generation_options_are_type_checked(options, message):
    with pytest.raises(ValueError, match=message):
        generate(model_with(), [1, 2], 3, **options)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an int >= 1, got '3'"):
        generate(model_with(), [1, 2], "3")


# ------------------------------------------------------------------------ prompts and stdout
def run_cli(argv: list[str], encoding: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    return subprocess.run([sys.executable, "-m", "minillm", "generate", *argv], env=env, cwd=REPO,
                          capture_output=True, timeout=300)


def test_a_prompt_that_is_not_utf8_is_refused_before_loading():
    undecodable = os.fsdecode(b"caf\xe9")          # what Python makes of Latin-1 bytes in argv
    result = run_cli(["--model", "/no/such/model", undecodable], "utf-8:strict")
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith("minillm generate: the prompt is not valid UTF-8 text (byte 0xe9 at character 3)")
    assert "Traceback" not in err and err.count("\n") == 1


def test_text_the_terminal_cannot_encode_is_replaced():
    model = DATA / "minillm_checkpoint"
    result = run_cli(["--model", str(model), "--max-new-tokens", "3", "naïve 我"], "ascii:strict")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.startswith(b"na?ve ?")


def test_a_config_error_exits_1_with_one_line(tmp_path):
    folder = shutil.copytree(DATA / "minillm_checkpoint", tmp_path / "eps")
    config = json.loads((folder / "config.json").read_text())
    write_config(folder, {**config, "layer_norm_epsilon": -1})
    result = run_cli(["--model", str(folder), "hi"], "utf-8:strict")
    err = result.stderr.decode()
    assert result.returncode == 1 and "layer_norm_epsilon must be a finite number > 0" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_overflowing_logits_exit_1_with_one_line(tmp_path):
    from minillm.checkpoint.weights import save_checkpoint

    folder = shutil.copytree(DATA / "minillm_checkpoint", tmp_path / "overflow")
    config, params = load_checkpoint(folder)
    params.ln_f_gain[:] = 1e37                  # finite weights whose logits overflow float32
    params.wte *= 1e3
    save_checkpoint(params, config, folder, extra_config=json.loads((folder / "config.json").read_text()))
    result = run_cli(["--model", str(folder), "--do-sample", "--top-p", "0.9", "hi"], "utf-8:strict")
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.startswith("minillm generate: the model's logits are NaN or inf at generation step 0")
    assert "Traceback" not in err and err.count("\n") == 1


# ------------------------------------------------------------------------- property tests
def load_or_refuse(folder: Path) -> None:
    """Loading a damaged checkpoint may succeed (other numbers) or raise CheckpointError only."""
    try:
        config, params = load_checkpoint(folder)
    except CheckpointError:
        return
    assert all(np.isfinite(t).all() for t in (params.wte, params.wpe))


@st.composite
def byte_edits(draw, size: int):
    """A few (position, new byte) edits, biased to the header where most of the structure is."""
    header_end = min(size, 8 + 1200)
    n = draw(st.integers(1, 4))
    positions = st.one_of(st.integers(0, header_end - 1), st.integers(0, size - 1))
    return [(draw(positions), draw(st.integers(0, 255))) for _ in range(n)]


WEIGHTS = (CHECKPOINT / "model.safetensors").read_bytes()
CONFIG_TEXT = (CHECKPOINT / "config.json").read_bytes()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=byte_edits(len(WEIGHTS)), cut=st.one_of(st.none(), st.integers(0, len(WEIGHTS))))
def test_mutated_or_truncated_weights_give_checkpoint_errors(tmp_path, edits, cut):
    load_or_refuse(write_checkpoint(tmp_path, mutated(WEIGHTS, edits, cut), CONFIG_TEXT))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=byte_edits(len(CONFIG_TEXT)), cut=st.one_of(st.none(), st.integers(0, len(CONFIG_TEXT))))
def test_mutated_config_gives_checkpoint_errors(tmp_path, edits, cut):
    load_or_refuse(write_checkpoint(tmp_path, WEIGHTS, mutated(CONFIG_TEXT, edits, cut)))


def mutated(data: bytes, edits, cut) -> bytes:
    """data with each (position, byte) edit made, then cut to `cut` bytes (None: whole)."""
    changed = bytearray(data)
    for position, value in edits:
        changed[position] = value
    return bytes(changed[:cut])


def write_checkpoint(tmp_path, weights: bytes, config: bytes):
    folder = tmp_path / "mutated"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_bytes(config)
    return folder


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(json.loads(CONFIG_TEXT))),
       value=st.one_of(st.none(), st.booleans(), st.integers(-2, 10**20), st.floats(),
                       st.text(max_size=5), st.lists(st.integers(0, 100), max_size=3)))
def test_any_config_value_gives_checkpoint_errors(tmp_path, key, value):
    folder = tmp_path / "values"
    folder.mkdir(exist_ok=True)
    shutil.copy(CHECKPOINT / "model.safetensors", folder)
    write_config(folder, {**json.loads(CONFIG_TEXT), key: value})
    load_or_refuse(folder)
