"""The bundled default model, weights/shakespeare: it loads, its tokenizer round-trips, and it
still scores the held-out plays as its model card says."""
import re
from pathlib import Path

import pytest

from minillm.checkpoint.pretrained import load_pretrained
from minillm.inference.perplexity import score_text

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "weights" / "shakespeare" / "README.md"
VAL = ROOT / "data" / "shakespeare" / "val.txt"


@pytest.fixture(scope="module")
def shakespeare():
    return load_pretrained("shakespeare")


def card_figure(pattern: str) -> float:
    match = re.search(pattern, CARD.read_text(encoding="utf-8"))
    assert match, f"the model card has no line matching {pattern!r}"
    return float(match.group(1))


def test_the_default_model_loads_with_its_own_tokenizer(shakespeare):
    model, tokenizer = shakespeare
    assert model.config.vocab_size == tokenizer.n_vocab == 4096
    assert tokenizer.eot_token == 4095 and tokenizer.encode("ROMEO:\n") == [2002, 25, 198]


def test_its_tokenizer_round_trips_the_held_out_plays(shakespeare):
    _, tokenizer = shakespeare
    text = VAL.read_text(encoding="utf-8")
    assert tokenizer.decode(tokenizer.encode(text, allowed_special="all")) == text


def test_validation_loss_on_the_committed_slice_matches_the_model_card(shakespeare):
    model, tokenizer = shakespeare
    chars = int(card_figure(r"validation slice \(val\.txt\[:(\d+)\]"))
    expected = card_figure(r"validation slice \(val\.txt\[:\d+\], stride 128\) \| ([0-9.]+) nats/token")
    score = score_text(model, tokenizer, VAL.read_text(encoding="utf-8")[:chars], stride=128)
    assert score.loss == pytest.approx(expected, abs=0.01)


def test_it_has_learned_far_more_than_unigram_statistics(shakespeare):
    """The training plays' token frequencies alone score 6.35 nats/token on the held-out plays
    (their unigram cross-entropy); the model, with context, far less."""
    model, tokenizer = shakespeare
    score = score_text(model, tokenizer, VAL.read_text(encoding="utf-8")[:5000], stride=64)
    assert score.loss < 6.35 - 1.0


def test_model_and_tokenizer_load_by_name(shakespeare):
    from minillm import GPT2, Tokenizer
    model, tokenizer = shakespeare
    assert GPT2.from_pretrained("shakespeare").config == model.config
    assert Tokenizer.from_pretrained("shakespeare").encode("ROMEO:\n") == tokenizer.encode("ROMEO:\n")
