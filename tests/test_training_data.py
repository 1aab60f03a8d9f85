"""Tokenised data on disk, held-out documents, and the batches drawn from them."""
import numpy as np
import pytest

from minillm.training.data import (DataError, batch_rng, encode_documents, eval_windows, hold_out,
                                   prepare_tokens, sample_batch, split_documents, token_dtype)


def test_held_out_split_is_made_of_whole_documents():
    documents = [f"document {i}\n" + f"line of {i}\n" * (i + 1) for i in range(20)]
    train, val = hold_out(documents, val_fraction=0.2, seed=0)
    assert sorted(train + val) == sorted(documents) and not set(train) & set(val)
    assert sum(map(len, val)) >= 0.2 * sum(map(len, documents)) and train
    assert hold_out(documents, 0.2, seed=0) == (train, val)                   # seeded
    with pytest.raises(DataError, match="at least 2"):
        hold_out(documents[:1], 0.2, seed=0)


def test_documents_are_joined_by_endoftext():
    from minillm.tokenizer.bpe import Tokenizer
    tokenizer = Tokenizer.gpt2()
    docs = split_documents("First play.\n<|endoftext|>\nSecond play.\n<|endoftext|>\n\n")
    assert docs == ["First play.", "Second play."]
    ids = encode_documents(docs, tokenizer)
    assert ids.dtype == np.uint16
    assert list(ids) == tokenizer.encode("First play.") + [50256] + tokenizer.encode("Second play.") + [50256]


def test_token_dtype_fits_the_vocabulary():
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_batches_are_shifted_windows_and_depend_only_on_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    ids, targets = sample_batch(tokens, 8, 16, batch_rng(3, 7))
    assert ids.shape == targets.shape == (8, 16) and ids.dtype == np.int64
    np.testing.assert_array_equal(targets, ids + 1)                         # next token
    again, _ = sample_batch(tokens, 8, 16, batch_rng(3, 7))
    other, _ = sample_batch(tokens, 8, 16, batch_rng(3, 8))
    assert np.array_equal(ids, again) and not np.array_equal(ids, other)
    assert ids.max() + 1 <= 999                                             # inside the data


def test_eval_windows_cover_the_start_without_overlap():
    ids, targets = eval_windows(np.arange(100, dtype=np.uint16), context=16, max_windows=10)
    assert ids.shape == (6, 16)                                             # (100 - 1) // 16
    np.testing.assert_array_equal(ids.reshape(-1), np.arange(96))


def test_tokens_are_cached_and_retokenised_when_the_text_changes(tmp_path):
    from minillm.tokenizer.bpe import Tokenizer
    tokenizer = Tokenizer.gpt2()
    data = tmp_path / "corpus.txt"
    data.write_text("One.\n<|endoftext|>\nTwo two.\n<|endoftext|>\nThree three three.\n")
    splits = prepare_tokens(data, tokenizer, tmp_path / "tokens", val_fraction=0.3, seed=0)
    assert isinstance(splits.train, np.memmap) and len(splits.train) + len(splits.val) > 0
    stamp = (tmp_path / "tokens" / "train.bin").stat().st_mtime_ns
    prepare_tokens(data, tokenizer, tmp_path / "tokens", val_fraction=0.3, seed=0)
    assert (tmp_path / "tokens" / "train.bin").stat().st_mtime_ns == stamp   # reused
    data.write_text("Four.\n<|endoftext|>\nFive.\n")
    splits = prepare_tokens(data, tokenizer, tmp_path / "tokens", val_fraction=0.3, seed=0)
    assert len(splits.train) + len(splits.val) == len(tokenizer.encode("Four.")) + len(tokenizer.encode("Five.")) + 2


def test_a_folder_without_val_txt_is_refused(tmp_path):
    from minillm.tokenizer.bpe import Tokenizer
    (tmp_path / "train.txt").write_text("text")
    with pytest.raises(DataError, match="no val.txt"):
        prepare_tokens(tmp_path, Tokenizer.gpt2(), tmp_path / "tokens")
