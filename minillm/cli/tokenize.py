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
"""

from __future__ import annotations

import argparse
import sys

from minillm.tokenizer.bpe import PieceTrace, Tokenizer


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


def run(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    from minillm.checkpoint.pretrained import tokenizer_for

    try:
        tokenizer = tokenizer_for(args.model)   # explain() is the readable implementation either way
    except (FileNotFoundError, ValueError) as error:
        print(f"minillm tokenize: {error}", file=sys.stderr)
        return 1
    allowed_special = "all" if args.allow_special else ()
    traces = tokenizer.explain(text, allowed_special=allowed_special, disallowed_special=())
    ids = [token_id for trace in traces for token_id in trace.ids]
    if not args.ids_only:
        print(format_traces(tokenizer, traces))
        print(f"{len(traces)} pieces, {len(ids)} tokens")
    print(ids)
    return 0


def format_traces(tokenizer: Tokenizer, traces: list[PieceTrace]) -> str:
    """A table: each piece, its token ids, and the text of each token.

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
