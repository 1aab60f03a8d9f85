"""A folder that `minillm train` wrote loads in HF transformers and means the same there:
GPT2TokenizerFast gives minillm's ids, GPT2LMHeadModel minillm's logits (tests/data/minillm_checkpoint)."""
import json
from pathlib import Path

import numpy as np
import pytest

from minillm.model.gpt2 import GPT2
from minillm.checkpoint.pretrained import tokenizer_for

CHECKPOINT = Path(__file__).parent / "data" / "minillm_checkpoint"


@pytest.fixture(scope="module")
def hf_outputs() -> dict:
    with np.load(CHECKPOINT / "hf_outputs.npz") as data:
        return {key: data[key] for key in data.files}


def test_hf_tokenizer_gives_minillm_ids(hf_outputs):
    tokenizer = tokenizer_for(CHECKPOINT)
    texts = json.loads(str(hf_outputs["texts"]))
    assert any("<|endoftext|>" in text for text in texts)
    for k, text in enumerate(texts):
        assert tokenizer.encode(text, allowed_special="all") == hf_outputs[f"ids/{k}"].tolist(), text


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_hf_model_gives_minillm_logits(hf_outputs, backend):
    model = GPT2.from_pretrained(CHECKPOINT, backend=backend)
    for k in range(len(json.loads(str(hf_outputs["texts"])))):
        logits = model(hf_outputs[f"ids/{k}"])
        np.testing.assert_allclose(logits, hf_outputs[f"logits/{k}"], rtol=0, atol=1e-4)


def test_hf_greedy_continuation_is_minillm_greedy(hf_outputs):
    model = GPT2.from_pretrained(CHECKPOINT)
    prompt, expected = hf_outputs["ids/0"], hf_outputs["greedy"]
    out = model.generate(prompt, max_new_tokens=len(expected) - len(prompt))
    assert list(out) == expected.tolist()
