"""Special tokens in raw text: tiktoken's allowed / disallowed rules, and cutting text at them.

Special tokens such as ``<|endoftext|>`` are found in the text before any BPE and mapped straight
to their ids, but only where the caller allows it. The tokenizer (bpe.py) and BPE training
(train.py) both cut text here.
"""
from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Literal

import regex


def split_on_special(
    text: str,
    specials: frozenset[str],
    allowed_special: Collection[str] | Literal["all"],
    disallowed_special: Collection[str] | Literal["all"],
) -> list[tuple[str, str | None]]:
    """Cut text at allowed special tokens: a list of (ordinary text, special token or None).

    ``specials`` are the tokenizer's special tokens. Raises ValueError if the text contains a
    disallowed special token (tiktoken's rules, see :meth:`~minillm.tokenizer.bpe.Tokenizer.encode`).
    """
    text = replace_lone_surrogates(text)
    allowed = specials if allowed_special == "all" else frozenset(allowed_special)
    if allowed - specials:
        raise ValueError(
            f"allowed_special names {sorted(allowed - specials)},"
            " which are not special tokens of this tokenizer"
        )
    if disallowed_special == "all":
        disallowed = specials - allowed
    else:
        disallowed = frozenset(disallowed_special)
    if disallowed and (found := special_token_regex(disallowed).search(text)):
        token = found.group()
        raise ValueError(
            f"the text contains the special token {token!r}, which is disallowed.\n"
            f"To encode it as the special token, pass allowed_special={{{token!r}}}"
            " (or 'all').\n"
            "To encode it as ordinary text, pass disallowed_special=()."
        )
    if not allowed:
        return [(text, None)]
    chunks: list[tuple[str, str | None]] = []
    start = 0
    for match in special_token_regex(allowed).finditer(text):
        chunks.append((text[start : match.start()], match.group()))
        start = match.end()
    chunks.append((text[start:], None))
    return chunks


@functools.lru_cache(maxsize=64)
def special_token_regex(tokens: frozenset[str]) -> regex.Pattern[str]:
    """A regex matching any of ``tokens``, longest first so that no token hides a longer one.

    Encoding and :mod:`minillm.tokenizer.train` both cut text at special tokens with it. Cached: it
    is asked for on every encode, and building it costs more than encoding a short text."""
    longest_first = sorted(tokens, key=len, reverse=True)
    return regex.compile("|".join(regex.escape(token) for token in longest_first))


def replace_lone_surrogates(text: str) -> str:
    """Replace unpaired surrogates, which UTF-8 cannot encode, with U+FFFD, as tiktoken does.

    Every path that encodes text starts here, so this is also where a text that is not a str
    is refused, before ``text.encode`` would fail with a puzzling AttributeError."""
    require_str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def require_str(text: object) -> None:
    """Raise TypeError unless ``text`` is a str, saying what to do with bytes."""
    if isinstance(text, (bytes, bytearray)):
        raise TypeError("text must be a str, got bytes: decode them to str first, "
                        "e.g. text.decode('utf-8')")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
