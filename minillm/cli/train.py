"""`minillm train`: train a GPT-2 from scratch, fine-tune one (--init), or resume a run.

    minillm train --config recipes/shakespeare/config.toml
    minillm train --data corpus.txt --out runs/small --n-layer 4 --n-embd 256 --steps 2000

Settings come from TrainConfig's defaults, then the --config file, then the flags. The run's
folder (--out) gets a Hugging Face GPT-2 checkpoint, the optimiser state, log.jsonl and loss.png.
"""
from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

FLAG_HELP = {
    "data": "a .txt file (documents separated by <|endoftext|>, some held out) or a folder "
            "with train.txt and val.txt",
    "out": "the run's folder",
    "tokenizer": "gpt2, or a folder with vocab.json + merges.txt",
    "init": "start from this checkpoint's weights (and its tokenizer, if it has one)",
    "context": "tokens per training window, and the new model's n_positions",
    "lr": "peak learning rate, after warm-up",
    "grad_clip": "max global gradient norm (0: no clipping)",
    "eval_interval": "validate and save a checkpoint every N steps",
}


def add_arguments(parser) -> None:
    from minillm.model.backends import available_backends
    from minillm.training.config import TrainConfig

    parser.add_argument("--config", metavar="FILE.toml", help="settings file (keys: the flag names with _)")
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = _flag_type(field.type)
        extra = {"choices": available_backends()} if field.name == "backend" else {}
        parser.add_argument(flag, type=kind, default=None, metavar=field.name.upper(),
                            help=f"{FLAG_HELP.get(field.name, '')} (default: {field.default})".strip(),
                            **extra)
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an --out folder that holds another one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _flag_type(annotation):
    """str / int / float from a dataclass field's annotation (a string under __future__)."""
    name = str(annotation)
    return int if "int" in name else float if "float" in name else str


def run(args) -> int:
    from minillm.training import TrainConfig, TrainingError, train
    from minillm.training.checkpoint import read_state
    from minillm.training.config import load_config_file
    from minillm.training.data import DataError

    try:
        values = load_config_file(args.config) if args.config else {}
        given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
        for key in ("data", "out", "init", "tokenizer"):   # saved absolute: --resume from any folder
            if key in given and (key == "out" or Path(given[key]).exists()):
                given[key] = str(Path(given[key]).resolve())
        if args.resume:
            out = given.get("out", values.get("out"))
            state = read_state(out) if out else None
            values = {**(state["config"] if state else {}), **values}
        config = TrainConfig(**{**values, **given})
        if not config.data or not config.out:
            raise ValueError("--data and --out are required (on the command line or in --config)")
        result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    except (TrainingError, DataError, ValueError, TypeError, OSError, KeyError) as error:
        print(f"minillm train: {error}", file=sys.stderr)
        return 2
    val = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    print(f"{'stopped' if result.interrupted else 'finished'} at step {result.step}: "
          f"train loss {result.train_loss:.4f}{val}; checkpoint in {config.out}")
    return 130 if result.interrupted else 0
