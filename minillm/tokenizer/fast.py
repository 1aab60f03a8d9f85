"""GPT-2 encoding compiled with numba: the same ids as :mod:`minillm.tokenizer.bpe`, much faster.

Read :mod:`minillm.tokenizer.bpe` first; this module changes how the work is done, not what is
computed. In Python, splitting text with the regex alone costs about as much as tiktoken's
whole encode, so the per-piece loop has to leave Python. :func:`_encode_text` does all of it
in one numba call per text (``benchmarks/bench_tokenizer.py`` measures the speed); the compiled
functions are in :mod:`minillm.tokenizer.fast_kernels`, the tables they read are here:

* **Pre-tokenisation** is a hand-written scanner (:func:`_piece_end`) that tests GPT-2's
  regex alternatives in order. Which characters count as letters, numbers and whitespace is
  read off the ``regex`` module itself (:func:`character_classes`), so the scanner splits
  exactly where the regex would, for every code point.
* **Whole tokens first.** Most pieces of real text are a single token (``" the"``,
  ``" of"``), so each piece is first looked up among the tokens that BPE turns back into
  themselves (:class:`TokenTable`); only the rest go through the merge loop.
* **Merging** finds the lowest-ranked pair with a binary heap instead of rescanning every
  pair after each merge: O(n log n) in the piece length rather than O(n²), which matters
  for long pieces such as a megabyte of letters with no space. The symbols form a linked
  list, so fusing two of them is O(1). Merges are looked up by pairs of token ids in a hash
  table (:class:`MergeTable`).

:class:`~minillm.tokenizer.bpe.FastTokenizer` uses :class:`CompiledEncoder` for ordinary text and
inherits special tokens, decoding and :meth:`~minillm.tokenizer.bpe.Tokenizer.explain` unchanged.
This module never imports bpe.py, so that bpe.py can build the fast tokenizer without a cycle.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import regex

from minillm.kernels import compile_notice
from minillm.tokenizer import fast_kernels
from minillm.tokenizer.fast_kernels import (LETTER, NUMBER, OTHER, SPACE, _encode_text,
                                            _fill_merge_table, _fill_token_table)

_N_CODE_POINTS = 0x110000
_ENTRY_POINTS = ("_fill_merge_table", "_fill_token_table", "_encode_text")  # each links its callees


@functools.cache
def announce_compilation() -> None:
    """Say so, once, before numba compiles: the first run would otherwise wait in silence."""
    compile_notice.announce_compilation("tokenizer kernels", {Path(fast_kernels.__file__): _ENTRY_POINTS})


@functools.cache
def character_classes() -> np.ndarray:
    """Class (OTHER, LETTER, NUMBER or SPACE) of every code point, as the ``regex`` module sees it.

    Taking the classes from ``regex`` rather than from :mod:`unicodedata` keeps the scanner
    on the same Unicode version as :class:`~minillm.tokenizer.bpe.Tokenizer`.
    """
    code_points = np.arange(_N_CODE_POINTS, dtype=np.uint32)
    every_character = code_points.tobytes().decode("utf-32-le", "surrogatepass")
    classes = np.full(_N_CODE_POINTS, OTHER, dtype=np.uint8)
    for pattern, char_class in ((r"\p{L}+", LETTER), (r"\p{N}+", NUMBER), (r"\s+", SPACE)):
        for run in regex.finditer(pattern, every_character):
            classes[run.start() : run.end()] = char_class
    return classes


class MergeTable(NamedTuple):
    """The merges as an open-addressing hash table keyed by the pair of token ids.

    A pair hashes to a slot (:func:`_slot`); if that slot holds another pair, the search
    moves on to the next slot, until it finds the pair or an empty slot (key -1). At most
    half the slots are used, so searches are short.
    """

    key: np.ndarray  # left << 32 | right, or -1 for an empty slot
    rank: np.ndarray
    merged: np.ndarray  # id of the token the merge makes

    @classmethod
    def build(cls, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]]) -> MergeTable:
        left = np.array([vocab[first] for first, _ in merges], dtype=np.int64)
        right = np.array([vocab[second] for _, second in merges], dtype=np.int64)
        merged = np.array([vocab[first + second] for first, second in merges], dtype=np.int64)
        n_slots = 1 << (2 * len(merges)).bit_length()
        empty = np.full(n_slots, -1, dtype=np.int64)
        table = cls(empty, np.zeros(n_slots, dtype=np.int64), np.zeros(n_slots, dtype=np.int64))
        _fill_merge_table(table, left, right, merged)
        return table


class TokenTable(NamedTuple):
    """Tokens that BPE turns back into themselves, looked up by their bytes.

    If a piece's bytes equal such a token's, the merge loop would end at that token, so it can
    be skipped. Tokens for which the merge loop ends elsewhere are left out, which keeps the
    shortcut exact for any vocabulary.
    """

    slot_token: np.ndarray  # token id in each hash slot, or -1 for an empty slot
    start: np.ndarray  # token t's bytes are data[start[t]:start[t + 1]]
    data: np.ndarray

    @classmethod
    def build(
        cls, token_bytes: Sequence[bytes], byte_ids: np.ndarray, merge_table: MergeTable
    ) -> TokenTable:
        data = np.frombuffer(b"".join(token_bytes), dtype=np.uint8)
        start = np.zeros(len(token_bytes) + 1, dtype=np.int64)
        np.cumsum([len(token) for token in token_bytes], out=start[1:])
        n_slots = 1 << (2 * len(token_bytes)).bit_length()
        table = cls(np.full(n_slots, -1, dtype=np.int64), start, data)
        _fill_token_table(table, byte_ids, merge_table)
        return table


class CompiledEncoder:
    """The tables :func:`_encode_text` reads, built once per vocabulary, and the call into it."""

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        byte_encoder: Mapping[int, str],
        token_bytes: Sequence[bytes],
    ) -> None:
        announce_compilation()
        byte_ids = [vocab[byte_encoder[byte]] for byte in range(256)]
        self._byte_ids = np.array(byte_ids, dtype=np.int64)
        self._merge_table = MergeTable.build(vocab, merges)
        self._token_table = TokenTable.build(token_bytes, self._byte_ids, self._merge_table)
        self._classes = character_classes()

    def encode(self, text: str) -> list[int]:
        """The ids of ordinary text (no special tokens), as ``Tokenizer.encode_ordinary`` gives them."""
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        utf8 = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        ids = np.empty(len(utf8), dtype=np.int64)  # never more tokens than bytes
        tables = (self._classes, self._byte_ids, self._merge_table, self._token_table)
        n_ids = _encode_text(code_points, utf8, *tables, ids)
        return ids[:n_ids].tolist()
