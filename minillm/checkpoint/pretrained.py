"""A model and the tokenizer that goes with it, loaded together and checked against each other.

A checkpoint folder that holds vocab.json + merges.txt (every folder `minillm train` writes)
brings its own tokenizer; one without them (the released GPT-2s, the reference model) uses
GPT-2's.
"""
from __future__ import annotations

from pathlib import Path

from minillm.checkpoint.weights import resolve_model_path
from minillm.model.gpt2 import GPT2
from minillm.tokenizer.bpe import FastTokenizer, Tokenizer

TOKENIZER_FILES = ("vocab.json", "merges.txt")


def tokenizer_for(name_or_path: str | Path) -> Tokenizer:
    """The (fast) tokenizer of a model: its folder's vocab.json + merges.txt, else GPT-2's.
    "gpt2" names GPT-2's tokenizer itself."""
    if str(name_or_path) == "gpt2" and not Path("gpt2").exists():
        return Tokenizer.gpt2()
    folder = resolve_model_path(name_or_path)
    folder = folder if folder.is_dir() else folder.parent
    if has_tokenizer_files(folder):
        return FastTokenizer.from_pretrained(folder)
    return Tokenizer.gpt2()


def has_tokenizer_files(folder: str | Path) -> bool:
    """Whether a folder holds a tokenizer of its own (vocab.json and merges.txt)."""
    return all((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def load_pretrained(name_or_path: str | Path, backend="numpy",
                    dtype: str = "float32") -> tuple[GPT2, Tokenizer]:
    """GPT2.from_pretrained and tokenizer_for, or a ValueError naming both sizes if the model's
    vocabulary and the tokenizer's disagree (caught here, not as a bad id mid-generation)."""
    model = GPT2.from_pretrained(name_or_path, backend=backend, dtype=dtype)
    tokenizer = tokenizer_for(name_or_path)
    check_vocab_sizes(model.config.vocab_size, tokenizer.n_vocab, name_or_path)
    return model, tokenizer


def check_vocab_sizes(model_vocab: int, tokenizer_vocab: int, source) -> None:
    if model_vocab != tokenizer_vocab:
        raise ValueError(f"{source}: the model has vocab_size {model_vocab} but its tokenizer has "
                         f"{tokenizer_vocab} tokens; a model needs the tokenizer it was trained with")
