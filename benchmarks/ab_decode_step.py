"""Two versions of the whole-step decoding kernel (kernels/decode_step_cpu.py) side by side in
one process: decoding tokens/s of each, in interleaved rounds, and their ratio.

    python benchmarks/ab_decode_step.py --against dbebfd0~1 --dtype float16 --batch 1 4
    python benchmarks/ab_decode_step.py --variant /tmp/decode_step_cpu_edited.py --dtype int8

A is the working tree's kernel; B is the file given by --variant (an edited copy of
kernels/decode_step_cpu.py) or the kernel at the git revision --against (it imports the working
tree's other kernels, so the revision's helpers must still match). Both decode the same
random-weight GPT-2 124M on backends of their own, greedy, --prompt tokens then --new; the
first token (the prefill) is not timed.

Why in one process: the machines these benchmarks run on are shared, and their speed drifts
by 10-40% within minutes (benchmarks/README.md). Two runs minutes apart compare the hours as
much as the kernels; rounds that alternate A, B, B, A, ... see the same hours.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from minillm.kernels.backend import NumbaBackend
from minillm.model.config import GPT2_SIZES
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params
from minillm.model.quantize import DTYPES
from bench_inference import decode_tokens_per_second     # benchmarks/, beside this script
from timing import interleaved_rounds

KERNEL = "kernels/decode_step_cpu.py"                     # in the repository


def variant_file(args, workdir: Path) -> Path:
    """The B kernel's source file: --variant as given, or --against's version written out."""
    if args.variant is not None:
        if not Path(args.variant).is_file():
            raise SystemExit(f"--variant {args.variant}: no such file (expected an edited copy "
                             f"of {KERNEL})")
        return Path(args.variant)
    root = Path(__file__).resolve().parent.parent
    shown = subprocess.run(["git", "-C", str(root), "show", f"{args.against}:{KERNEL}"],
                           capture_output=True, text=True)
    if shown.returncode != 0:
        raise SystemExit(f"--against {args.against}: git has no {KERNEL} there "
                         f"({shown.stderr.strip()})")
    source = shown.stdout
    path = workdir / "decode_step_cpu_b.py"
    path.write_text(source)
    return path


def load_kernel(path: Path):
    """The module at path, under a name of its own (numba caches its functions beside it)."""
    spec = importlib.util.spec_from_file_location("decode_step_cpu_b", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                # where numba's cache finds it again
    spec.loader.exec_module(module)
    return module


def compare(a: GPT2, b: GPT2, batch: int, prompt: int, new: int, rounds: int) -> None:
    rates = interleaved_rounds(
        {name: lambda model=model: decode_tokens_per_second(model, prompt, new, True, 1, batch)
         for name, model in (("A", a), ("B", b))}, rounds)
    med_a, med_b = statistics.median(rates["A"]), statistics.median(rates["B"])
    print(f"batch {batch:2d}: A {med_a:7.1f} "
          f"({max(rates['A']):.1f})  B {med_b:7.1f} ({max(rates['B']):.1f}) tokens/s, "
          f"B/A {med_b / med_a:.3f} (medians (best) of {rounds} interleaved rounds)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", help="an edited copy of kernels/decode_step_cpu.py")
    which.add_argument("--against", help="a git revision whose kernels/decode_step_cpu.py is B")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per batch")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens per sequence")
    parser.add_argument("--new", type=int, default=48, help="tokens generated per sequence")
    args = parser.parse_args(argv)

    config = GPT2_SIZES["gpt2"]
    params = random_params(config, seed=0)
    with tempfile.TemporaryDirectory() as workdir:
        kernel_b = load_kernel(variant_file(args, Path(workdir)))
        a, b = (GPT2(config, params, backend=NumbaBackend(threads=args.threads)).quantized(args.dtype)
                for _ in range(2))
        b.backend._decode_step = kernel_b          # the backend's whole-step module, swapped
        print(f"GPT-2 124M, {args.dtype}, {args.threads} threads; A: the working tree's {KERNEL}, "
              f"B: {args.variant or args.against + ':' + KERNEL}", flush=True)
        for model in (a, b):                       # compile both (and warm the caches)
            decode_tokens_per_second(model, 4, 3, True, 1, max(args.batch))
        for batch in args.batch:
            compare(a, b, batch, args.prompt, args.new, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
