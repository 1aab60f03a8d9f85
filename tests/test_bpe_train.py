"""BPE training: hand-checked merges, and the incremental counts against a naive recount."""

import json
from collections import Counter
from pathlib import Path

import pytest

from minillm.tokenizer.bpe import ENDOFTEXT, Tokenizer, bytes_to_unicode
from minillm.tokenizer.bpe import FastTokenizer
from minillm.tokenizer.train import BpeTrainer, count_pieces, train_bpe


# The naive trainer's results (tests/oracles.py, withheld from the student copy), recorded by
# scripts/record_oracles.py: its merges of the corpus, and its pieces, pair counts and pair
# index after some numbers of merges.
with open(Path(__file__).parent / "data" / "oracles" / "bpe_training.json", encoding="utf-8") as _f:
    NAIVE = json.load(_f)


def spell(pair) -> str:
    return "(" + ", ".join(repr(token) for token in pair) + ")"


def assert_same_merges(got, expected):
    """The first merge that differs, with the ones before it, instead of two long lists."""
    for number, (mine, theirs) in enumerate(zip(got, expected), 1):
        if tuple(mine) != tuple(theirs):
            before = ", ".join(spell(pair) for pair in expected[max(0, number - 4):number - 1])
            raise AssertionError(f"merge {number} is {spell(mine)}, expected {spell(theirs)} "
                                 f"(the merges before it agree{': ...' + before if before else ''})")
    assert len(got) == len(expected), f"{len(got)} merges, expected {len(expected)}"


def assert_same_pair_state(trainer, state, n_merges):
    """The trainer's counts and index after n_merges against the naive recount's."""
    tokens = NAIVE["tokens"]
    where = f"after {n_merges} merge{'s' * (n_merges != 1)}"
    if n_merges:
        where += f" (the last {spell(tokens[i] for i in trainer.merges[-1])})"
    for number, (mine, theirs) in enumerate(zip(trainer.pieces, state["pieces"])):
        assert mine == theirs, (f"{where}: piece {number} is {[tokens[i] for i in mine]}, "
                                f"expected {[tokens[i] for i in theirs]}")
    expected = Counter({(a, b): n for a, b, n in state["pair_counts"]})
    if trainer.pair_counts != expected:
        wrong = sorted(p for p in set(trainer.pair_counts) | set(expected)
                       if trainer.pair_counts.get(p, 0) != expected.get(p, 0))[:3]
        raise AssertionError(f"{where}: pair counts differ: " + "; ".join(
            f"{spell((tokens[a], tokens[b]))} counted {trainer.pair_counts.get((a, b), 0)}, "
            f"expected {expected.get((a, b), 0)}" for a, b in wrong))
    index = {(a, b): set(ix) for a, b, ix in state["pieces_with_pair"]}
    mine = dict(trainer.pieces_with_pair)     # a pair that occurs nowhere has no entry, not {}
    for pair in sorted(set(mine) | set(index)):
        def shown(table):
            return sorted(table[pair]) if pair in table else "no entry"

        assert mine.get(pair) == index.get(pair), (
            f"{where}: pieces_with_pair[{spell(tokens[i] for i in pair)}] is {shown(mine)}, "
            f"expected {shown(index)}")


def test_a_wrong_count_is_reported_by_its_pair(tokenizer_corpus):
    """The failure names the pair, spelled as tokens, and both counts."""
    trainer = BpeTrainer(count_pieces([tokenizer_corpus]))
    trainer.merge(trainer.best_pair())
    first = min(trainer.pair_counts)
    trainer.pair_counts[first] += 1
    with pytest.raises(AssertionError) as error:
        assert_same_pair_state(trainer, NAIVE["trainer_states"]["1"], 1)
    tokens = NAIVE["tokens"]
    count = trainer.pair_counts[first]
    assert str(error.value) == (f"after 1 merge (the last {spell(tokens[i] for i in trainer.merges[0])}): "
                                f"pair counts differ: {spell(tokens[i] for i in first)} counted "
                                f"{count}, expected {count - 1}")


@pytest.mark.assignment(1)
def test_wikipedia_example():
    # "aaabdaaabac" is one piece. Pairs: aa 4 (overlapping pairs count), ab 2, the rest 1.
    # 1. (a, a) -> aa, a, b, d, aa, a, b, a, c: now (aa, a) 2 and (a, b) 2 tie;
    #    b"a" sorts before b"aa", so
    # 2. (a, b) -> aa, ab, d, aa, ab, a, c: (aa, ab) 2
    # 3. (aa, ab) -> aaab, d, aaab, a, c: every pair 1; (a, c) sorts first
    # 4. (a, c)
    tokenizer = train_bpe(["aaabdaaabac"], vocab_size=256 + 4, special_tokens=())
    assert tokenizer.merges == [("a", "a"), ("a", "b"), ("aa", "ab"), ("a", "c")]
    ids = tokenizer.encode("aaabdaaabac")
    assert ids == [tokenizer.vocab[token] for token in ["aaab", "d", "aaab", "ac"]]


@pytest.mark.assignment(1)
def test_pairs_are_counted_within_pieces_weighted_by_frequency():
    # Pieces: "ab" x1, " ab" x2, " ba" x1 (a space is spelled Ġ).
    # Pairs: (a, b) 1 + 2 = 3, (Ġ, a) 2, (Ġ, b) 1, (b, a) 1. The pair (b, Ġ) straddles two
    # pieces and is never counted, though "b " occurs three times in the text.
    # 1. (a, b);  2. (Ġ, ab) 2;  3. (Ġ, b) and (b, a) tie at 1, b" " < b"b";  4. (Ġb, a)
    tokenizer = train_bpe(["ab ab ab ba"], vocab_size=256 + 4, special_tokens=())
    assert tokenizer.merges == [("a", "b"), ("Ġ", "ab"), ("Ġ", "b"), ("Ġb", "a")]


@pytest.mark.assignment(1)
@pytest.mark.parametrize("texts", [["ab", "cd"], ["cd", "ab"], ["ba", "ab", "cd", "dc"]])
def test_ties_go_to_the_pair_whose_bytes_sort_first(texts):
    assert train_bpe(texts, vocab_size=257, special_tokens=()).merges == [("a", "b")]


@pytest.mark.assignment(1)
def test_count_beats_byte_order():
    assert train_bpe(["zz", "zz", "ab"], vocab_size=257, special_tokens=()).merges == [("z", "z")]


@pytest.mark.assignment(1)
def test_incremental_counts_equal_a_full_recount_after_merges(tokenizer_corpus):
    trainer = BpeTrainer(count_pieces([tokenizer_corpus]))
    states = NAIVE["trainer_states"]
    for n_merges in range(max(map(int, states)) + 1):
        if str(n_merges) in states:
            assert_same_pair_state(trainer, states[str(n_merges)], n_merges)
        trainer.merge(trainer.best_pair())


@pytest.mark.assignment(1)
def test_merges_equal_the_naive_trainer(tokenizer_corpus):
    tokenizer = train_bpe([tokenizer_corpus], vocab_size=256 + 200, special_tokens=())
    assert_same_merges(tokenizer.merges, NAIVE["merges"])


def test_training_is_deterministic(tokenizer_corpus):
    lines = tokenizer_corpus.split("\n")
    first = train_bpe(lines, vocab_size=400)
    assert train_bpe(lines, vocab_size=400).merges == first.merges
    assert train_bpe(lines[::-1], vocab_size=400).merges == first.merges


def test_vocabulary_layout(tokenizer_corpus, gpt2_tokenizer):
    tokenizer = train_bpe([tokenizer_corpus], vocab_size=300, special_tokens=(ENDOFTEXT, "<|pad|>"))
    assert tokenizer.n_vocab == 300
    assert len(tokenizer.merges) == 300 - 256 - 2
    assert tokenizer.special_tokens == {ENDOFTEXT: 298, "<|pad|>": 299}
    assert tokenizer.eot_token == 298
    # ids 0-255 are the bytes in GPT-2's order
    for symbol in bytes_to_unicode().values():
        assert tokenizer.vocab[symbol] == gpt2_tokenizer.vocab[symbol]
    assert tokenizer.encode("a<|pad|>", allowed_special="all") == [tokenizer.vocab["a"], 299]


def test_special_tokens_are_not_learned_from():
    tokenizer = train_bpe(["hello<|endoftext|>" * 50], vocab_size=300)
    learned = {first + second for first, second in tokenizer.merges}
    assert "hello" in learned
    assert not any(symbol in token for token in learned for symbol in "<|>")


def test_pieces_are_counted_as_the_tokenizer_splits_the_text():
    # "<|a|>b" is one special token: the tokenizer matches special tokens longest first, so
    # training must not see a stray "b" after "<|a|>" (as it would taking them in given order).
    special_tokens = ["<|a|>", "<|a|>b"]
    text = "x<|a|>by <|a|> z<|a|>bb"
    tokenizer = BpeTrainer({}).to_tokenizer(special_tokens)
    traces = tokenizer.explain(text, allowed_special="all")
    expected = Counter(trace.text for trace in traces if not trace.special)
    assert count_pieces([text], special_tokens) == expected
    assert expected == Counter(["x", "y", " ", " z", "b"])


def test_training_on_text_with_a_lone_surrogate_learns_what_encode_sees():
    """UTF-8 cannot encode an unpaired surrogate: encode replaces it with U+FFFD, so must training."""
    text = "ab\ud800cd ab\ud800cd"
    assert count_pieces([text]) == count_pieces(["ab\ufffdcd ab\ufffdcd"])
    tokenizer = train_bpe([text], vocab_size=260)
    assert tokenizer.decode(tokenizer.encode(text)) == "ab\ufffdcd ab\ufffdcd"


def test_training_stops_when_nothing_is_left_to_merge():
    tokenizer = train_bpe(["ab"], vocab_size=1000)
    assert tokenizer.merges == [("a", "b")]
    assert tokenizer.n_vocab == 256 + 1 + 1


@pytest.mark.parametrize(
    ("vocab_size", "special_tokens"), [(255, ()), (256, (ENDOFTEXT,)), (300, ("x", "x"))]
)
def test_bad_arguments_raise(vocab_size, special_tokens):
    with pytest.raises(ValueError):
        train_bpe(["ab"], vocab_size=vocab_size, special_tokens=special_tokens)


def test_save_and_load_round_trip(tokenizer_corpus, tmp_path):
    tokenizer = train_bpe([tokenizer_corpus], vocab_size=500)
    tokenizer.save(tmp_path)
    reloaded = Tokenizer.from_pretrained(tmp_path)
    fast = FastTokenizer.from_pretrained(tmp_path)
    assert (reloaded.vocab, reloaded.merges, reloaded.special_tokens) == (
        tokenizer.vocab, tokenizer.merges, tokenizer.special_tokens)
    unseen = "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich."
    text = tokenizer_corpus + ENDOFTEXT + unseen
    ids = tokenizer.encode(text, allowed_special="all")
    assert reloaded.encode(text, allowed_special="all") == ids
    assert fast.encode(text, allowed_special="all") == ids
    assert reloaded.decode(ids) == text


def test_progress_bar(capsys):
    train_bpe(["ab ab"], vocab_size=260, progress=True)
    assert "BPE merges" in capsys.readouterr().err
