"""minillm against Hugging Face transformers, on the small random GPT-2 in weights/reference/.

reference.npz holds what HF computed (float32, eager attention) for a few prompts; see
scripts/make_reference.py. Logits and every hidden state must agree within 1e-4, and greedy
decoding must pick the very same tokens. The mutation tests show the check has teeth: each
classic mistake moves the logits by more than the tolerance.
"""
import argparse
import math
import shutil

import numpy as np
import pytest

from minillm.checkpoint import verify
from minillm.cli import verify as verify_cli
import minillm.model.backends
import minillm.model.gpt2
import minillm.model.layers

from oracles import greedy_by_recompute

TOLERANCE = 1e-4
PROMPTS = ["english", "chinese", "code", "long"]


def logit_diff(model, reference, name) -> float:
    """Max |minillm - HF| over the stored logits: the full last row, and the fixed columns
    at every position."""
    logits = model(reference[f"{name}.ids"])                                    # (T, V)
    return max(np.abs(logits[-1] - reference[f"{name}.logits_last"]).max(),
               np.abs(logits[:, reference["logit_columns"]] - reference[f"{name}.logits_columns"]).max())


def worst_logit_diff(model, reference) -> float:
    return max(logit_diff(model, reference, name) for name in PROMPTS)


# ------------------------------------------------------------------------- agreement with HF
def test_reference_covers_the_prompts(reference):
    assert len(reference["english.ids"]) == 10
    assert len(reference["long.ids"]) >= 64
    assert reference["logit_columns"].shape == (2048,)
    assert reference["english.ids"].tolist() == [464, 2068, 7586, 21831, 18045, 625, 262, 16931,
                                                 3290, 13]


@pytest.mark.assignment(3, uses=[2])
@pytest.mark.parametrize("name", PROMPTS)
def test_logits_match_hf(reference_model, reference, name):
    logits = reference_model(reference[f"{name}.ids"])
    assert logits.dtype == np.float32
    assert logit_diff(reference_model, reference, name) <= TOLERANCE


@pytest.mark.assignment(3, uses=[2])
@pytest.mark.parametrize("name", PROMPTS)
def test_hidden_states_match_hf(reference_model, reference, name):
    out = reference_model.forward(reference[f"{name}.ids"], output_hidden_states=True)
    expected = reference[f"{name}.hidden_states"]                          # (n_layer + 1, T, C)
    assert len(out.hidden_states) == len(expected) == reference_model.config.n_layer + 1
    for layer, (mine, theirs) in enumerate(zip(out.hidden_states, expected)):
        assert mine.dtype == np.float32
        diff = np.abs(mine - theirs).max()
        assert diff <= TOLERANCE, f"hidden state {layer}: max diff {diff:.2e}"


@pytest.mark.parametrize("name", ["english", "chinese"])
def test_greedy_continuation_matches_hf(reference_model, reference, name):
    expected = reference[f"{name}.greedy"]
    prompt = reference[f"{name}.ids"]
    got = greedy_by_recompute(reference_model, prompt, len(expected) - len(prompt))
    assert got.tolist() == expected.tolist()


def test_left_padded_batch_greedy_matches_hf(reference_model, reference):
    padded, mask, expected = (reference[f"batch.{k}"] for k in ("ids", "attention_mask", "greedy"))
    assert (mask == 0).any(axis=1).sum() >= 2                  # rows really are padded
    got = greedy_by_recompute(reference_model, padded, expected.shape[1] - padded.shape[1], attention_mask=mask)
    assert got.tolist() == expected.tolist()


# ----------------------------------------------------------- the check catches real mistakes
def erf_gelu(x):
    """The exact GELU, x * Phi(x): not what GPT-2 uses."""
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1 + np.vectorize(math.erf)(x64 / math.sqrt(2)))).astype(np.float32)


def unscaled_attention(original):
    """Attention without the 1/sqrt(d_k): scale q up by exactly what the real one divides by."""
    def attention(q, k, v, key_valid=None):
        return original(q * np.float32(math.sqrt(q.shape[-1])), k, v, key_valid)
    return attention


def layer_norm_eps(original, eps):
    def layer_norm(x, gain, bias, _eps=None):
        return original(x, gain, bias, eps)
    return layer_norm


@pytest.mark.parametrize("mutation", ["erf_gelu", "layer_norm_eps_1e-6", "no_attention_scale"])
def test_mutations_exceed_the_tolerance(monkeypatch, reference_model, reference, mutation):
    assert worst_logit_diff(reference_model, reference) <= TOLERANCE
    if mutation == "erf_gelu":
        monkeypatch.setattr(minillm.model.layers, "gelu", erf_gelu)
    elif mutation == "layer_norm_eps_1e-6":
        monkeypatch.setattr(minillm.model.layers, "layer_norm", layer_norm_eps(minillm.model.layers.layer_norm, 1e-6))
    else:
        monkeypatch.setattr(minillm.model.backends, "causal_attention",
                            unscaled_attention(minillm.model.backends.causal_attention))
    assert worst_logit_diff(reference_model, reference) > TOLERANCE


# ----------------------------------------------------------------------- minillm verify
def verify_args(*argv):
    parser = argparse.ArgumentParser()
    verify_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_verify_passes_on_the_reference(capsys, reference_dir):
    assert verify_cli.run(verify_args("--model", str(reference_dir))) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    for name in PROMPTS:
        assert f"prompt: {name}" in out
    assert "greedy: left-padded batch" in out
    assert "7/7 checks passed" in out


def test_verify_fails_on_a_wrong_model(capsys, monkeypatch, reference_dir):
    monkeypatch.setattr(minillm.model.backends, "causal_attention",
                        unscaled_attention(minillm.model.backends.causal_attention))
    reference_file = reference_dir / "reference.npz"
    assert verify_cli.run(verify_args("--model", str(reference_dir / "model.safetensors"),
                                  "--reference", str(reference_file))) == 1
    out = capsys.readouterr().out
    assert "prompt: english" in out and "FAIL" in out


def test_verify_without_a_reference(capsys, tmp_path, reference_dir):
    for file in ("model.safetensors", "config.json"):
        shutil.copy(reference_dir / file, tmp_path)
    assert verify_cli.run(verify_args("--model", str(tmp_path))) == 2
    assert "no reference" in capsys.readouterr().out


def test_verify_gpt2_uses_the_published_continuation(capsys, monkeypatch, tmp_path, reference,
                                                    reference_dir):
    # Without the real weights, run the GPT-2 124M path on the reference model, with its own
    # greedy continuation standing in for the published one.
    for file in ("model.safetensors", "config.json"):
        shutil.copy(reference_dir / file, tmp_path)
    monkeypatch.setattr(verify, "is_gpt2_124m", lambda config: True)
    monkeypatch.setattr(verify, "GPT2_PROMPT_IDS", reference["english.ids"].tolist())
    monkeypatch.setattr(verify, "GPT2_GREEDY_IDS", reference["english.greedy"].tolist())
    assert verify_cli.run(verify_args("--model", str(tmp_path))) == 0
    out = capsys.readouterr().out
    assert "published greedy continuation" in out and "PASS" in out
    monkeypatch.setattr(verify, "GPT2_GREEDY_IDS", reference["chinese.greedy"][:30].tolist())
    assert verify_cli.run(verify_args("--model", str(tmp_path))) == 1
    assert "ids differ from position 0" in capsys.readouterr().out


def test_verify_reports_missing_files(capsys, tmp_path, reference_dir):
    assert verify_cli.run(verify_args("--model", str(reference_dir), "--reference", "nope.npz")) == 2
    assert "error: reference file not found: nope.npz" in capsys.readouterr().err
    assert verify_cli.run(verify_args("--model", str(tmp_path))) == 2
    assert f"error: no model.safetensors in {tmp_path}" in capsys.readouterr().err
