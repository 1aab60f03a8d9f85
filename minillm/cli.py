"""The `minillm` command line: one subcommand per module, each with add_arguments() and run()."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module implementing it, one-line help)
COMMANDS = {
    "generate": ("minillm.cli_generate", "generate text from a prompt, streaming it"),
    "tokenize": ("minillm.cli_tokenize", "show how text splits into GPT-2 tokens"),
    "download": ("minillm.download", "download GPT-2 weights from the Hugging Face hub"),
    "verify": ("minillm.verify", "check a model's logits against a reference file"),
    "assignments": ("minillm.assignments", "release or grade the course assignments"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minillm", description="GPT-2 from scratch in NumPy.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module=module_name)
        # Import lazily-declared arguments only for the subcommand being parsed would need a
        # two-pass parse; the modules are light to import, so declare them all up front.
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return importlib.import_module(args.module).run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
