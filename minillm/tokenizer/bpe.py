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

import heapq
import operator
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import regex

from minillm.tokenizer.checks import TokenizerFileError, check_bytes, check_merges, load_tokenizer_files
from minillm.tokenizer.files import find_tokenizer_files, write_tokenizer_files
from minillm.tokenizer.special import replace_lone_surrogates, split_on_special
from minillm.tokenizer.symbols import SymbolChain

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
    """The folder holding the GPT-2 vocabulary shipped with minillm (a checkout's weights/gpt2)."""
    from minillm.checkpoint.locations import bundled_dir

    return bundled_dir() / "gpt2"


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


class TokenIdError(TypeError, ValueError):
    """A token id that is not an integer. A TypeError; also a ValueError, which decode raised
    for it before, so that code catching ValueError keeps working."""


def _shorten(value: object, limit: int = 40) -> str:
    """repr(value), cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        files: tuple[str, str] = ("the merge list", "the vocabulary"),
    ) -> None:
        self.vocab = dict(vocab)
        self.merges = [(first, second) for first, second in merges]
        self.special_tokens = dict(special_tokens or {})
        self.byte_encoder = bytes_to_unicode()
        self.merge_ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._check_consistency(files)       # files: the (merges, vocabulary) names for errors

        # Every symbol stands for one byte: translate symbols to the Latin-1 characters of their
        # bytes, and Latin-1 encoding gives the bytes (one C call per token, not one per byte).
        symbol_to_latin1 = str.maketrans({symbol: chr(byte) for byte, symbol in self.byte_encoder.items()})
        self._token_bytes = [b""] * self.n_vocab
        for token, token_id in self.vocab.items():
            self._token_bytes[token_id] = token.translate(symbol_to_latin1).encode("latin-1")
        for text, token_id in self.special_tokens.items():
            self._token_bytes[token_id] = text.encode("utf-8")
        self._piece_cache: dict[str, tuple[int, ...]] = {}

    def _check_consistency(self, files: tuple[str, str]) -> None:
        """Reject vocabularies that BPE cannot use, with a message that says why (checks.py)."""
        merges_name, vocab_name = files
        byte_symbols = self.byte_encoder.values()
        check_bytes(vocab_name, self.vocab, byte_symbols)
        learned = check_merges(merges_name, self.merges, vocab_name, self.vocab, byte_symbols)
        unreachable = self.vocab.keys() - learned - set(byte_symbols)
        if unreachable:
            raise TokenizerFileError(
                f"{vocab_name}: entries {sorted(unreachable)[:5]} are neither bytes nor merge results")
        ids = sorted([*self.vocab.values(), *self.special_tokens.values()])
        if ids != list(range(len(ids))):
            raise TokenizerFileError(f"{vocab_name}: token ids must be 0, 1, ..., n_vocab - 1, each used once")

    # ----------------------------------------------------------------- loading and saving

    @classmethod
    def gpt2(cls, fast: bool = True) -> Tokenizer:
        """OpenAI's GPT-2 tokenizer, from the bundled ``weights/gpt2`` folder.

        ``fast=True`` returns a :class:`FastTokenizer`, which gives the same ids much faster;
        ``fast=False`` this readable implementation.
        """
        if fast:
            return FastTokenizer.from_pretrained(default_vocab_dir())
        return cls.from_pretrained(default_vocab_dir())

    @classmethod
    def from_files(
        cls, vocab_path: str | Path, merges_path: str | Path, special_tokens: Collection[str] = ()
    ) -> Tokenizer:
        """Load a vocabulary file (``vocab.json`` / ``encoder.json``) and a merges file
        (``merges.txt`` / ``vocab.bpe``).

        Special tokens are stored in the vocabulary file like any other token; they are the
        entries that are neither a byte symbol nor the result of a merge, and must look like
        ``<|endoftext|>`` (``<...>``, ``[...]``) or be named in ``special_tokens``. Any other
        such entry means the merges file is incomplete. Files that disagree raise
        :class:`~minillm.tokenizer.checks.TokenizerFileError` (a ValueError) naming the file
        and the entry.
        """
        vocab, merges, specials = load_tokenizer_files(
            Path(vocab_path), Path(merges_path), bytes_to_unicode().values(), special_tokens)
        return cls(vocab=vocab, merges=merges, special_tokens=specials,
                   files=(str(merges_path), str(vocab_path)))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """Load from a folder holding ``vocab.json`` and ``merges.txt`` (or, OpenAI's names,
        ``encoder.json`` and ``vocab.bpe``), or from a bundled model's name ("shakespeare")."""
        if not Path(directory).is_dir():
            from minillm.checkpoint.weights import resolve_model_path   # names -> their folders
            directory = resolve_model_path(directory)
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
                piece_ids = self._encode_piece(piece)
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
        steps: list[MergeStep] = []
        final = self._merge(symbols, steps)
        ids = tuple(self.vocab[symbol] for symbol in final)
        return PieceTrace(piece, utf8, symbols, tuple(steps), ids)

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        """Run BPE on one piece without recording: each record copies all the symbols."""
        symbols = tuple(self.byte_encoder[byte] for byte in piece.encode("utf-8"))
        return tuple(self.vocab[symbol] for symbol in self._merge(symbols))

    def _merge(
        self, symbols: tuple[str, ...], steps: list[MergeStep] | None = None
    ) -> tuple[str, ...]:
        """GPT-2's merge loop: fuse every occurrence of the lowest-ranked adjacent pair, left to
        right, until no adjacent pair is in the merge list. Returns the final symbols, and
        appends a MergeStep to ``steps`` (if given) after each pair's pass.

        Rescanning every pair after each merge costs O(n) per merge, O(n²) for a piece of n
        bytes. Instead a heap holds (rank, position) of every mergeable pair, so the lowest
        rank, and on a tie the leftmost position, is always on top.
        """
        ### BEGIN SOLUTION a1: the BPE merge loop of one piece (a heap of (rank, position))
        chain = SymbolChain(symbols)
        ranks = [(self._rank_at(chain, i), i) for i in range(len(symbols))]
        heap = [(rank, i) for rank, i in ranks if rank is not None]
        heapq.heapify(heap)
        while heap:
            rank = heap[0][0]
            changed = set()  # positions whose right-hand pair this pass changed
            while heap and heap[0][0] == rank:
                _, i = heapq.heappop(heap)
                if self._rank_at(chain, i) != rank:
                    continue  # an earlier fusion changed this pair since it was pushed
                chain.fuse(i)
                changed.update((chain.previous[i], i))
            # New pairs wait for the pass to end, even if ranked lower: GPT-2 fuses every
            # occurrence of one pair before it looks for the next.
            for i in changed:
                if i >= 0 and (new_rank := self._rank_at(chain, i)) is not None:
                    heapq.heappush(heap, (new_rank, i))
            if changed and steps is not None:
                steps.append(MergeStep(self.merges[rank], rank, chain.symbols()))
        return chain.symbols()
        ### END SOLUTION

    def _rank_at(self, chain: SymbolChain, i: int) -> int | None:
        """The rank of the pair starting at position ``i``, or None if it cannot be merged."""
        pair = chain.pair_at(i)
        return None if pair is None else self.merge_ranks.get(pair)

    # -------------------------------------------------------------------------- decoding

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Turn ids back into text.

        A token can end part-way through a multi-byte character; such bytes become U+FFFD
        (``errors="replace"``, as tiktoken does) unless ``errors`` says otherwise.
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenate the bytes of the tokens (accepts a list or a 1-D numpy array)."""
        # str and bytes are iterable too, but a bytes object of ids is almost surely a mistake.
        if isinstance(ids, (str, bytes, bytearray)) or not isinstance(ids, Iterable):
            raise TypeError(f"ids must be a sequence of integer token ids, got "
                            f"{type(ids).__name__} {_shorten(ids)}; for one token pass [id]")
        return b"".join(self.token_bytes(token_id) for token_id in ids)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a single token stands for."""
        return self._token_bytes[self._check_id(token_id)]

    def _check_id(self, token_id: int) -> int:
        try:
            if isinstance(token_id, bool):  # an int to Python, but True is no token id
                raise TypeError
            index = operator.index(token_id)  # accepts Python and numpy integers only
        except TypeError:
            raise TokenIdError(
                f"token ids must be integers, got {_shorten(token_id)} of type "
                f"{type(token_id).__name__}"
            ) from None
        if not 0 <= index < self.n_vocab:
            raise ValueError(
                f"token id {index} is out of range: valid ids are 0 to {self.n_vocab - 1}"
            )
        return index



class FastTokenizer(Tokenizer):
    """:class:`Tokenizer` with ordinary text encoded by compiled code (minillm/tokenizer/fast.py)."""

    # The compiled encoder, built at the first encode, so that loading (and decoding alone)
    # never waits for numba; each instance then holds its own.
    _compiled = None

    def _encode_chunk(self, text: str) -> list[int]:
        if self._compiled is None:
            from minillm.tokenizer.fast import CompiledEncoder  # numba loads only when asked for

            try:
                self._compiled = CompiledEncoder(self.vocab, self.merges, self.byte_encoder, self._token_bytes)
            except NotImplementedError:
                # The course's student copy withholds the compiled merge loop (it is assignment
                # 1's answer): encode with the readable one, which the student writes.
                self._compiled = False
        if self._compiled is False:
            return super()._encode_chunk(text)
        return self._compiled.encode(text)
