"""Sliding-window loss and perplexity against HF's perplexity guide on the reference model
(tests/data/eval_reference.json, written by scripts/make_training_reference.py eval)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from minillm.model.loss import IGNORE_INDEX
from minillm.inference.perplexity import score_ids, score_text, window_targets

EVAL_REFERENCE = Path(__file__).parent / "data" / "eval_reference.json"


@pytest.fixture(scope="module")
def eval_reference() -> dict:
    return json.loads(EVAL_REFERENCE.read_text())


@pytest.mark.parametrize("stride", [128, 64, 37])
def test_sliding_window_loss_equals_hf(reference_model, eval_reference, stride):
    expected = next(s for s in eval_reference["strides"] if s["stride"] == stride)
    nll_sum, n_tokens = score_ids(reference_model, eval_reference["token_ids"], stride)
    assert n_tokens == expected["n_targets"]
    assert nll_sum / n_tokens == pytest.approx(expected["mean_nll"], abs=1e-4)


def test_score_text_reports_per_token_byte_and_char(reference_model, eval_reference):
    from minillm.tokenizer.bpe import Tokenizer
    corpus = Path(__file__).parent / "data" / "tokenizer_corpus.txt"
    text = corpus.read_bytes().decode("utf-8")[: eval_reference["text_chars"]]   # keep its \r\n
    score = score_text(reference_model, Tokenizer.gpt2(), text, stride=64)
    expected = next(s for s in eval_reference["strides"] if s["stride"] == 64)
    assert score.n_bytes == eval_reference["text_utf8_bytes"] and score.n_chars == len(text)
    assert score.perplexity == pytest.approx(math.exp(expected["mean_nll"]), rel=1e-3)
    assert score.nats_per_byte == pytest.approx(score.nll_sum / score.n_bytes)


def test_each_token_is_scored_once():
    targets = [window_targets(np.arange(10), n_new) for n_new in (10, 4, 1)]
    assert [(t != IGNORE_INDEX).sum() for t in targets] == [9, 4, 1]
    np.testing.assert_array_equal(targets[1][-4:], [6, 7, 8, 9])


def test_bad_stride_and_short_text_are_refused(reference_model):
    with pytest.raises(ValueError, match="stride must be between 1 and the window of 128"):
        score_ids(reference_model, [1, 2, 3], stride=200)
    with pytest.raises(ValueError, match="nothing to score"):
        score_ids(reference_model, [1])
