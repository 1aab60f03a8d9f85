"""The released GPT-2 124M, when its weights are present: greedy decoding of "The dog" must
give the continuation HF transformers gives."""
import argparse
from pathlib import Path

import pytest

from minillm.checkpoint import verify
from minillm.cli import verify as verify_cli
from minillm.model.config import GPT2_SIZES

from oracles import greedy_by_recompute

def _gpt2_dir() -> Path:
    """Where GPT2.from_pretrained("gpt2") finds the weights (a checkout's weights/gpt2 or the cache)."""
    from minillm.checkpoint.weights import resolve_model_path
    try:
        return resolve_model_path("gpt2")
    except FileNotFoundError:
        from minillm.checkpoint.locations import downloads_dir
        return downloads_dir() / "gpt2"


GPT2_DIR = _gpt2_dir()

pytestmark = pytest.mark.skipif(
    not (GPT2_DIR / "model.safetensors").is_file(),
    reason=f"GPT-2 124M weights not found at {GPT2_DIR / 'model.safetensors'} "
           "(run `minillm download gpt2`)")

THE_DOG = [464, 3290]
# HF transformers, greedy, 18 new tokens: 'The dog was found in a field near the intersection of
# West and West Streets.\n\nThe dog'
EXPECTED = [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688, 290, 2688, 27262,
            13, 198, 198, 464, 3290]


@pytest.fixture(scope="module")
def gpt2():
    from minillm.model.gpt2 import GPT2
    return GPT2.from_pretrained(GPT2_DIR)


def test_config_is_gpt2_124m(gpt2):
    assert gpt2.config == GPT2_SIZES["gpt2"]


def test_greedy_continuation_of_the_dog(gpt2):
    ids = greedy_by_recompute(gpt2, THE_DOG, len(EXPECTED) - len(THE_DOG))
    assert ids.tolist() == EXPECTED


def test_verify_command_on_gpt2(capsys):
    parser = argparse.ArgumentParser()
    verify_cli.add_arguments(parser)
    assert verify_cli.run(parser.parse_args(["--model", str(GPT2_DIR)])) == 0
    assert "PASS" in capsys.readouterr().out
