"""`minillm eval`: loss, perplexity and nats per byte of a text under a model.

    minillm eval --model shakespeare --text data/shakespeare/val.txt --stride 64

Windows of the model's context slide by --stride (default: the context, disjoint windows),
each token scored once, as in HF's perplexity guide.
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser) -> None:
    from minillm.model.quantize import DTYPES
    from minillm.model.backends import available_backends

    parser.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="the model to score with")
    parser.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 text file")
    parser.add_argument("--stride", type=int, default=None,
                        help="tokens between window starts (default: the model's context)")
    parser.add_argument("--backend", default="numpy", choices=available_backends())
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="how the weights are held in memory: float16 and int8 (a scale per "
                             "output channel) take 1/2 and ~1/4 of float32's memory and decode "
                             "faster on the numba backend; the arithmetic stays float32 "
                             "(default: float32)")


def run(args) -> int:
    from minillm.checkpoint.pretrained import load_pretrained
    from minillm.inference.perplexity import score_text
    from minillm.model.quantize import weight_bytes

    try:
        text = Path(args.text).read_bytes().decode("utf-8")
        model, tokenizer = load_pretrained(args.model, backend=args.backend, dtype=args.dtype)
        score = score_text(model, tokenizer, text, args.stride)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        print(f"minillm eval: {error}", file=sys.stderr)
        return 2
    print(f"weights        {model.weight_dtype}, {weight_bytes(model.params) / 2**20:.1f} MiB")
    print(f"{score.n_tokens} tokens scored ({score.n_chars} characters, {score.n_bytes} bytes)")
    print(f"loss           {score.loss:.4f} nats/token")
    print(f"perplexity     {score.perplexity:.2f}")
    print(f"nats per byte  {score.nats_per_byte:.4f}")
    print(f"nats per char  {score.nats_per_char:.4f}")
    return 0
