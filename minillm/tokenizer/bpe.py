"""GPT-2's byte-level BPE tokenizer, written to be read.

A tokenizer turns text into a list of integer ids, and back. GPT-2's does it in three steps.

1. **Pre-tokenise.** A regular expression (:data:`GPT2_SPLIT_PATTERN`) cuts the text into
   pieces: a word with its leading space (``" world"``), a run of digits, a run of
   punctuation, whitespace, or an English contraction suffix (``'s``, ``'ll``...). Merges
   never cross a piece boundary, so ``" dog"`` becomes one token however it is surrounded.
2. **Bytes to symbols.** Each piece is UTF-8 encoded and every byte becomes one symbol, a
   printable character chosen by :func:`bytes_to_unicode` (a space shows as ``Ġ``, a
   newline as ``Ċ``). Any text at all can be spelled with these 256 symbols, so there is no
   "unknown" token; the printable spelling only exists so the vocabulary files are readable.
3. **Merge.** The merge list ranks symbol pairs in the order they were learned in training
   (see :mod:`minillm.tokenizer.train`). Find the adjacent pair with the lowest rank, fuse every
   occurrence of it, and repeat until no adjacent pair is in the list. Each remaining symbol
   is a token; the vocabulary maps it to its id.

Special tokens such as ``<|endoftext|>`` skip all three steps: they are found in the raw
text and mapped straight to their id, but only where the caller allows it, so text typed by
a user cannot smuggle a control token into the model.

>>> tokenizer = Tokenizer.gpt2(fast=False)
>>> tokenizer.encode("Hello world")
[15496, 995]
>>> tokenizer.decode([15496, 995])
'Hello world'

:meth:`Tokenizer.explain` shows every step for each piece.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import regex

from minillm.tokenizer.files import find_tokenizer_files, read_merges, write_tokenizer_files
from minillm.tokenizer.special import replace_lone_surrogates, split_on_special

GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
"""GPT-2's pre-tokenisation regex. ``\\p{L}`` is any letter and ``\\p{N}`` any digit or
numeral, in any script. ``\\s+(?!\\S)`` stops a run of whitespace one character before the
next word, so that the word keeps its leading space."""

ENDOFTEXT = "<|endoftext|>"

GPT2_SPLIT_REGEX = regex.compile(GPT2_SPLIT_PATTERN)
"""GPT2_SPLIT_PATTERN compiled, shared by encoding and :mod:`minillm.tokenizer.train`."""


# Natural text repeats the same pieces over and over, so encoding remembers each piece's ids.
# Past this many entries the cache starts afresh, which bounds its memory.
_PIECE_CACHE_SIZE = 100_000


def default_vocab_dir() -> Path:
    """The folder holding the GPT-2 vocabulary shipped with the repository."""
    return Path(__file__).resolve().parents[2] / "weights" / "gpt2"


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte value to the printable character GPT-2 uses to spell it.

    The 188 bytes that are already visible Latin-1 characters stand for themselves; the other
    68 (control codes, space, non-breaking space, soft hyphen...) are moved to ``chr(256 + k)``.
    The dict's order, visible bytes first, is the order of ids 0-255 in GPT-2's vocabulary.
    """
    visible = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {byte: chr(byte) for byte in visible}
    hidden = [byte for byte in range(256) if byte not in symbols]
    for k, byte in enumerate(hidden):
        symbols[byte] = chr(256 + k)
    return symbols


@dataclass(frozen=True)
class MergeStep:
    """One step of BPE: every occurrence of ``pair`` was fused, leaving ``symbols``."""

    pair: tuple[str, str]
    rank: int
    symbols: tuple[str, ...]


@dataclass(frozen=True)
class PieceTrace:
    """How one pre-token piece became token ids (see :meth:`Tokenizer.explain`)."""

    text: str
    utf8: bytes
    symbols: tuple[str, ...]  # one symbol per byte, before any merge
    steps: tuple[MergeStep, ...]
    ids: tuple[int, ...]
    special: bool = False  # a special token, matched whole rather than merged


class Tokenizer:
    """A byte-level BPE tokenizer with GPT-2's pre-tokenisation.

    Args:
        vocab: token, spelled in :func:`bytes_to_unicode` symbols, -> id.
        merges: symbol pairs in the order they were learned; a pair's index is its rank.
        special_tokens: text -> id for tokens outside BPE, such as ``<|endoftext|>``.

    Ids must run from 0 to ``n_vocab - 1`` across ``vocab`` and ``special_tokens`` together.
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        special_tokens: Mapping[str, int] | None = None,
    ) -> None:
        self.vocab = dict(vocab)
        self.merges = [(first, second) for first, second in merges]
        self.special_tokens = dict(special_tokens or {})
        self.byte_encoder = bytes_to_unicode()
        self.merge_ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._check_consistency()

        byte_decoder = {symbol: byte for byte, symbol in self.byte_encoder.items()}
        self._token_bytes = [b""] * self.n_vocab
        for token, token_id in self.vocab.items():
            self._token_bytes[token_id] = bytes(byte_decoder[symbol] for symbol in token)
        for text, token_id in self.special_tokens.items():
            self._token_bytes[token_id] = text.encode("utf-8")
        self._piece_cache: dict[str, tuple[int, ...]] = {}

    def _check_consistency(self) -> None:
        """Reject vocabularies that BPE cannot use, with a message that says why."""
        if len(self.merge_ranks) != len(self.merges):
            raise ValueError("the merge list contains the same pair twice")
        missing_bytes = set(self.byte_encoder.values()) - self.vocab.keys()
        if missing_bytes:
            raise ValueError(
                f"the vocabulary lacks {len(missing_bytes)} of the 256 byte symbols,"
                f" e.g. {sorted(missing_bytes)[:5]}"
            )
        # Training only ever merges symbols that already exist, so each merge's two halves
        # must be bytes or the results of earlier merges.
        known = set(self.byte_encoder.values())
        for rank, (first, second) in enumerate(self.merges):
            merge = f"merge {rank} ({first!r}, {second!r})"
            if first not in known or second not in known:
                raise ValueError(f"{merge} uses a symbol that no earlier merge made")
            if first + second not in self.vocab:
                raise ValueError(f"{merge} makes {first + second!r}, which the vocabulary lacks")
            known.add(first + second)
        unreachable = self.vocab.keys() - known
        if unreachable:
            raise ValueError(
                f"vocabulary entries {sorted(unreachable)[:5]} are neither bytes nor merge results"
            )
        ids = sorted([*self.vocab.values(), *self.special_tokens.values()])
        if ids != list(range(len(ids))):
            raise ValueError("token ids must be 0, 1, ..., n_vocab - 1, each used once")

    # ----------------------------------------------------------------- loading and saving

    @classmethod
    def gpt2(cls, fast: bool = True) -> Tokenizer:
        """OpenAI's GPT-2 tokenizer, from the repository's ``weights/gpt2`` folder.

        ``fast=True`` returns a :class:`FastTokenizer`, which gives the same ids much faster;
        ``fast=False`` this readable implementation.
        """
        if fast:
            return FastTokenizer.from_pretrained(default_vocab_dir())
        return cls.from_pretrained(default_vocab_dir())

    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path) -> Tokenizer:
        """Load a vocabulary file (``vocab.json`` / ``encoder.json``) and a merges file
        (``merges.txt`` / ``vocab.bpe``).

        Special tokens are stored in the vocabulary file like any other token; they are the
        entries that are neither a byte symbol nor the result of a merge.
        """
        vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        merges = read_merges(Path(merges_path))
        learned = set(bytes_to_unicode().values()) | {first + second for first, second in merges}
        return cls(
            vocab={token: i for token, i in vocab.items() if token in learned},
            merges=merges,
            special_tokens={token: i for token, i in vocab.items() if token not in learned},
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """Load from a folder holding ``vocab.json`` and ``merges.txt`` (or, OpenAI's names,
        ``encoder.json`` and ``vocab.bpe``)."""
        return cls.from_files(*find_tokenizer_files(Path(directory)))

    def save(self, directory: str | Path) -> None:
        """Write ``vocab.json`` and ``merges.txt``, which :meth:`from_pretrained` reads back."""
        write_tokenizer_files(Path(directory), {**self.vocab, **self.special_tokens}, self.merges)

    # ------------------------------------------------------------------------ properties

    @property
    def n_vocab(self) -> int:
        """Number of token ids, special tokens included."""
        return len(self.vocab) + len(self.special_tokens)

    @property
    def eot_token(self) -> int:
        """Id of ``<|endoftext|>``, the token GPT-2 puts between documents."""
        if ENDOFTEXT not in self.special_tokens:
            raise ValueError(f"this tokenizer has no {ENDOFTEXT} token")
        return self.special_tokens[ENDOFTEXT]

    @property
    def special_tokens_set(self) -> frozenset[str]:
        """The special tokens' texts, for building ``allowed_special`` / ``disallowed_special``."""
        return frozenset(self.special_tokens)

    def __repr__(self) -> str:
        specials = sorted(self.special_tokens, key=self.special_tokens.__getitem__)
        return (
            f"{type(self).__name__}(n_vocab={self.n_vocab}, merges={len(self.merges)},"
            f" special_tokens={specials})"
        )

    # -------------------------------------------------------------------------- encoding

    def encode(
        self,
        text: str,
        *,
        allowed_special: Collection[str] | Literal["all"] = frozenset(),
        disallowed_special: Collection[str] | Literal["all"] = "all",
    ) -> list[int]:
        """Encode text to token ids, with tiktoken's rules for special tokens.

        A special token's text becomes its id only if it is in ``allowed_special`` (or that is
        ``"all"``). Text matching a token in ``disallowed_special`` raises ValueError; the
        default ``"all"`` means every special token not allowed. ``disallowed_special=()``
        encodes special-token text as ordinary text. Unpaired surrogates, which have no UTF-8
        encoding, become U+FFFD first, as in tiktoken.
        """
        ids: list[int] = []
        for chunk, special in split_on_special(text, self.special_tokens_set, allowed_special, disallowed_special):
            ids += self._encode_chunk(chunk)
            if special is not None:
                ids.append(self.special_tokens[special])
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token text as ordinary text."""
        return self._encode_chunk(replace_lone_surrogates(text))

    def _encode_chunk(self, text: str) -> list[int]:
        """Encode text in which special tokens play no part: pre-tokenise, then BPE each piece."""
        ids: list[int] = []
        for piece in GPT2_SPLIT_REGEX.findall(text):
            piece_ids = self._piece_cache.get(piece)
            if piece_ids is None:
                piece_ids = self._trace_piece(piece).ids
                if len(self._piece_cache) >= _PIECE_CACHE_SIZE:
                    self._piece_cache.clear()
                self._piece_cache[piece] = piece_ids
            ids += piece_ids
        return ids

    # ----------------------------------------------------------------------- explanation

    def explain(
        self,
        text: str,
        *,
        allowed_special: Collection[str] | Literal["all"] = frozenset(),
        disallowed_special: Collection[str] | Literal["all"] = "all",
    ) -> list[PieceTrace]:
        """Encode like :meth:`encode`, returning each piece with the merges that made its tokens."""
        traces: list[PieceTrace] = []
        for chunk, special in split_on_special(text, self.special_tokens_set, allowed_special, disallowed_special):
            traces += [self._trace_piece(piece) for piece in GPT2_SPLIT_REGEX.findall(chunk)]
            if special is not None:
                ids = (self.special_tokens[special],)
                utf8 = special.encode("utf-8")
                traces.append(PieceTrace(special, utf8, (special,), (), ids, special=True))
        return traces

    def _trace_piece(self, piece: str) -> PieceTrace:
        """Run BPE on one piece, recording each merge."""
        utf8 = piece.encode("utf-8")
        symbols = tuple(self.byte_encoder[byte] for byte in utf8)
        steps = tuple(self._merge_steps(symbols))
        final = steps[-1].symbols if steps else symbols
        ids = tuple(self.vocab[symbol] for symbol in final)
        return PieceTrace(piece, utf8, symbols, steps, ids)

    def _merge_steps(self, symbols: tuple[str, ...]) -> Iterator[MergeStep]:
        """GPT-2's merge loop: fuse the lowest-ranked adjacent pair until none is in the list."""
        ### BEGIN SOLUTION a1: the BPE merge loop of one piece (yield a MergeStep per merge)
        while len(symbols) > 1:
            pairs = zip(symbols, symbols[1:])
            best = min(pairs, key=lambda pair: self.merge_ranks.get(pair, math.inf))
            if best not in self.merge_ranks:
                return
            symbols = _merge_pair(symbols, best)
            yield MergeStep(best, self.merge_ranks[best], symbols)
        ### END SOLUTION

    # -------------------------------------------------------------------------- decoding

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Turn ids back into text.

        A token can end part-way through a multi-byte character; such bytes become U+FFFD
        (``errors="replace"``, as tiktoken does) unless ``errors`` says otherwise.
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenate the bytes of the tokens (accepts a list or a 1-D numpy array)."""
        return b"".join(self.token_bytes(token_id) for token_id in ids)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a single token stands for."""
        return self._token_bytes[self._check_id(token_id)]

    def _check_id(self, token_id: int) -> int:
        try:
            index = operator.index(token_id)  # accepts Python and numpy integers only
        except TypeError:
            raise ValueError(
                f"token ids must be integers, got {token_id!r} of type {type(token_id).__name__}"
            ) from None
        if not 0 <= index < self.n_vocab:
            raise ValueError(
                f"token id {index} is out of range: valid ids are 0 to {self.n_vocab - 1}"
            )
        return index



class FastTokenizer(Tokenizer):
    """:class:`Tokenizer` with ordinary text encoded by compiled code (minillm/tokenizer/fast.py)."""

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        special_tokens: Mapping[str, int] | None = None,
    ) -> None:
        from minillm.tokenizer.fast import CompiledEncoder  # numba loads only when asked for

        super().__init__(vocab, merges, special_tokens)
        self._compiled = CompiledEncoder(self.vocab, self.merges, self.byte_encoder, self._token_bytes)

    def _encode_chunk(self, text: str) -> list[int]:
        return self._compiled.encode(text)

def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Fuse every occurrence of ``pair``, left to right: "aaa" with (a, a) gives aa, a."""
    ### BEGIN SOLUTION a1: the merge step (fuse every occurrence of the pair, left to right)
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)
    ### END SOLUTION
