"""Whole-model checks of the backends: "numba" and "cuda" must compute what "numpy" computes.

- random tiny models: numba (with BLAS and with the numba matmul) and cuda (numba's simulator,
  in a fresh process) match the numpy backend's logits within 1e-4, with a padded batch;
- cached decoding on the numba backend equals recomputing the whole sequence, within 1e-5;
- the reference model in weights/reference/ on the numba backend matches what HF transformers
  recorded (logits and hidden states within 1e-4, greedy tokens identical);
- an unknown backend is a ValueError, and "cuda" with neither a GPU nor the simulator is a
  RuntimeError that says how to turn the simulator on.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minillm.inference.kv_cache import KVCache
from minillm.kernels.backend import NumbaBackend
from minillm.model.backends import available_backends, get_backend
from minillm.model.config import GPT2Config
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT / "weights" / "reference"
LOGIT_TOLERANCE = 1e-4
CACHE_TOLERANCE = 1e-5

# Weights larger than GPT-2's std 0.02 init, so attention is far from uniform and a wrong
# mask or scale would show in the logits.
TINY = GPT2Config(vocab_size=100, n_positions=64, n_embd=64, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def tiny_params():
    return random_params(TINY, seed=1, std=0.1)


@pytest.fixture(scope="module")
def padded_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, TINY.vocab_size, (3, 40))
    mask = np.ones((3, 40), np.int64)
    mask[1, :9] = 0                                      # left padding
    mask[2, :39] = 0                                     # one real token
    return ids, mask


def max_logit_diff(params, backend, ids, mask) -> float:
    want = GPT2(TINY, params, backend="numpy")(ids, attention_mask=mask)
    got = GPT2(TINY, params, backend=backend)(ids, attention_mask=mask)
    return float(np.abs(got - want).max())


# ---- numba --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numba", NumbaBackend(matmul="numba")],
                         ids=["blas", "numba-matmul"])
def test_numba_backend_matches_numpy(tiny_params, padded_batch, backend):
    ids, mask = padded_batch
    assert max_logit_diff(tiny_params, backend, ids, mask) <= LOGIT_TOLERANCE
    assert max_logit_diff(tiny_params, backend, ids[0], None) <= LOGIT_TOLERANCE


def test_numba_cached_decoding_equals_recompute(tiny_params, padded_batch):
    """Prefill 30 tokens, feed 7 one at a time (the decode kernel), then the last 3 as one chunk
    (fewer queries than keys): every step's logits equal those of one pass over the sequence."""
    ids, mask = padded_batch
    model = GPT2(TINY, tiny_params, backend="numba")
    full = model(ids, attention_mask=mask)                                    # (B, 40, V)
    cache = KVCache.for_model(TINY, batch_size=3)
    steps = [model.forward(ids[:, :30], attention_mask=mask[:, :30], cache=cache).logits]
    for t in range(30, 37):
        step = model.forward(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache)
        steps.append(step.logits)
    steps.append(model.forward(ids[:, 37:], attention_mask=mask, cache=cache).logits)
    assert np.abs(np.concatenate(steps, axis=1) - full).max() <= CACHE_TOLERANCE


def test_numba_backend_matches_hf_reference():
    if not all((REFERENCE_DIR / name).is_file() for name in ("model.safetensors", "reference.npz")):
        pytest.skip("weights/reference/ (model.safetensors, reference.npz) is not there yet")
    from minillm.checkpoint import verify

    model = GPT2.from_pretrained(REFERENCE_DIR, backend="numba")
    reference = verify.load_reference(REFERENCE_DIR / verify.REFERENCE_FILE)
    for name in verify.prompt_names(reference):
        logit_diff, hidden_diff = verify.max_diffs(model, reference, name)
        assert logit_diff <= LOGIT_TOLERANCE and hidden_diff <= LOGIT_TOLERANCE, name
    if "batch.greedy" in reference:                      # left-padded batch: the padding masks
        check = verify.continuation_check(model, "batch", reference["batch.ids"],
                                          reference["batch.greedy"],
                                          reference["batch.attention_mask"])
        assert check["passed"], check["note"]


# ---- choosing a backend -------------------------------------------------------------------------
def test_unknown_backend_is_a_clear_value_error(tiny_params):
    with pytest.raises(ValueError, match="unknown backend 'tpu'.*numpy.*numba.*cuda"):
        get_backend("tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        GPT2(TINY, tiny_params, backend="tpu")
    assert {"numpy", "numba", "cuda"} <= set(available_backends())


def test_numba_backend_rejects_unknown_matmul():
    with pytest.raises(ValueError, match="matmul"):
        NumbaBackend(matmul="mkl")


# ---- cuda, in fresh processes -------------------------------------------------------------------
def run_python(code: str, simulator: bool) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter: numba reads NUMBA_ENABLE_CUDASIM when first imported."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


CUDA_VS_NUMPY = """
import numpy as np
from minillm.inference.kv_cache import KVCache
from minillm.model.config import GPT2Config
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params
config = GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)
params = random_params(config, seed=1, std=0.3)
ids = np.random.default_rng(0).integers(0, 40, (2, 5))
mask = np.array([[1] * 5, [0, 0, 1, 1, 1]])
want = GPT2(config, params, backend="numpy")(ids, attention_mask=mask)
cuda = GPT2(config, params, backend="cuda")
cache = KVCache.for_model(config, batch_size=2)
prefill = cuda.forward(ids[:, :4], attention_mask=mask[:, :4], cache=cache).logits
step = cuda.forward(ids[:, 4:], attention_mask=mask, cache=cache).logits
print("MAXDIFF", np.abs(np.concatenate([prefill, step], axis=1) - want).max())
"""


def test_cuda_backend_matches_numpy_on_simulator():
    result = run_python(CUDA_VS_NUMPY, simulator=True)
    assert result.returncode == 0, result.stderr
    max_diff = float(result.stdout.split("MAXDIFF")[-1])
    assert max_diff <= LOGIT_TOLERANCE


NO_GPU_PROBE = """
from numba import cuda
if cuda.is_available():
    print("HAS_GPU")
else:
    from minillm.model.backends import get_backend
    try:
        get_backend("cuda")
    except RuntimeError as err:
        print("ERROR", err)
"""


def test_cuda_without_gpu_or_simulator_is_a_clear_error():
    result = run_python(NO_GPU_PROBE, simulator=False)
    assert result.returncode == 0, result.stderr
    if "HAS_GPU" in result.stdout:
        pytest.skip("this machine has a CUDA GPU")
    assert "ERROR" in result.stdout
    assert "NVIDIA GPU" in result.stdout and "NUMBA_ENABLE_CUDASIM=1" in result.stdout


def test_simulator_switched_on_too_late_is_a_clear_error():
    too_late = "import numba, os\nos.environ['NUMBA_ENABLE_CUDASIM'] = '1'\n"
    result = run_python(too_late + NO_GPU_PROBE, simulator=False)
    assert result.returncode == 0, result.stderr
    if "HAS_GPU" in result.stdout:
        pytest.skip("this machine has a CUDA GPU")
    assert "after numba was imported" in result.stdout
