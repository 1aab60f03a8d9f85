"""Shared pytest fixtures."""
from pathlib import Path

import numpy as np
import pytest

# --- the reference model: weights/reference/, written by scripts/make_reference.py ----------
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "weights" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference() -> dict:
    """HF's recorded outputs for the reference model (see scripts/make_reference.py)."""
    with np.load(REFERENCE_DIR / "reference.npz") as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="session")
def reference_model():
    from minillm.model import GPT2
    return GPT2.from_pretrained(REFERENCE_DIR)
