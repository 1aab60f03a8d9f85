"""Loading GPT-2 checkpoints: both HF layouts, half-precision files, config inference, and a
clear error for every way a file can be wrong."""
import json
import shutil

import numpy as np
import pytest
import safetensors.numpy

from minillm.checkpoint import weights
from minillm.model.config import GPT2Config
from minillm.model.gpt2 import GPT2
from minillm.model.params import params_to_hf, random_params
from minillm.checkpoint.weights import (CheckpointError, float32_to_bfloat16_bits,
                             load_checkpoint, read_header, read_safetensors, resolve_model_path,
                             save_checkpoint, write_safetensors)

SMALL = GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2)


def assert_same_params(a, b):
    """Two GPT2Params hold bit-identical float32 C-contiguous arrays."""
    for (name, x), y in zip(params_to_hf(a).items(), params_to_hf(b).values()):
        assert x.dtype == np.float32 and x.flags.c_contiguous, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def raw_file(path, header, data=b"", header_len=None):
    """A .safetensors file written byte by byte, so it can say anything."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(blob) if header_len is None else header_len
    path.write_bytes(n.to_bytes(8, "little") + blob + data)
    return path


def two_tensor_header(a_offsets=(0, 24), b_offsets=(24, 32), a_dtype="F32"):
    return {"a": {"dtype": a_dtype, "shape": [2, 3], "data_offsets": list(a_offsets)},
            "b": {"dtype": "F16", "shape": [4], "data_offsets": list(b_offsets)}}


@pytest.fixture
def small_checkpoint(tmp_path):
    """A tiny valid checkpoint directory (model.safetensors + config.json) and its params."""
    params = random_params(SMALL, seed=1, std=0.5)
    return save_checkpoint(params, SMALL, tmp_path / "small"), params


def rewrite(checkpoint_dir, change):
    """Apply change(tensors) to the checkpoint's tensors and write them back."""
    file = checkpoint_dir / "model.safetensors"
    tensors = read_safetensors(file)
    change(tensors)
    write_safetensors(file, tensors)
    return checkpoint_dir


# ---------------------------------------------------------------------- the reference file
@pytest.mark.assignment(3)
def test_reference_checkpoint_loads(reference_dir, reference_model):
    config = reference_model.config
    assert config == GPT2Config(vocab_size=50257, n_positions=128, n_embd=48, n_layer=3, n_head=3)
    raw = read_safetensors(reference_dir / "model.safetensors")
    assert raw["h.0.attn.bias"].shape == (1, 1, 128, 128)            # causal-mask buffer, skipped
    np.testing.assert_array_equal(raw["h.0.attn.bias"][0, 0], np.tril(np.ones((128, 128))))
    assert "lm_head.weight" not in raw                                # hub layout: tied head
    for name, array in params_to_hf(reference_model.params).items():
        assert array.dtype == np.float32 and array.flags.c_contiguous
        np.testing.assert_array_equal(array, raw[name])


@pytest.mark.assignment(3, uses=[2])
def test_half_precision_copies_load_to_the_same_model(tmp_path, reference_dir, reference_model):
    # The reference weights are exact in float16 and bfloat16, so both copies are lossless.
    ids = np.array([464, 2068, 7586, 21831])
    expected_logits = reference_model(ids)
    config, params = reference_model.config, reference_model.params
    fp16_dir = tmp_path / "fp16"
    fp16_dir.mkdir()
    fp16 = {name: a.astype(np.float16) for name, a in params_to_hf(params).items()}
    safetensors.numpy.save_file(fp16, str(fp16_dir / "model.safetensors"))   # the library's writer
    shutil.copy(reference_dir / "config.json", fp16_dir)
    bf16_dir = save_checkpoint(params, config, tmp_path / "bf16", dtype="bfloat16")
    assert read_header(bf16_dir / "model.safetensors")[0]["wte.weight"]["dtype"] == "BF16"
    for directory in (fp16_dir, bf16_dir):
        loaded = GPT2.from_pretrained(directory)
        assert_same_params(loaded.params, params)
        np.testing.assert_array_equal(loaded(ids), expected_logits)


@pytest.mark.assignment(3)
def test_save_pretrained_layout_with_tied_lm_head(tmp_path, reference_dir, reference_model):
    raw = read_safetensors(reference_dir / "model.safetensors")
    prefixed = {f"transformer.{name}": a for name, a in raw.items()}
    prefixed["lm_head.weight"] = raw["wte.weight"]
    for i in range(3):
        prefixed[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    (tmp_path / "hf").mkdir()
    safetensors.numpy.save_file(prefixed, str(tmp_path / "hf" / "model.safetensors"))
    shutil.copy(reference_dir / "config.json", tmp_path / "hf")
    config, params = load_checkpoint(tmp_path / "hf")
    assert config == reference_model.config
    assert_same_params(params, reference_model.params)


def test_safetensors_file_path_finds_config_beside_it(reference_dir, reference_model):
    config, _ = load_checkpoint(reference_dir / "model.safetensors")
    assert config == reference_model.config


# -------------------------------------------------------------------- writing and bfloat16
def test_written_files_are_valid_safetensors(small_checkpoint):
    directory, params = small_checkpoint
    header, data_start = read_header(directory / "model.safetensors")
    assert data_start % 8 == 0                                     # header padded for alignment
    library = safetensors.numpy.load_file(str(directory / "model.safetensors"))
    for name, array in params_to_hf(params).items():
        np.testing.assert_array_equal(library[name], array)
    assert json.loads((directory / "config.json").read_text())["n_embd"] == SMALL.n_embd


def test_bfloat16_rounding_is_to_nearest_even():
    x = np.array([1.0, -2.5, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20], np.float32)
    bits = float32_to_bfloat16_bits(x)
    np.testing.assert_array_equal(bits, [0x3F80, 0xC020, 0x3F80, 0x3F82, 0x3F81])


@pytest.mark.assignment(3)
def test_bfloat16_tensors_are_widened_to_float32(tmp_path):
    data = np.array([0x3F80, 0xC020, 0x3E20, 0x0000], "<u2").tobytes()
    file = raw_file(tmp_path / "bf16.safetensors",
                    {"x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}, data)
    x = read_safetensors(file)["x"]
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, [[1.0, -2.5], [0.15625, 0.0]])


# ---------------------------------------------------------------------- config inference
def test_config_inferred_for_a_released_width(tmp_path):
    config = GPT2Config(vocab_size=5, n_positions=4, n_embd=768, n_layer=2, n_head=12)
    directory = save_checkpoint(random_params(config), config, tmp_path / "wide", dtype=np.float16)
    (directory / "config.json").unlink()
    inferred, params = load_checkpoint(directory)
    assert inferred == config
    assert params.wte.dtype == np.float32


def test_config_inference_refuses_an_unknown_width(tmp_path, reference_dir):
    shutil.copy(reference_dir / "model.safetensors", tmp_path)
    with pytest.raises(CheckpointError, match=r"cannot infer n_head for n_embd=48.*config\.json"):
        load_checkpoint(tmp_path)


def test_unsupported_config_options_are_refused(small_checkpoint):
    directory, _ = small_checkpoint
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(CheckpointError, match="activation_function='relu' is not supported"):
        load_checkpoint(directory)


# ------------------------------------------------------------------------- bad containers
def test_too_short_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="not a safetensors file.*too short"):
        read_header(tmp_path / "x.safetensors")


def test_absurd_header_length(tmp_path):
    file = raw_file(tmp_path / "x.safetensors", b"{}", header_len=2**62)
    with pytest.raises(CheckpointError, match=f"header length of {2**62} bytes"):
        read_header(file)


def test_header_not_json(tmp_path):
    file = raw_file(tmp_path / "x.safetensors", b"\x89PNG garbage")
    with pytest.raises(CheckpointError, match="not a safetensors file: its header is not valid JSON"):
        read_header(file)


def test_header_not_an_object(tmp_path):
    file = raw_file(tmp_path / "x.safetensors", b"[1, 2]")
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        read_header(file)


def test_truncated_file(tmp_path):
    file = raw_file(tmp_path / "x.safetensors", two_tensor_header(), bytes(28))
    with pytest.raises(CheckpointError,
                       match=r"truncated: its header promises 32 bytes .*'b'.* only 28 bytes"):
        read_header(file)


def test_truncated_checkpoint_fails_to_load(tmp_path, reference_dir):
    data = (reference_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-1000])
    with pytest.raises(CheckpointError, match="is truncated"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("header, data_len, message", [
    (two_tensor_header(b_offsets=(16, 24)), 24, r"tensors 'a' and 'b' overlap"),
    (two_tensor_header(a_offsets=(24, 0)), 32, r"'a' has data_offsets out of order"),
    (two_tensor_header(a_offsets=(0, 20), b_offsets=(20, 28)), 28,
     r"'a' \(F32, shape \(2, 3\)\) needs 24 bytes but its data_offsets \[0, 20\) span 20"),
    (two_tensor_header(b_offsets=(32, 40)), 40, r"gap .* bytes \[24, 32\) before tensor 'b'"),
    (two_tensor_header(a_dtype="F12"), 32, r"'a' has unknown dtype 'F12'"),
    (two_tensor_header(), 36, r"4 bytes after the last tensor"),
    ({"a": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}}, 24, "invalid shape"),
    ({"a": {"dtype": "F32", "shape": [6]}}, 24, "must have dtype, shape and data_offsets"),
])
def test_lying_offsets(tmp_path, header, data_len, message):
    file = raw_file(tmp_path / "x.safetensors", header, bytes(data_len))
    with pytest.raises(CheckpointError, match=message):
        read_header(file)


# ------------------------------------------------------------------------ bad checkpoints
def test_missing_tensor(small_checkpoint):
    directory = rewrite(small_checkpoint[0], lambda t: t.pop("h.1.mlp.c_fc.weight"))
    with pytest.raises(CheckpointError,
                       match=r"missing tensor 'h.1.mlp.c_fc.weight' \(expected shape \(8, 32\)\)"):
        load_checkpoint(directory)


def test_transposed_tensor(small_checkpoint):
    def transpose(tensors):
        tensors["h.0.mlp.c_fc.weight"] = tensors["h.0.mlp.c_fc.weight"].T.copy()
    with pytest.raises(CheckpointError, match=r"'h.0.mlp.c_fc.weight' has shape \(32, 8\), "
                                              r"expected \(8, 32\) \(transposed"):
        load_checkpoint(rewrite(small_checkpoint[0], transpose))


def test_misshaped_tensor(small_checkpoint):
    def shorten(tensors):
        tensors["wpe.weight"] = tensors["wpe.weight"][:7]
    with pytest.raises(CheckpointError, match=r"'wpe.weight' has shape \(7, 8\), expected \(8, 8\)$"):
        load_checkpoint(rewrite(small_checkpoint[0], shorten))


def test_unknown_extra_tensor(small_checkpoint):
    def add(tensors):
        tensors["h.0.attn.rotary"] = np.zeros(4, np.float32)
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) 'h.0.attn.rotary'"):
        load_checkpoint(rewrite(small_checkpoint[0], add))


def test_more_layers_than_the_config(small_checkpoint):
    directory, _ = small_checkpoint
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "n_layer": 1}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) 'h.1.attn.c_attn.bias'"):
        load_checkpoint(directory)


def test_untied_lm_head(small_checkpoint):
    def untie(tensors):
        tensors["lm_head.weight"] = tensors["wte.weight"] + 1
    with pytest.raises(CheckpointError, match="lm_head.weight is not a copy of wte.weight"):
        load_checkpoint(rewrite(small_checkpoint[0], untie))


def test_same_tensor_with_and_without_prefix(small_checkpoint):
    def duplicate(tensors):
        tensors["transformer.wte.weight"] = tensors["wte.weight"]
    with pytest.raises(CheckpointError, match="both 'wte.weight' and 'transformer.wte.weight'"):
        load_checkpoint(rewrite(small_checkpoint[0], duplicate))


def test_integer_tensor(small_checkpoint):
    def to_int(tensors):
        tensors["ln_f.bias"] = tensors["ln_f.bias"].astype(np.int32)
    with pytest.raises(CheckpointError, match="'ln_f.bias' has dtype int32"):
        load_checkpoint(rewrite(small_checkpoint[0], to_int))


def test_directory_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors in"):
        load_checkpoint(tmp_path)


def test_check_vocab_sizes():
    from minillm.checkpoint.pretrained import check_vocab_sizes
    check_vocab_sizes(11, 11, "model")
    with pytest.raises(ValueError, match="vocab_size 11 but its tokenizer has 50257 tokens"):
        check_vocab_sizes(11, 50257, "model")


# ------------------------------------------------------------------------ model names
def test_resolve_model_path(tmp_path, monkeypatch, reference_dir):
    assert resolve_model_path(reference_dir) == reference_dir
    assert resolve_model_path(str(reference_dir)) == reference_dir
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(weights, "CHECKOUT_WEIGHTS", tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match=r"Run `minillm download gpt2-medium`"):
        resolve_model_path("gpt2-medium")
    (tmp_path / "weights" / "gpt2-medium").mkdir(parents=True)
    (tmp_path / "weights" / "gpt2-medium" / "model.safetensors").touch()
    assert resolve_model_path("gpt2-medium") == tmp_path / "weights" / "gpt2-medium"
    with pytest.raises(FileNotFoundError, match="neither an existing file .* nor a bundled or released model"):
        resolve_model_path("gpt3")


def test_bad_metadata_and_unreadable_dtype(tmp_path):
    header = {"__metadata__": {"format": 1}, **two_tensor_header()}
    with pytest.raises(CheckpointError, match="__metadata__ must map strings to strings"):
        read_header(raw_file(tmp_path / "x.safetensors", header, bytes(32)))
    file = raw_file(tmp_path / "y.safetensors",
                    {"a": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, bytes(4))
    with pytest.raises(CheckpointError, match="'a' has dtype F8_E4M3, which minillm cannot read"):
        read_safetensors(file)
