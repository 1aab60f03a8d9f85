"""The tokenizer's files: a vocabulary (token -> id, JSON) and a merges list (one pair a line).

Hugging Face calls them vocab.json and merges.txt, OpenAI's release encoder.json and vocab.bpe;
:class:`~minillm.tokenizer.bpe.Tokenizer` reads either and writes Hugging Face's.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

# (vocabulary, merges) file names, Hugging Face's first; write_tokenizer_files writes the first pair.
FILE_NAMES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


def find_tokenizer_files(directory: Path) -> tuple[Path, Path]:
    """(vocabulary file, merges file) in ``directory``, under either pair of names."""
    for vocab_name, merges_name in FILE_NAMES:
        if (directory / vocab_name).is_file() and (directory / merges_name).is_file():
            return directory / vocab_name, directory / merges_name
    expected = " or ".join(f"{vocab} + {merges}" for vocab, merges in FILE_NAMES)
    raise FileNotFoundError(f"no tokenizer files in {directory}: expected {expected}")


def read_merges(path: Path) -> list[tuple[str, str]]:
    """Parse a merges file: an optional ``#version`` line, then one ``first second`` pair a line."""
    merges = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        parts = line.split()
        if not parts or line.startswith("#version"):
            continue
        if len(parts) != 2:
            raise ValueError(f"{path}:{line_number}: expected two symbols separated by a space, "
                             f"got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def write_tokenizer_files(directory: Path, vocab: Mapping[str, int],
                          merges: Sequence[tuple[str, str]]) -> None:
    """Write vocab.json (in id order) and merges.txt, which find_tokenizer_files finds again."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab_name, merges_name = FILE_NAMES[0]
    by_id = dict(sorted(vocab.items(), key=lambda item: item[1]))
    vocab_json = json.dumps(by_id, ensure_ascii=False, indent=0)
    (directory / vocab_name).write_text(vocab_json, encoding="utf-8")
    lines = ["#version: 0.2", *(f"{first} {second}" for first, second in merges)]
    (directory / merges_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
