"""Streaming text: pieces are whole characters, and together they are exactly the decoded text."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.inference.streaming import TextStreamer, stream_text


class ByteChunks:
    """A stand-in tokenizer whose token i is the byte string chunks[i]."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks

    def token_bytes(self, token_id: int) -> bytes:
        return self.chunks[token_id]


def stream_pieces(tokenizer, ids) -> list[str]:
    streamer = TextStreamer(tokenizer)
    return [streamer.put(i) for i in ids] + [streamer.end()]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=30), st.lists(st.integers(0, 200), max_size=40))
def test_any_split_of_valid_text_streams_back_exactly(text, cuts):
    chunks = split_at(text.encode("utf-8"), cuts)
    pieces = stream_pieces(ByteChunks(chunks), range(len(chunks)))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces) or "\ufffd" in text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.lists(st.integers(0, 200), max_size=40))
def test_any_bytes_stream_like_a_one_shot_decode(data, cuts):
    """Even invalid UTF-8 (a model can emit it) comes out as decoding everything at once would."""
    chunks = split_at(data, cuts)
    assert "".join(stream_pieces(ByteChunks(chunks), range(len(chunks)))) == data.decode("utf-8", "replace")


def test_a_character_split_over_tokens_waits_for_its_last_byte():
    chunks = [b"\xe5", b"\x90", b"\x83!"]          # 吃 = e5 90 83
    assert stream_pieces(ByteChunks(chunks), [0, 1, 2]) == ["", "", "吃!", ""]


def test_end_flushes_an_unfinished_character_and_resets():
    tokenizer = ByteChunks([b"a\xe5\x90", b"b"])
    streamer = TextStreamer(tokenizer)
    assert streamer.put(0) == "a"
    assert streamer.end() == "\ufffd"              # as bytes.decode(errors="replace") would show it
    assert streamer.put(1) == "b"                  # nothing left over from before


# ---- with the GPT-2 tokenizer ------------------------------------------------------------------
def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer_module = pytest.importorskip("minillm.tokenizer.bpe")
    return tokenizer_module.Tokenizer.gpt2()


@pytest.mark.parametrize("text", ["我喜欢吃苹果", "🙂👍🏽 naïve café, ☃ 日本語のテキスト", "A 🦙 and a 🐪 went to 北京"])
def test_gpt2_tokens_of_multibyte_text(tokenizer, text):
    ids = tokenizer.encode(text)
    assert not all(is_utf8(tokenizer.token_bytes(i)) for i in ids), "needs a token that splits a character"
    pieces = stream_pieces(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_stream_text_matches_generate(tokenizer):
    from conftest import REFERENCE_DIR
    from minillm.inference.generate import generate
    from minillm.model.gpt2 import GPT2

    if not (REFERENCE_DIR / "model.safetensors").is_file():
        pytest.skip("weights/reference/ is not there")
    model = GPT2.from_pretrained(REFERENCE_DIR)
    prompt = "我喜欢吃"
    kwargs = dict(do_sample=True, top_k=50, seed=0)
    pieces = list(stream_text(model, tokenizer, prompt, 30, **kwargs))
    ids = tokenizer.encode(prompt)
    new_ids = generate(model, ids, 30, **kwargs)[len(ids):]
    assert "".join(pieces) == tokenizer.decode(new_ids)
    assert all(pieces)                                               # no empty pieces
    if "\ufffd" not in tokenizer.decode(new_ids):
        assert not any("\ufffd" in p for p in pieces)


def test_stream_text_takes_one_prompt(tokenizer):
    from minillm.model.config import GPT2Config
    from minillm.model.gpt2 import GPT2
    from minillm.model.params import random_params

    config = GPT2Config(vocab_size=50257, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    model = GPT2(config, random_params(config))
    with pytest.raises(ValueError, match="stream_text takes one prompt"):
        stream_text(model, tokenizer, [[1, 2], [3, 4]], 2)
