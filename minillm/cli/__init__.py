"""The `minillm` command line: one module per subcommand, each with add_arguments() and run().

Every argument and every line a command prints lives here; the stage packages only compute.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module implementing it, one-line help)
COMMANDS = {
    "generate": ("minillm.cli.generate", "generate text from a prompt, streaming it"),
    "tokenize": ("minillm.cli.tokenize", "show how text splits into GPT-2 tokens"),
    "download": ("minillm.cli.download", "download GPT-2 weights from the Hugging Face hub"),
    "eval": ("minillm.cli.eval", "loss and perplexity of a text under a model"),
    "train": ("minillm.cli.train", "train, fine-tune or resume a GPT-2 on a text"),
    "verify": ("minillm.cli.verify", "check a model's logits against a reference file"),
    "assignments": ("minillm.cli.assignments", "release or grade the course assignments"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported, so each subcommand loads what it needs."""
    parser = argparse.ArgumentParser(prog="minillm", description="GPT-2 from scratch in NumPy.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return importlib.import_module(COMMANDS[args.command][0]).run(args) or 0

