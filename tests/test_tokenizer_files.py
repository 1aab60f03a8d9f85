"""Broken vocab.json / merges.txt files give a TokenizerFileError naming the file and the entry."""

import argparse
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minillm.tokenizer.bpe import ENDOFTEXT, Tokenizer, default_vocab_dir
from minillm.tokenizer.checks import TokenizerFileError
from minillm.tokenizer.train import train_bpe

SAMPLE = "To be, or not to be: that is the question. 1234 我 \U0001f600\n\tend"
SHAKESPEARE_TOKENIZER = default_vocab_dir().parents[1] / "data" / "shakespeare" / "tokenizer"


@pytest.fixture(scope="module")
def small_files(tmp_path_factory, tokenizer_corpus):
    """vocab.json + merges.txt of a 300-token vocabulary, as their text."""
    folder = tmp_path_factory.mktemp("small")
    train_bpe([tokenizer_corpus], 300).save(folder)
    return (folder / "vocab.json").read_text(encoding="utf-8"), \
        (folder / "merges.txt").read_text(encoding="utf-8")


def write(folder, vocab_text, merges_text):
    (folder / "vocab.json").write_text(vocab_text, encoding="utf-8")
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    return folder


def test_shipped_and_saved_vocabularies_load(tmp_path, small_files):
    assert Tokenizer.from_pretrained(SHAKESPEARE_TOKENIZER).special_tokens == {ENDOFTEXT: 4095}
    small = Tokenizer.from_pretrained(write(tmp_path, *small_files))
    assert small.n_vocab == 300 and small.special_tokens == {ENDOFTEXT: 299}
    assert small.decode(small.encode(SAMPLE)) == SAMPLE


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda vocab: "", "vocab.json is empty"),
        (lambda vocab: vocab[:-5], "vocab.json is not valid JSON"),
        (lambda vocab: json.dumps(list(json.loads(vocab))), "got a JSON array"),
        (lambda vocab: vocab.replace('"!": 0', '"!": 0.0'), "token '!' has id 0.0; expected an"),
        (lambda vocab: vocab.replace('"!": 0', '"!": -1'), "token '!' has id -1"),
        (lambda vocab: vocab.replace('"!": 0', '"!": true'), "token '!' has id True"),
        (lambda vocab: vocab.replace('"!": 0', '"!": 1'), "id 1 is used by both '!' and '\"'"),
        (lambda vocab: vocab.replace('"!": 0', '"!": 300'), "no token has id 0"),
        (lambda vocab: vocab.replace('"!": 0', '"<|pad|>": 0'), "no token for the byte symbol '!'"),
        (lambda vocab: vocab.replace('"#": 2,', '"#": 2,\n"#": 5,'), "token '#' appears twice"),
    ],
    ids=["empty", "not-json", "list", "float-id", "negative-id", "bool-id", "duplicate-id",
         "gap", "missing-byte", "repeated-token"],
)
def test_broken_vocab_json(tmp_path, small_files, edit, message):
    vocab, merges = small_files
    with pytest.raises(TokenizerFileError, match=re.escape(message)):
        Tokenizer.from_pretrained(write(tmp_path, edit(vocab), merges))


def test_non_utf8_files(tmp_path, small_files):
    write(tmp_path, *small_files)
    (tmp_path / "merges.txt").write_bytes(b"#version: 0.2\n\xff \xfe\n")
    with pytest.raises(TokenizerFileError, match=r"merges.txt: not UTF-8 text"):
        Tokenizer.from_pretrained(tmp_path)


def test_truncated_merges_name_the_first_orphaned_token(tmp_path, small_files):
    vocab, merges = small_files
    lines = merges.splitlines()
    kept, lost = lines[:-10], lines[-10]  # what the first lost merge made is now orphaned
    orphan = "".join(lost.split())
    message = rf"vocab.json: token '{re.escape(orphan)}' \(id \d+\) is neither a byte, nor made " \
              r"by a merge of .*merges.txt.*looks incomplete"
    with pytest.raises(TokenizerFileError, match=message):
        Tokenizer.from_pretrained(write(tmp_path, vocab, "\n".join(kept)))


def first_made_part(lines):
    """The first merge line with a part longer than one symbol, i.e. made by an earlier merge."""
    return next(line for line in lines[1:] if max(map(len, line.split())) > 1)


def move_to_front(lines, merge):
    """The merges with ``merge`` first, after the #version line."""
    return [lines[0], merge, *(line for line in lines[1:] if line != merge)]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: lines + [lines[5]], r"merges.txt: merge \d+ \(.*\) repeats merge 4"),
        (lambda lines: move_to_front(lines, first_made_part(lines)), "made by an earlier merge"),
        (lambda lines: [*lines, "x yz"], r"uses 'yz', which is neither a byte symbol"),
        (lambda lines: [*lines, "~ ~"], "makes '~~', which .*vocab.json lacks"),
        (lambda lines: [*lines, "a b c"], r"merges.txt:\d+: expected two symbols"),
    ],
    ids=["repeated", "out-of-order", "unknown-part", "result-not-in-vocab", "three-symbols"],
)
def test_broken_merges_txt(tmp_path, small_files, edit, message):
    vocab, merges = small_files
    lines = merges.splitlines()
    assert "~~" not in json.loads(vocab)  # the edits above rely on it
    with pytest.raises(TokenizerFileError, match=message):
        Tokenizer.from_pretrained(write(tmp_path, vocab, "\n".join(edit(lines))))


def test_a_listed_special_token_of_any_form_loads(tmp_path, small_files):
    vocab, merges = small_files
    folder = write(tmp_path, vocab.replace(ENDOFTEXT, "END"), merges)
    with pytest.raises(TokenizerFileError, match="token 'END'"):
        Tokenizer.from_pretrained(folder)
    tokenizer = Tokenizer.from_files(folder / "vocab.json", folder / "merges.txt",
                                     special_tokens={"END"})
    assert tokenizer.special_tokens == {"END": 299}


def test_cli_reports_a_broken_tokenizer_in_one_line(tmp_path, small_files, capsys):
    from minillm.cli import tokenize as cli_tokenize

    vocab, merges = small_files
    write(tmp_path, vocab, "\n".join(merges.splitlines()[:-10]))
    parser = argparse.ArgumentParser()
    cli_tokenize.add_arguments(parser)
    assert cli_tokenize.run(parser.parse_args(["hi", "--model", str(tmp_path)])) == 1
    error = capsys.readouterr().err
    assert error.startswith("minillm tokenize: ") and error.count("\n") == 1
    assert "looks incomplete" in error


# ---- any mutation: TokenizerFileError, or a tokenizer that round-trips -------------------------

def mutate(text: str, data) -> str:
    """One random edit of a file's text: bytes changed, cut short, a line dropped or repeated."""
    kind = data.draw(st.sampled_from(["bytes", "truncate", "drop-line", "repeat-line"]))
    if kind == "truncate":
        return text[: data.draw(st.integers(0, len(text)))]
    if kind == "bytes":
        chars = list(text)
        for _ in range(data.draw(st.integers(1, 3))):
            position = data.draw(st.integers(0, len(chars) - 1))
            chars[position] = data.draw(st.sampled_from(list('{}[]":,.-0123456789 \nabĠ|<>')))
        return "".join(chars)
    lines = text.split("\n")
    line = data.draw(st.integers(0, len(lines) - 1))
    if kind == "drop-line":
        return "\n".join(lines[:line] + lines[line + 1 :])
    return "\n".join(lines[: line + 1] + lines[line:])


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), which=st.sampled_from(["vocab", "merges", "both"]))
def test_mutated_files_fail_cleanly_or_round_trip(tmp_path, small_files, data, which):
    vocab, merges = small_files
    if which in ("vocab", "both"):
        vocab = mutate(vocab, data)
    if which in ("merges", "both"):
        merges = mutate(merges, data)
    try:
        tokenizer = Tokenizer.from_pretrained(write(tmp_path, vocab, merges))
    except TokenizerFileError:
        return
    assert tokenizer.decode(tokenizer.encode_ordinary(SAMPLE)) == SAMPLE
