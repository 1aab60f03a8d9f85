"""Streaming text while it is generated, without breaking multi-byte characters.

GPT-2's tokens are byte strings, not characters: 吃 is the three UTF-8 bytes e5 90 83, and a
token may end after the first of them. Decoding each token on its own would print U+FFFD (the
replacement character) for the incomplete piece and lose the character. So the streamer feeds
the bytes to an incremental UTF-8 decoder, which emits every complete character at once and
holds back the bytes of one that is still incomplete until the next token completes it. At
the end, `end()` flushes what is left (a truncated character then becomes U+FFFD, exactly as
decoding all the ids at once would show it).

The invariant: "".join(pieces) == tokenizer.decode(new_ids).
"""
from __future__ import annotations

import codecs
from typing import Iterator

import numpy as np


class TextStreamer:
    """Turns token ids, one at a time, into the text they complete.

        streamer = TextStreamer(tokenizer)
        for token_id in ids:
            print(streamer.put(token_id), end="", flush=True)
        print(streamer.end())
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # errors="replace" matches bytes.decode(errors="replace") on the whole sequence: an
        # invalid byte still becomes U+FFFD, but only once it is certain to be invalid.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def put(self, token_id: int) -> str:
        """The text this token completes; "" while a character is still incomplete."""
        return self._decoder.decode(self.tokenizer.token_bytes(int(token_id)))

    def end(self) -> str:
        """Whatever is still held back, decoded as is; the streamer is then ready to reuse."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


def stream_text(model, tokenizer, prompt, max_new_tokens: int | None = None, **kwargs) -> Iterator[str]:
    """Generate from `prompt` (a string, or a list of token ids) and yield the new text piece
    by piece, each piece whole characters. Arguments as in minillm.inference.generate.generate."""
    from minillm.inference.generate import stream

    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    if np.ndim(ids) != 1:
        raise ValueError(f"stream_text takes one prompt (a string or a list of ids), got shape {np.shape(ids)}")
    token_ids = stream(model, ids, max_new_tokens, **kwargs)   # checks the arguments now
    return _pieces(TextStreamer(tokenizer), token_ids)


def _pieces(streamer: TextStreamer, token_ids: Iterator[int]) -> Iterator[str]:
    for token_id in token_ids:
        piece = streamer.put(token_id)
        if piece:
            yield piece
    tail = streamer.end()
    if tail:
        yield tail
