"""`minillm verify` on bad inputs: exit 2 (input error) with a one-line reason, distinct from
exit 1 (a check failed), and never a run that checks nothing and passes."""
from __future__ import annotations

import argparse
import pickle
import shutil

import numpy as np
import pytest

from minillm.checkpoint import verify
from minillm.cli import verify as verify_cli


def run_verify(*argv) -> int:
    parser = argparse.ArgumentParser()
    verify_cli.add_arguments(parser)
    return verify_cli.run(parser.parse_args(list(argv)))


@pytest.fixture
def model_copy(tmp_path, reference_dir):
    """The reference model's weights and config, without its reference.npz."""
    folder = tmp_path / "model"
    folder.mkdir()
    for file in ("model.safetensors", "config.json"):
        shutil.copy(reference_dir / file, folder)
    return folder


def write_npz(path, arrays: dict):
    np.savez(path, **arrays)
    return path


def assert_input_error(capsys, argv, message):
    assert run_verify(*argv) == verify_cli.EXIT_INPUT_ERROR == 2
    err = capsys.readouterr().err
    assert err.startswith("minillm verify: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


def test_an_empty_reference_is_an_input_error_not_a_pass(capsys, tmp_path, model_copy):
    empty = write_npz(tmp_path / "empty.npz", {})
    assert_input_error(capsys, ["--model", str(model_copy), "--reference", str(empty)],
                       "holds no recorded prompts")


def test_a_reference_with_missing_arrays(capsys, tmp_path, model_copy, reference):
    partial = {k: v for k, v in reference.items() if k != "english.logits_last"}
    path = write_npz(tmp_path / "partial.npz", partial)
    assert_input_error(capsys, ["--model", str(model_copy), "--reference", str(path)],
                       "has no array 'english.logits_last'")


def test_a_reference_that_does_not_fit_the_model(capsys, tmp_path, model_copy, reference):
    wrong = {**reference, "english.hidden_states": reference["english.hidden_states"][:2]}
    path = write_npz(tmp_path / "wrong.npz", wrong)
    assert_input_error(capsys, ["--model", str(model_copy), "--reference", str(path)],
                       "'english.hidden_states' has shape (2, 10, 48)")


@pytest.mark.parametrize("content", [pickle.dumps({"a": 1}), b"not an archive at all", b""])
def test_a_reference_that_is_not_an_npz(capsys, tmp_path, model_copy, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    assert_input_error(capsys, ["--model", str(model_copy), "--reference", str(path)],
                       "is not an .npz file of reference outputs")


def test_a_single_npy_array_is_refused(capsys, tmp_path, model_copy):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros(3))
    assert_input_error(capsys, ["--model", str(model_copy), "--reference", str(path)],
                       "is a single .npy array")


def test_a_bad_config_or_missing_model_is_an_input_error(capsys, tmp_path, model_copy):
    assert_input_error(capsys, ["--model", str(tmp_path / "nowhere")], "neither an existing file")
    (model_copy / "config.json").write_text("{}")
    assert_input_error(capsys, ["--model", str(model_copy)], "names none of vocab_size")


def test_a_bad_tolerance_is_an_input_error(capsys, reference_dir):
    assert_input_error(capsys, ["--model", str(reference_dir), "--tolerance", "nan"],
                       "--tolerance must be a finite number >= 0")


def test_a_failed_check_exits_1_not_2(capsys, tmp_path, model_copy, reference):
    shifted = {**reference, "english.logits_last": reference["english.logits_last"] + 1}
    path = write_npz(tmp_path / "shifted.npz", shifted)
    assert run_verify("--model", str(model_copy), "--reference", str(path)) == verify_cli.EXIT_FAIL == 1
    out = capsys.readouterr().out
    assert "prompt: english" in out and "FAIL" in out and "6/7 checks passed" in out


def test_no_checks_at_all_is_a_failure(monkeypatch, capsys, model_copy, reference_dir):
    monkeypatch.setattr(verify, "check_reference", lambda *args: None)
    monkeypatch.setattr(verify, "reference_checks", lambda *args: [])
    path = reference_dir / verify.REFERENCE_FILE
    assert run_verify("--model", str(model_copy), "--reference", str(path)) == 1
    assert "0/0 checks passed" in capsys.readouterr().out


def test_exit_codes_are_in_the_help():
    parser = argparse.ArgumentParser()
    verify_cli.add_arguments(parser)
    assert "1 a check fails, 2 an input" in parser.format_help()
