"""Training data: text tokenised once into a flat array of ids on disk, read back memory-mapped,
and cut into (B, T + 1) windows.

    documents -> ids of doc_0, <|endoftext|>, ids of doc_1, <|endoftext|>, ...   (N,) uint16

A window of T + 1 consecutive ids gives T inputs and, shifted by one, their T targets: every
position of every window is a training example. Windows may cross a document boundary; the
<|endoftext|> between them tells the model that what follows is unrelated.

The held-out split is made of whole documents (works, files), never random lines: lines of
one document are so alike that a model would be scored on text it has nearly seen.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minillm.tokenizer.bpe import ENDOFTEXT



class DataError(ValueError):
    """Training data that cannot be used, with what was wrong and what was expected."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id: uint16 up to 65536 tokens, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def split_documents(text: str) -> list[str]:
    """The documents of a text whose documents are separated by <|endoftext|> (empty ones dropped)."""
    return [doc.strip("\n") for doc in text.split(ENDOFTEXT) if doc.strip()]


def encode_documents(documents: list[str], tokenizer) -> np.ndarray:
    """ids of every document, each followed by <|endoftext|>: (N,) in the smallest dtype."""
    eot = tokenizer.eot_token
    ids: list[int] = []
    for doc in documents:
        ids.extend(tokenizer.encode_ordinary(doc))
        ids.append(eot)
    return np.array(ids, dtype=token_dtype(tokenizer.n_vocab))


def hold_out(documents: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split documents into (train, val), val being whole documents chosen with a seeded
    shuffle until they hold at least val_fraction of the characters (at least one document)."""
    if len(documents) < 2:
        raise DataError(f"the text holds {len(documents)} document(s) separated by {ENDOFTEXT}; "
                        "a held-out split needs at least 2 (or give a folder with train.txt and val.txt)")
    order = np.random.default_rng(seed).permutation(len(documents))
    target = val_fraction * sum(len(doc) for doc in documents)
    val_ids, held = [], 0
    for i in order[:-1]:                           # keep at least one document for training
        val_ids.append(int(i))
        held += len(documents[i])
        if held >= target:
            break
    chosen = set(val_ids)
    train = [doc for i, doc in enumerate(documents) if i not in chosen]
    return train, [documents[i] for i in sorted(chosen)]


def read_splits(data: Path, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Documents of the training and validation splits, from a folder holding train.txt and
    val.txt, or from one text file split by document (see hold_out)."""
    data = Path(data)
    if data.is_dir():
        files = [data / "train.txt", data / "val.txt"]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(f"data folder {data} has no {' or '.join(missing)}: expected train.txt and val.txt")
        return tuple(split_documents(_read_text(f)) for f in files)
    if not data.is_file():
        raise DataError(f"data {data} is neither a text file nor a folder with train.txt and val.txt")
    return hold_out(split_documents(_read_text(data)), val_fraction, seed)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}): training data must be UTF-8") from None


@dataclass
class TokenSplits:
    train: np.ndarray     # (N_train,) ids, memory-mapped
    val: np.ndarray       # (N_val,) ids, memory-mapped


def prepare_tokens(data: Path, tokenizer, cache_dir: Path, val_fraction: float = 0.1,
                   seed: int = 0) -> TokenSplits:
    """Tokenise `data` once into cache_dir/{train,val}.bin and map them.

    The cache is keyed by the data's and the tokenizer's contents (a sha256 in meta.json), so a
    resumed run reuses it and a changed text or vocabulary is tokenised again."""
    cache_dir = Path(cache_dir)
    key = _cache_key(Path(data), tokenizer, val_fraction, seed)
    meta_path = cache_dir / "meta.json"
    if not (meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key):
        train_docs, val_docs = read_splits(Path(data), val_fraction, seed)
        for name, docs in (("training", train_docs), ("validation", val_docs)):
            if not docs:
                raise DataError(f"the {name} split of {data} holds no text")
        cache_dir.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)      # no key while the .bin files are being rewritten
        for name, docs in (("train", train_docs), ("val", val_docs)):
            encode_documents(docs, tokenizer).tofile(cache_dir / f"{name}.bin")
        meta = {"key": key, "dtype": token_dtype(tokenizer.n_vocab).name, "n_vocab": tokenizer.n_vocab,
                "documents": {"train": len(train_docs), "val": len(val_docs)}}
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    dtype = json.loads(meta_path.read_text())["dtype"]
    train, val = (np.memmap(cache_dir / f"{name}.bin", dtype=dtype, mode="r") for name in ("train", "val"))
    return TokenSplits(train, val)


def _cache_key(data: Path, tokenizer, val_fraction: float, seed: int) -> str:
    digest = hashlib.sha256()
    for path in sorted(data.glob("*.txt")) if data.is_dir() else [data]:
        digest.update(path.name.encode() + path.read_bytes())
    vocab = sorted({**tokenizer.vocab, **tokenizer.special_tokens}.items(), key=lambda kv: kv[1])
    digest.update(json.dumps([vocab, tokenizer.merges, val_fraction, seed]).encode())
    return digest.hexdigest()


def check_windows(tokens: np.ndarray, context: int, split: str) -> None:
    """DataError unless `tokens` holds at least one window of context + 1 ids."""
    if len(tokens) < context + 1:
        raise DataError(f"the {split} split has {len(tokens)} tokens, fewer than one window of "
                        f"context + 1 = {context + 1}: give more text or a shorter --context")


def sample_batch(tokens: np.ndarray, batch_size: int, context: int, rng: np.random.Generator):
    """batch_size windows at random starts -> ids, targets: (B, T) int64, targets = ids shifted."""
    starts = rng.integers(0, len(tokens) - context, size=batch_size)             # (B,)
    windows = np.stack([tokens[s:s + context + 1] for s in starts]).astype(np.int64)  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The generator for step `step`'s batch: a function of (seed, step) alone, so a resumed
    run draws exactly the batches an uninterrupted one would."""
    return np.random.default_rng([seed, step])


def eval_windows(tokens: np.ndarray, context: int, max_windows: int):
    """Consecutive non-overlapping windows from the start, at most max_windows of them:
    ids, targets (W, T) int64. The same windows every time, so validation losses compare."""
    n_windows = min(max_windows, (len(tokens) - 1) // context)
    starts = np.arange(n_windows) * context
    windows = np.stack([tokens[s:s + context + 1] for s in starts]).astype(np.int64)
    return windows[:, :-1], windows[:, 1:]
