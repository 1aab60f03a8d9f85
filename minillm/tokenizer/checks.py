"""Reading vocab.json + merges.txt with checks that name the file and the first bad entry.

A vocabulary and a merge list are only usable together: every merge's two parts and its result
must be tokens, and every token must be a byte, the result of a merge, or a special token. A
merges file cut short breaks that silently: the tokens its lost lines made are still in the
vocabulary, nothing makes them any more, and without these checks they would be taken for
special tokens. So a token that is neither a byte nor a merge result is accepted as special only
if it looks like one (``<|endoftext|>``, ``<pad>``, ``[SEP]``) or the caller lists it as special.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import regex

from minillm.json_files import read_json_object
from minillm.tokenizer.files import read_merges

# <|...|> as GPT-2's <|endoftext|>, <...> and [...] as in other tokenizers' special tokens.
SPECIAL_TOKEN_FORM = regex.compile(r"<\|[^|\s]+\|>|<[^<>\s]+>|\[[^\[\]\s]+\]")


class TokenizerFileError(ValueError):
    """A vocabulary or merges file that cannot be used, with the file and the entry at fault."""


def load_tokenizer_files(
    vocab_path: Path, merges_path: Path, byte_symbols: Collection[str],
    special_tokens: Collection[str] = (),
) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, int]]:
    """Read and check both files: (vocabulary without specials, merges, special tokens).

    ``byte_symbols`` are the 256 symbols that spell single bytes; ``special_tokens`` names
    special tokens beyond those of :data:`SPECIAL_TOKEN_FORM`. Raises TokenizerFileError.
    """
    vocab = read_vocab(vocab_path)
    merges = read_checked_merges(merges_path)
    check_ids(vocab_path, vocab)
    # Whether the merges fit the vocabulary, Tokenizer's constructor checks (check_merges):
    # here, only which tokens they make, to tell the special tokens apart.
    learned = set(byte_symbols) | {first + second for first, second in merges}
    specials = {token: i for token, i in vocab.items() if token not in learned}
    check_specials(vocab_path, merges_path, specials, special_tokens)
    ordinary = {token: i for token, i in vocab.items() if token in learned}
    return ordinary, merges, specials


def read_vocab(path: Path) -> dict[str, int]:
    """Parse a vocabulary file: one JSON object, token -> id. Only the syntax is checked here."""
    return read_json_object(path, TokenizerFileError, "a JSON object token -> id")


def read_checked_merges(path: Path) -> list[tuple[str, str]]:
    """:func:`~minillm.tokenizer.files.read_merges`, its errors as TokenizerFileError."""
    try:
        return read_merges(path)
    except UnicodeDecodeError as error:
        raise TokenizerFileError(f"{path}: not UTF-8 text ({error})") from None
    except ValueError as error:
        raise TokenizerFileError(str(error)) from None


def check_ids(path: Path, vocab: Mapping[str, object]) -> None:
    """Ids must be the integers 0 to len(vocab) - 1, each used once."""
    owner: dict[int, str] = {}
    for token, token_id in vocab.items():
        # JSON true is a Python bool, which is an int: refuse it by type, not by value.
        if type(token_id) is not int or token_id < 0:
            raise TokenizerFileError(f"{path}: token {token!r} has id {token_id!r}; expected an "
                                     "integer 0 or more")
        if token_id in owner:
            _raise_repeated_key(path)  # json keeps a repeated token's last id: the likelier cause
            raise TokenizerFileError(f"{path}: id {token_id} is used by both "
                                     f"{owner[token_id]!r} and {token!r}; each id names one token")
        owner[token_id] = token
    if owner and max(owner) >= len(owner):
        _raise_repeated_key(path)
        missing = min(set(range(len(owner))) - owner.keys())
        raise TokenizerFileError(f"{path}: no token has id {missing}; expected the ids 0 to "
                                 f"{len(owner) - 1} of its {len(owner)} tokens, each used once")


def check_bytes(path: Path, vocab: Mapping[str, int], byte_symbols: Collection[str]) -> None:
    """Every byte symbol must be a token, or some text could not be encoded."""
    for symbol in byte_symbols:
        if symbol not in vocab:
            raise TokenizerFileError(f"{path}: no token for the byte symbol {symbol!r}; a "
                                     "byte-level vocabulary has a token for each of the 256")


def check_merges(
    merges_path: Path, merges: Sequence[tuple[str, str]], vocab_path: Path,
    vocab: Mapping[str, int], byte_symbols: Collection[str],
) -> set[str]:
    """Each merge joins bytes or earlier results, once, into a token. Returns the results."""
    if len(set(merges)) != len(merges):
        _raise_repeated_merge(merges_path, merges)
    known = set(byte_symbols)  # bytes, then each merge's result once the merge is read
    for rank, (first, second) in enumerate(merges):
        result = first + second
        if first not in known or second not in known or result not in vocab:
            # The message is built only here: loading checks every one of GPT-2's 50 000 merges.
            raise _merge_error(merges_path, rank, merges[rank], known, vocab_path)
        known.add(result)
    return known.difference(byte_symbols)


def _raise_repeated_merge(path: Path, merges: Sequence[tuple[str, str]]) -> None:
    first_rank: dict[tuple[str, str], int] = {}
    for rank, (first, second) in enumerate(merges):
        if (first, second) in first_rank:
            raise TokenizerFileError(f"{path}: merge {rank} ({first} {second}) repeats merge "
                                     f"{first_rank[first, second]}")
        first_rank[first, second] = rank


def _merge_error(path: Path, rank: int, pair: tuple[str, str], known: set[str],
                 vocab_path: Path) -> TokenizerFileError:
    first, second = pair
    merge = f"{path}: merge {rank} ({first} {second})"
    for part in pair:
        if part not in known:
            return TokenizerFileError(f"{merge} uses {part!r}, which is neither a byte symbol "
                                      "nor made by an earlier merge")
    return TokenizerFileError(f"{merge} makes {first + second!r}, which {vocab_path} lacks")


def check_specials(
    vocab_path: Path, merges_path: Path, specials: Mapping[str, int],
    listed: Collection[str],
) -> None:
    """Tokens that no merge makes must be special tokens, else merges are missing."""
    for token, token_id in specials.items():
        if token not in listed and not SPECIAL_TOKEN_FORM.fullmatch(token):
            raise TokenizerFileError(
                f"{vocab_path}: token {token!r} (id {token_id}) is neither a byte, nor made by a "
                f"merge of {merges_path}, nor a special token such as <|endoftext|>: the merges "
                "file looks incomplete (or pass special_tokens= to Tokenizer.from_files)")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TokenizerFileError(f"{path}: not UTF-8 text ({error})") from None


def _raise_repeated_key(path: Path) -> None:
    """Raise TokenizerFileError if the vocabulary file gives a token twice.

    Parsed again for this: a hook that checks every key costs more than the rest of loading.
    """
    def refuse_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys: set[str] = set()
        for key, _ in pairs:
            if key in keys:
                raise TokenizerFileError(f"{path}: token {key!r} appears twice")
            keys.add(key)
        return dict(pairs)

    json.loads(_read_text(path), object_pairs_hook=refuse_repeats)
