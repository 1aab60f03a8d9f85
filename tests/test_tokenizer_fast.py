"""The compiled encoder must give exactly the readable tokenizer's ids."""

import random

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.tokenizer.bpe import (
    ENDOFTEXT, GPT2_SPLIT_PATTERN, FastTokenizer, Tokenizer, bytes_to_unicode,
)
from minillm.tokenizer.fast import character_classes
from minillm.tokenizer.fast_kernels import LETTER, NUMBER, OTHER, SPACE, _piece_end
from minillm.tokenizer.train import train_bpe

any_text = st.text(st.characters(exclude_categories=("Cs",)))
# Fragments that meet at the boundaries GPT-2's regex cares about.
tricky_text = st.lists(
    st.sampled_from(["'s", "'S", "'re", "'", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000",
                     "a", "Zé", "7", "٣", "!?", "我", "\U0001f600", "\u200d", "\x0b"])
    | st.characters(exclude_categories=("Cs",)),
    max_size=30,
).map("".join)


@pytest.fixture(scope="module")
def trained_pair(tokenizer_corpus):
    """A small vocabulary trained on the corpus, as a readable and a fast tokenizer."""
    readable = train_bpe([tokenizer_corpus], vocab_size=600)
    return readable, FastTokenizer(readable.vocab, readable.merges, readable.special_tokens)


def test_gpt2_is_fast_by_default(gpt2_fast_tokenizer, gpt2_tokenizer):
    assert type(gpt2_fast_tokenizer) is FastTokenizer
    assert type(gpt2_tokenizer) is Tokenizer


def test_without_the_compiled_encoder_the_readable_loop_encodes(trained_pair, tokenizer_corpus,
                                                                monkeypatch):
    """The student copy withholds the compiled merge loop: FastTokenizer then encodes with the
    readable one (the student's) instead of failing."""
    import minillm.tokenizer.fast

    def withheld(*args):
        raise NotImplementedError("Assignment 1 (bpe): _fill_token_table ... is withheld")

    monkeypatch.setattr(minillm.tokenizer.fast, "CompiledEncoder", withheld)
    readable, fast = trained_pair
    fresh = FastTokenizer(readable.vocab, readable.merges, readable.special_tokens)
    assert fresh.encode(tokenizer_corpus) == readable.encode(tokenizer_corpus)


def test_corpus_matches_tiktoken_and_readable(
    gpt2_fast_tokenizer, gpt2_tokenizer, tiktoken_gpt2, tokenizer_corpus
):
    ids = gpt2_fast_tokenizer.encode(tokenizer_corpus)
    assert ids == tiktoken_gpt2.encode(tokenizer_corpus) == gpt2_tokenizer.encode(tokenizer_corpus)
    for line in tokenizer_corpus.split("\n"):
        assert gpt2_fast_tokenizer.encode(line) == gpt2_tokenizer.encode(line), line


@settings(max_examples=200, deadline=None)
@given(text=any_text | tricky_text)
def test_random_text_matches_readable(gpt2_fast_tokenizer, gpt2_tokenizer, text):
    assert gpt2_fast_tokenizer.encode_ordinary(text) == gpt2_tokenizer.encode_ordinary(text)


@settings(max_examples=200, deadline=None)
@given(text=any_text | tricky_text)
def test_scanner_splits_like_the_regex(text):
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    classes = character_classes()
    pieces, start = [], 0
    while start < len(text):
        end = _piece_end(code_points, start, classes)
        pieces.append(text[start:end])
        start = end
    assert pieces == regex.findall(GPT2_SPLIT_PATTERN, text)


def test_character_classes():
    classes = character_classes()
    expected = {
        "a": LETTER, "é": LETTER, "我": LETTER, "7": NUMBER, "٣": NUMBER, "Ⅻ": NUMBER,
        " ": SPACE, "\u3000": SPACE, "\x85": SPACE,
        "\u200b": OTHER, "'": OTHER, "\U0001f600": OTHER,
        "\x1c": OTHER,  # str.isspace() says yes, the regex's \s says no
    }
    assert {char: classes[ord(char)] for char in expected} == expected


@pytest.mark.parametrize(
    "text",
    [
        "a" * 200_000,  # one piece of 200 000 bytes: needs the O(n log n) merge
        "".join(random.Random(0).choices("abcdefghijklmnopqrstuvwxyz", k=50_000)),
        "9" * 50_000,
        " " * 20_000 + "x",
        "\n" * 10_000,
        "我" * 10_000,
        "\U0001f600" * 5_000,
    ],
    ids=["letters", "random-letters", "digits", "spaces", "newlines", "cjk", "emoji"],
)
def test_long_pieces_match_tiktoken(gpt2_fast_tokenizer, tiktoken_gpt2, text):
    assert gpt2_fast_tokenizer.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


@pytest.mark.parametrize(
    "text",
    [
        "".join(random.Random(1).choices("abcdefghijklmnopqrstuvwxyz", k=50_000)),  # 50 KB
        "a" * 20_000,
        "ab" * 5_000 + "ba" * 5_000,
        "".join(random.Random(2).choices("0123456789", k=20_000)),
        "".join(random.Random(3).choices("我喜欢吃苹果", k=5_000)),
    ],
    ids=["random-letters", "letters", "pairs", "digits", "cjk"],
)
def test_readable_merges_long_pieces_like_fast(gpt2_fast_tokenizer, gpt2_tokenizer, text):
    # The readable merge loop uses a heap (O(n log n)): 50 KB of letters takes well under a
    # second, where rescanning every pair after each merge took about 50 s.
    assert gpt2_tokenizer.encode_ordinary(text) == gpt2_fast_tokenizer.encode_ordinary(text)


def test_explain_a_long_piece_records_each_pass(gpt2_tokenizer):
    (trace,) = gpt2_tokenizer.explain("ab" * 500)
    assert [step.rank for step in trace.steps] == sorted(step.rank for step in trace.steps)
    assert trace.steps[-1].symbols == tuple(gpt2_tokenizer.decode([i]) for i in trace.ids)
    assert "".join(trace.steps[0].symbols) == "ab" * 500


def test_special_tokens_and_empty_text(gpt2_fast_tokenizer):
    assert gpt2_fast_tokenizer.encode("") == []
    assert gpt2_fast_tokenizer.encode("a<|endoftext|>b", allowed_special="all") == [64, 50256, 65]
    with pytest.raises(ValueError, match="disallowed"):
        gpt2_fast_tokenizer.encode("a<|endoftext|>b")


def test_trained_vocabulary_matches_readable(trained_pair, tokenizer_corpus):
    readable, fast = trained_pair
    text = tokenizer_corpus + ENDOFTEXT
    assert fast.encode(text, allowed_special="all") == readable.encode(text, allowed_special="all")


@settings(max_examples=100, deadline=None)
@given(text=any_text | tricky_text)
def test_trained_vocabulary_matches_readable_on_random_text(trained_pair, text):
    readable, fast = trained_pair
    assert fast.encode_ordinary(text) == readable.encode_ordinary(text)


def test_lower_ranked_pair_waits_for_the_current_pass():
    # Two merges spell "abc": (ab, c) at rank 2 and (a, bc) at rank 4. In "abcabc" the first
    # merge is (b, c), leaving a bc a bc; the pass for rank 4 then fuses both (a, bc) pairs.
    # Fusing the first one creates (abc, a), rank 3, but GPT-2 finishes the rank-4 pass before
    # looking at it, so the result is abc abc, not abca bc.
    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    merges = [("b", "c"), ("a", "b"), ("ab", "c"), ("abc", "a"), ("a", "bc")]
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    readable = Tokenizer(vocab, merges, {ENDOFTEXT: len(vocab)})
    fast = FastTokenizer(vocab, merges, {ENDOFTEXT: len(vocab)})
    expected = [vocab["abc"], vocab["abc"]]
    assert readable.encode("abcabc") == fast.encode("abcabc") == expected
