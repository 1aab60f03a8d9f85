"""`minillm generate`: continue a prompt, streaming the text as it is generated.

    minillm generate "ROMEO:"                      # the bundled Shakespeare model
    minillm generate --model gpt2 --do-sample --max-length 50 --top-k 50 "我喜欢吃"

The prompt is printed, then each new piece of text as soon as it forms whole characters, then
a timing line on stderr. Flags mean what HF's generate arguments mean; generation stops at
<|endoftext|> unless --ignore-eos.

Exit status: 0 on success; 1 if the model cannot be loaded or computes NaN/inf logits; 2 for a
bad argument or a prompt that is not UTF-8 text (checked before the model is loaded). Errors are
one line on stderr, `minillm generate: ...`. Text the terminal's encoding cannot show is
written with replacement characters rather than stopping the output.
"""
from __future__ import annotations

import os
import sys
import time

DEFAULT_MAX_NEW_TOKENS = 50


def add_arguments(parser) -> None:
    from minillm.model.quantize import DTYPES
    from minillm.checkpoint.weights import DEFAULT_MODEL
    from minillm.model.backends import available_backends   # the registered names; imports no kernels

    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME_OR_PATH",
                        help="shakespeare (bundled), gpt2, gpt2-medium, gpt2-large, gpt2-xl (after "
                             "`minillm download`), or a folder with model.safetensors + config.json; "
                             f"its own vocab.json + merges.txt if it has them, GPT-2's otherwise "
                             f"(default: {DEFAULT_MODEL})")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--max-new-tokens", type=int, metavar="N",
                        help=f"how many tokens to generate (default: {DEFAULT_MAX_NEW_TOKENS})")
    length.add_argument("--max-length", type=int, metavar="N",
                        help="total length, prompt tokens included (HF's max_length)")
    parser.add_argument("--do-sample", action="store_true",
                        help="sample the next token instead of taking the most likely one")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="with --do-sample: divide the logits by this; 0 = greedy (default: 1.0)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="with --do-sample: keep only the K most likely tokens "
                             "(HF's generate uses 50 unless told otherwise; here: no limit)")
    parser.add_argument("--top-p", type=float, default=None,
                        help="with --do-sample: keep the fewest most likely tokens whose "
                             "probabilities add up to at least P")
    parser.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="keep going after <|endoftext|> instead of stopping there")
    parser.add_argument("--backend", default="numpy", choices=available_backends(),
                        help="kernels for matmul and attention (default: numpy)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="how the weights are held in memory: float16 and int8 (a scale per "
                             "output channel) take 1/2 and ~1/4 of float32's memory and decode "
                             "faster on the numba backend; the arithmetic stays float32 "
                             "(default: float32)")


def run(args) -> int:
    import numpy as np

    from minillm.checkpoint.pretrained import load_pretrained
    from minillm.inference.generate import stream
    from minillm.inference.sampling import NonFiniteLogitsError
    from minillm.inference.streaming import TextStreamer

    prompt_error = _prompt_error(args.prompt)
    if prompt_error:
        print(f"minillm generate: {prompt_error}", file=sys.stderr)
        return 2
    try:
        model, tokenizer = load_pretrained(args.model, backend=args.backend, dtype=args.dtype)
    except (OSError, ValueError, ImportError) as error:     # OSError: FileNotFoundError and kin
        print(f"minillm generate: {error}", file=sys.stderr)
        return 1
    ids = tokenizer.encode(args.prompt, allowed_special="all")   # <|endoftext|> may start a prompt
    if args.do_sample is False and (args.temperature != 1.0 or args.top_k or args.top_p):
        print("minillm generate: note: --temperature/--top-k/--top-p only apply with --do-sample",
              file=sys.stderr)
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None and args.max_length is None:
        max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    try:
        tokens = stream(model, ids, max_new_tokens, max_length=args.max_length,
                        do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed,
                        eos_token_id=None if args.ignore_eos else tokenizer.eot_token)
    except ValueError as error:
        print(f"minillm generate: {error}", file=sys.stderr)
        return 2
    try:
        # NaN/inf are caught and reported by generation itself: numpy's warnings would be noise.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            _print_streamed(args.prompt, tokens, TextStreamer(tokenizer), len(ids))
    except NonFiniteLogitsError as error:
        print(file=sys.stdout, flush=True)          # end the partial line of text
        print(f"minillm generate: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`minillm generate ... | head`): stop quietly, as Unix tools do.
        # stdout is pointed at /dev/null so that Python's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


def _prompt_error(prompt: str) -> str | None:
    """Why the prompt cannot be tokenized, or None. Python decodes command-line bytes that are
    not UTF-8 into lone surrogates ("surrogateescape"), which BPE (working on UTF-8 bytes) cannot
    encode and no terminal can print."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(prompt[error.start])
        what = f"byte {code - 0xDC00:#04x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        return (f"the prompt is not valid UTF-8 text ({what} at character {error.start}); "
                "pass the prompt as UTF-8")
    return None


def _write(out, text: str) -> None:
    """out.write(text), replacing what out's encoding cannot represent (e.g. CJK on an ASCII
    terminal) instead of failing mid-generation."""
    try:
        out.write(text)
    except UnicodeEncodeError:
        encoding = getattr(out, "encoding", None) or "utf-8"
        out.write(text.encode(encoding, errors="replace").decode(encoding))


def _print_streamed(prompt: str, tokens, streamer, prompt_len: int) -> None:
    """Write the prompt, then every piece of text as soon as it is complete; timing to stderr."""
    out = sys.stdout
    _write(out, prompt)
    out.flush()
    start = time.perf_counter()
    first_token_s, n_tokens = 0.0, 0
    for token_id in tokens:
        if n_tokens == 0:
            first_token_s = time.perf_counter() - start      # prefill + first step
        n_tokens += 1
        _write(out, streamer.put(token_id))
        out.flush()
    _write(out, streamer.end() + "\n")
    out.flush()
    total_s = time.perf_counter() - start
    decode_rate = (n_tokens - 1) / (total_s - first_token_s) if n_tokens > 1 else float("nan")
    print(f"[{n_tokens} tokens in {total_s:.2f} s: {n_tokens / total_s:.1f} tokens/s overall, "
          f"{decode_rate:.1f} tokens/s after the first; prompt of {prompt_len} tokens + first token "
          f"in {first_token_s:.2f} s]", file=sys.stderr, flush=True)
