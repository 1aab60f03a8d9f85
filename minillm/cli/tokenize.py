"""``minillm tokenize "text"``: show how GPT-2 (or a model's own BPE) cuts text into pieces and tokens.

    $ minillm tokenize "Hello world, I'm 我"
    piece     ids            tokens
    'Hello'   15496          'Hello'
    ' world'  995            ' world'
    ','       11             ','
    ' I'      314            ' I'
    "'m"      1101           "'m"
    ' 我'      10545 230 239  b' \xe6' b'\x88' b'\x91'
    6 pieces, 8 tokens
    [15496, 995, 11, 314, 1101, 10545, 230, 239]

Each row is one pre-tokenisation piece. 我 is three UTF-8 bytes; GPT-2 has no token for it,
so it costs three tokens, the first also holding the space.

The ids come from the fast (compiled) tokenizer; tokens never cross a piece boundary, so each
piece's ids are read off in order by their bytes. ``--explain`` uses the readable tokenizer
instead, whose explain() records the merges that made each piece's tokens (same table, same ids).
"""

from __future__ import annotations

import argparse
import sys

from collections.abc import Sequence
from typing import NamedTuple

from minillm.tokenizer.bpe import GPT2_SPLIT_REGEX, Tokenizer
from minillm.tokenizer.special import split_on_special


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help='the text to tokenize; "-" reads standard input')
    parser.add_argument("--ids-only", action="store_true", help="print only the list of token ids")
    parser.add_argument("--model", default="gpt2", metavar="NAME_OR_PATH",
                        help="use this model's tokenizer (its vocab.json + merges.txt), e.g. "
                             "shakespeare (default: gpt2, GPT-2's)")
    parser.add_argument(
        "--allow-special",
        action="store_true",
        help="encode special-token text such as <|endoftext|> as the special token, not as text",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="tokenize with the readable tokenizer, which records every merge (slower on long "
             "text; the table and ids are the same). Without it the fast tokenizer gives the ids",
    )


class Piece(NamedTuple):
    """One pre-tokenisation piece and its token ids (a PieceTrace without the merges)."""

    text: str
    ids: tuple[int, ...]


def run(args: argparse.Namespace) -> int:
    from minillm.checkpoint.pretrained import tokenizer_for

    try:
        text = sys.stdin.read() if args.text == "-" else args.text
        tokenizer = tokenizer_for(args.model)
    except (OSError, ValueError) as error:  # a missing file, a broken tokenizer, non-UTF-8 input
        print(f"minillm tokenize: {error}", file=sys.stderr)
        return 1
    allowed_special = "all" if args.allow_special else ()
    if args.explain:
        pieces = tokenizer.explain(text, allowed_special=allowed_special, disallowed_special=())
    else:
        pieces = fast_pieces(tokenizer, text, allowed_special)
    ids = [token_id for piece in pieces for token_id in piece.ids]
    if not args.ids_only:
        print(format_traces(tokenizer, pieces))
        print(f"{len(pieces)} pieces, {len(ids)} tokens")
    print(ids)
    return 0


def fast_pieces(tokenizer: Tokenizer, text: str, allowed_special) -> list[Piece]:
    """The pieces of ``text`` with their ids, as explain() cuts them; one fast encode a chunk."""
    pieces: list[Piece] = []
    chunks = split_on_special(text, tokenizer.special_tokens_set, allowed_special, ())
    for chunk, special in chunks:
        ids = tokenizer.encode_ordinary(chunk)
        pieces += split_ids(tokenizer, GPT2_SPLIT_REGEX.findall(chunk), ids)
        if special is not None:
            pieces.append(Piece(special, (tokenizer.special_tokens[special],)))
    return pieces


def split_ids(tokenizer: Tokenizer, texts: Sequence[str], ids: Sequence[int]) -> list[Piece]:
    """Give each piece the ids that spell its bytes, taking them in order."""
    pieces, next_id = [], 0
    for text in texts:
        n_bytes, first = len(text.encode("utf-8")), next_id
        while n_bytes > 0:
            n_bytes -= len(tokenizer.token_bytes(ids[next_id]))
            next_id += 1
        pieces.append(Piece(text, tuple(ids[first:next_id])))
    return pieces


def format_traces(tokenizer: Tokenizer, traces: Sequence[Piece]) -> str:
    """A table: each piece (a Piece or a PieceTrace), its token ids, and the text of each token.

    A token that ends inside a multi-byte character is not valid UTF-8 by itself, so it is
    shown as bytes.
    """
    rows = [("piece", "ids", "tokens")]
    for trace in traces:
        tokens = [_token_text(tokenizer.token_bytes(token_id)) for token_id in trace.ids]
        rows.append((repr(trace.text), " ".join(map(str, trace.ids)), " ".join(tokens)))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    lines = [f"{piece:<{widths[0]}}  {ids:<{widths[1]}}  {tokens}" for piece, ids, tokens in rows]
    return "\n".join(lines)


def _token_text(token: bytes) -> str:
    try:
        return repr(token.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(token)
