"""`minillm verify --model M`: run the checks of minillm/checkpoint/verify.py and print them as a table.

Exit status: 0 if every check passes; 1 (FAIL) if any check fails; 2 if the checks cannot run
because an input is wrong: a model that cannot be found or loaded, a reference file that is
missing, unreadable, empty or does not fit the model, a bad --tolerance, or no reference at all.
Input errors are one line on stderr, `minillm verify: error: ...`.
"""
from __future__ import annotations

import argparse
import math
import sys

from minillm.checkpoint import verify as checks

EXIT_PASS, EXIT_FAIL, EXIT_INPUT_ERROR = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (f"exit status: {EXIT_PASS} all checks pass, {EXIT_FAIL} a check fails, "
                     f"{EXIT_INPUT_ERROR} an input (model, reference, tolerance) is wrong")
    parser.add_argument("--model", required=True,
                        help="model directory, .safetensors file, or released name (gpt2, ...)")
    parser.add_argument("--reference", default=None,
                        help=f"reference outputs (.npz); default: {checks.REFERENCE_FILE} in the model "
                             "directory")
    parser.add_argument("--tolerance", type=float, default=checks.TOLERANCE,
                        help=f"largest allowed max-abs difference (default {checks.TOLERANCE:g})")
    parser.add_argument("--backend", default="numpy", help="numpy, numba or cuda")


def run(args: argparse.Namespace) -> int:
    """Print a table of checks; exit status 0 if all pass, 1 if any fails, 2 for an input error."""
    try:
        return _verify(args)
    except (OSError, ValueError, ImportError) as err:     # CheckpointError, ReferenceFileError, ...
        print(f"minillm verify: error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR


def _verify(args: argparse.Namespace) -> int:
    from minillm.checkpoint.weights import load_checkpoint, resolve_model_path
    from minillm.model.gpt2 import GPT2

    tolerance = args.tolerance
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"--tolerance must be a finite number >= 0, got {tolerance!r}")
    model_path = resolve_model_path(args.model)        # resolved once, loaded from there
    config, params = load_checkpoint(model_path)
    model = GPT2(config, params, backend=args.backend)
    reference_path = checks.find_reference(model_path, args.reference)
    if reference_path is not None:
        reference = checks.load_reference(reference_path)
        checks.check_reference(reference, config, reference_path)
        print(f"verifying {model_path} against {reference_path} (tolerance {tolerance:g})")
        rows = checks.reference_checks(model, reference, tolerance)
    elif checks.is_gpt2_124m(model.config):
        print(f"verifying {model_path} (GPT-2 124M) by its published greedy continuation")
        rows = [checks.continuation_check(model, "The dog", checks.GPT2_PROMPT_IDS,
                                          checks.GPT2_GREEDY_IDS)]
    else:
        print(f"no reference for {model_path}: pass --reference FILE, or put {checks.REFERENCE_FILE} "
              "in the model directory")
        return EXIT_INPUT_ERROR
    print_table(rows)
    failed = sum(not row["passed"] for row in rows)
    print(f"{len(rows) - failed}/{len(rows)} checks passed")
    # A run that checked nothing proved nothing: that is a failure, not a pass.
    return EXIT_FAIL if failed or not rows else EXIT_PASS


def print_table(rows: list[dict]) -> None:
    header = {"check": "check", "tokens": "tokens", "logits": "max|dlogits|",
              "hidden": "max|dhidden|", "result": "result", "note": ""}
    rows = [{**row, "result": "PASS" if row["passed"] else "FAIL"} for row in rows]
    widths = {key: max(len(str(r[key])) for r in [header, *rows]) for key in header}
    for row in [header, *rows]:
        cells = [str(row["check"]).ljust(widths["check"])]
        cells += [str(row[key]).rjust(widths[key]) for key in ("tokens", "logits", "hidden")]
        cells += [str(row["result"]).ljust(widths["result"]), str(row["note"])]
        print("  ".join(cells).rstrip())
