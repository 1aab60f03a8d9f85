"""`minillm generate` and the light imports the CLI needs."""
from __future__ import annotations

import argparse
from pathlib import Path
import subprocess
import sys

import pytest

from minillm.cli import generate as cli_generate

REFERENCE_PROMPT = "The quick brown fox"


def run_generate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli_generate.add_arguments(parser)
    return cli_generate.run(parser.parse_args(argv))


def test_subcommand_modules_import_without_numba_or_the_hub():
    code = ("import sys, minillm.cli.generate, minillm.checkpoint.download; "
            "print(sorted(m for m in ('numba', 'huggingface_hub', 'numpy', 'minillm.model.gpt2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_max_length_and_max_new_tokens_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        run_generate(["--max-length", "5", "--max-new-tokens", "3", "hi"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_registered_in_the_minillm_command():
    from minillm import cli

    args = cli.build_parser("generate").parse_args(["generate", "--model", "m", "--do-sample", "--top-p", "0.9", "x"])
    assert (args.command, args.model, args.top_p, args.do_sample, args.prompt) == ("generate", "m", 0.9, True, "x")


# ---- with the reference model and the GPT-2 tokenizer ------------------------------------------
@pytest.fixture(scope="module")
def reference():
    from conftest import REFERENCE_DIR

    tokenizer_module = pytest.importorskip("minillm.tokenizer.bpe")
    if not (REFERENCE_DIR / "model.safetensors").is_file():
        pytest.skip("weights/reference/ is not there")
    from minillm.model.gpt2 import GPT2
    return str(REFERENCE_DIR), GPT2.from_pretrained(REFERENCE_DIR), tokenizer_module.Tokenizer.gpt2()


def expected_output(reference, prompt: str, **kwargs) -> str:
    from minillm.inference.generate import generate

    _, model, tokenizer = reference
    ids = tokenizer.encode(prompt)
    out = generate(model, ids, eos_token_id=tokenizer.eot_token, **kwargs)
    return prompt + tokenizer.decode(out[len(ids):]) + "\n"


def test_greedy_output_and_timing_line(reference, capsys):
    from minillm.cli import main

    assert main(["generate", "--model", reference[0], "--max-new-tokens", "12", REFERENCE_PROMPT]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected_output(reference, REFERENCE_PROMPT, max_new_tokens=12)
    assert "[12 tokens in" in captured.err and "tokens/s" in captured.err


def test_the_seed_article_example(reference, capsys):
    """HF: model.generate(input_ids, do_sample=True, max_length=50) -- HF's default top_k=50 and
    GPT-2's eos 50256 spelled out; --seed makes it repeatable."""
    argv = ["--model", reference[0], "--do-sample", "--max-length", "50", "--top-k", "50", "--seed", "0", "我喜欢吃"]
    assert run_generate(argv) == 0
    out = capsys.readouterr().out
    assert out == expected_output(reference, "我喜欢吃", max_length=50, do_sample=True, top_k=50, seed=0)
    assert run_generate(argv) == 0
    assert capsys.readouterr().out == out


@pytest.mark.parametrize("argv, message", [
    (["--do-sample", "--top-p", "1.5"], "top_p must be a number in (0, 1]"),
    (["--max-new-tokens", "500"], "exceeds the model's context of 128 tokens"),
    (["--max-length", "2"], "max_length=2 counts the prompt too"),
])
def test_bad_arguments_exit_2_with_the_reason(reference, capsys, argv, message):
    assert run_generate(["--model", reference[0], *argv, REFERENCE_PROMPT]) == 2
    assert message in capsys.readouterr().err


def test_missing_model_says_how_to_get_it(reference, capsys, tmp_path):
    assert run_generate(["--model", str(tmp_path / "nowhere"), "hi"]) == 1
    assert "neither an existing file or directory nor a bundled or released model name (shakespeare, reference, gpt2" in capsys.readouterr().err


def test_generate_defaults_to_the_bundled_shakespeare_model(capsys):
    assert run_generate(["--max-new-tokens", "8", "ROMEO:"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out) > len("ROMEO:") + 8


def test_every_model_brings_its_own_tokenizer():
    from minillm.checkpoint.pretrained import load_pretrained, tokenizer_for
    model, tokenizer = load_pretrained("shakespeare")
    assert tokenizer.n_vocab == model.config.vocab_size == 4096
    assert tokenizer_for("reference").n_vocab == 50257              # no vocab files: GPT-2's


def test_a_vocabulary_mismatch_is_caught_at_load_time(tmp_path, capsys):
    import shutil
    folder = tmp_path / "mismatch"
    shutil.copytree(Path(__file__).parent / "data" / "minillm_checkpoint", folder)
    shutil.copy(Path(__file__).parents[1] / "weights" / "gpt2" / "encoder.json", folder / "vocab.json")
    shutil.copy(Path(__file__).parents[1] / "weights" / "gpt2" / "vocab.bpe", folder / "merges.txt")
    assert run_generate(["--model", str(folder), "hi"]) == 1
    error = capsys.readouterr().err
    assert "vocab_size 512 but its tokenizer has 50257 tokens" in error and "Traceback" not in error


def test_a_closed_pipe_ends_generation_quietly():
    """`minillm generate ... | head -1`: no BrokenPipeError traceback when the reader stops."""
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    writer = subprocess.run([sys.executable, "-m", "minillm", "generate", "--max-new-tokens", "120",
                             "ROMEO:"], stdout=reader.stdin, stderr=subprocess.PIPE, text=True, timeout=120)
    reader.stdin.close()
    reader.wait()
    assert writer.returncode == 0 and "Traceback" not in writer.stderr, writer.stderr


def test_dtype_flag_generates_with_int8_weights_and_eval_reports_their_memory(reference, capsys, tmp_path):
    """--dtype int8 runs the quantised model end to end; greedy text equals the Python API's."""
    from minillm.cli import main
    from minillm.inference.generate import generate
    from minillm.model.gpt2 import GPT2

    assert main(["generate", "--model", reference[0], "--dtype", "int8", "--max-new-tokens", "8",
                 REFERENCE_PROMPT]) == 0
    _, _, tokenizer = reference
    int8_model = GPT2.from_pretrained(reference[0], dtype="int8")
    ids = tokenizer.encode(REFERENCE_PROMPT)
    expected = REFERENCE_PROMPT + tokenizer.decode(generate(int8_model, ids, 8)[len(ids):]) + "\n"
    assert capsys.readouterr().out == expected

    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 4)
    assert main(["eval", "--model", reference[0], "--text", str(text), "--dtype", "float16"]) == 0
    assert "weights        float16," in capsys.readouterr().out
