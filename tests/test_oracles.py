"""The oracles themselves (instructor-only: the release leaves this file out, and withholds the
oracles): the recordings the graded tests read are what the oracles compute now, and the
incremental BPE trainer agrees with the naive one on random texts."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.tokenizer.train import BpeTrainer, count_pieces

from oracles import naive_merges

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
record_oracles = pytest.importorskip("record_oracles")
RECORDED = Path(__file__).parent / "data" / "oracles"
RERECORD = "the oracle changed: rerun python scripts/record_oracles.py"


@pytest.mark.parametrize("file, cases", [("layers.npz", "layer_cases"),
                                         ("attention.npz", "attention_cases")])
def test_the_recorded_arrays_are_what_the_oracles_compute(file, cases):
    fresh = getattr(record_oracles, cases)()
    with np.load(RECORDED / file) as recorded:
        assert sorted(recorded.files) == sorted(fresh), RERECORD
        for name in fresh:
            # float64 to 1e-12: NumPy's tanh / exp differ by an ulp between CPUs (its AVX-512
            # loops), where a changed oracle moves far more than that
            np.testing.assert_allclose(fresh[name], recorded[name], rtol=1e-12, atol=1e-15,
                                       err_msg=f"{name}: {RERECORD}")


def test_the_recorded_bpe_training_is_what_the_naive_trainer_computes(tokenizer_corpus):
    recorded = json.loads((RECORDED / "bpe_training.json").read_text(encoding="utf-8"))
    assert recorded == record_oracles.bpe_training(tokenizer_corpus), RERECORD


@settings(max_examples=50, deadline=None)
@given(texts=st.lists(st.text(st.sampled_from("ab c\n'sé我"), max_size=40), max_size=5))
def test_random_texts_match_the_naive_trainer(texts):
    trainer = BpeTrainer(count_pieces(texts))
    while (pair := trainer.best_pair()) is not None and len(trainer.merges) < 30:
        trainer.merge(pair)
    assert trainer.merges == naive_merges(texts, 30)
