"""The numba.cuda kernels against the NumPy references, on numba's CUDA simulator and on a GPU.

numba reads NUMBA_ENABLE_CUDASIM once, when it is first imported, and pytest runs every test file
in one process, where other files import numba first. So this file runs itself again in a fresh
process: the tests at the bottom run there (MINILLM_CUDA_TEST_CHILD=1), and the two tests pytest
collects here launch them, once under the simulator (always; tiny shapes, since the simulator
runs every CUDA thread as a Python thread) and once on the GPU if there is one (larger shapes).

Tolerances as in test_kernels_cpu.py (attention: max abs 1e-5) and test_matmul_cpu.py
(matmul: 1e-5 relative to |a| @ |b| + |bias|).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHILD_FLAG = "MINILLM_CUDA_TEST_CHILD"
REPO_ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def run_in_fresh_process(args: list[str], simulator: bool, timeout: int):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def run_this_file(simulator: bool) -> None:
    pytest_args = [str(Path(__file__)), "-q", "-p", "no:cacheprovider"]
    code = (f"import os, sys, pytest; os.environ['{CHILD_FLAG}'] = '1'; "
            f"sys.exit(pytest.main({pytest_args!r}))")
    result = run_in_fresh_process(["-c", code], simulator, timeout=600)
    assert result.returncode == 0, f"CUDA kernel tests failed:\n{result.stdout}\n{result.stderr}"
    print(result.stdout)


def gpu_available() -> bool:
    probe = run_in_fresh_process(["-c", "from numba import cuda; print(cuda.is_available())"],
                                 simulator=False, timeout=120)
    return probe.stdout.strip().endswith("True")


if os.environ.get(CHILD_FLAG) != "1":
    def test_cuda_kernels_on_simulator():
        run_this_file(simulator=True)

    def test_cuda_kernels_on_gpu():
        if not gpu_available():
            pytest.skip("no CUDA GPU (numba.cuda.is_available() is False)")
        run_this_file(simulator=False)

else:
    # ---- run in the fresh process ----------------------------------------------------------------
    import numba
    from numba import cuda

    from minillm.kernels import attention_cuda, matmul_cuda
    from minillm.kernels.backend import CudaBackend
    from minillm.model.attention import causal_attention, split_heads
    from minillm.model.config import GPT2Config
    from minillm.model.params import random_params

    SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
    if not SIMULATOR and not cuda.is_available():
        pytest.skip("neither a CUDA GPU nor the simulator", allow_module_level=True)

    def on_device(*arrays):
        return [cuda.to_device(np.ascontiguousarray(a)) for a in arrays]

    def cuda_matmul(a, b, bias):
        c = cuda.device_array((a.shape[0], b.shape[1]), np.float32)
        matmul_cuda.launch_matmul(*on_device(a, b, bias), c)
        return c.copy_to_host()

    def cuda_attention(q, k, v, key_valid=None):
        if key_valid is None:
            key_valid = np.ones((k.shape[0], k.shape[2]), bool)
        out = cuda.device_array(q.shape, np.float32)
        attention_cuda.launch_attention(*on_device(q, k, v, key_valid), out)
        return out.copy_to_host()

    def random_qkv(rng, B, H, Tq, Tk, d):
        normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
        return normal(B, H, Tq, d), normal(B, H, Tk, d), normal(B, H, Tk, d)

    @pytest.fixture
    def rng():
        return np.random.default_rng(0)

    MATMUL_SHAPES = [(1, 1, 1), (5, 17, 33), (16, 16, 16), (33, 40, 20)]
    if not SIMULATOR:
        MATMUL_SHAPES += [(300, 200, 500), (1024, 768, 2304), (128, 3072, 768)]

    @pytest.mark.parametrize("M, K, N", MATMUL_SHAPES)
    def test_tiled_matmul_matches_numpy(rng, M, K, N):
        a = rng.standard_normal((M, K), dtype=np.float32)
        b = rng.standard_normal((K, N), dtype=np.float32)
        bias = rng.standard_normal(N, dtype=np.float32)
        scale = np.abs(a) @ np.abs(b) + np.abs(bias)
        want = matmul_cuda.reference(a, b, bias)
        assert np.all(np.abs(cuda_matmul(a, b, bias) - want) <= TOLERANCE * scale)

    ATTENTION_SHAPES = [
        (1, 2, 5, 5, 16),          # less than a tile
        (1, 1, 32, 32, 16),        # exactly one tile
        (1, 1, 20, 33, 16),        # chunked prefill: one key past a tile
        (2, 1, 1, 20, 16),         # decoding
        (1, 1, 10, 10, 5),         # odd head_dim
    ]
    if not SIMULATOR:
        ATTENTION_SHAPES += [(1, 12, 1024, 1024, 64), (2, 4, 300, 300, 64), (3, 2, 1, 700, 128)]

    @pytest.mark.parametrize("B, H, Tq, Tk, d", ATTENTION_SHAPES)
    def test_fused_attention_matches_reference(rng, B, H, Tq, Tk, d):
        q, k, v = random_qkv(rng, B, H, Tq, Tk, d)
        assert np.abs(cuda_attention(q, k, v) - attention_cuda.reference(q, k, v)).max() <= TOLERANCE

    def test_fused_attention_padding_and_fully_masked_rows(rng):
        q, k, v = random_qkv(rng, 3, 1, 12, 12, 16)
        key_valid = np.ones((3, 12), bool)
        key_valid[0] = False                # all padding: zeros
        key_valid[1, :5] = False            # left padding: queries 0..4 see nothing
        key_valid[2] = rng.random(12) < 0.5
        got = cuda_attention(q, k, v, key_valid)
        assert np.all(got[0] == 0) and np.all(got[1, :, :5] == 0)
        assert np.abs(got - causal_attention(q, k, v, key_valid)).max() <= TOLERANCE

    def test_fused_attention_negative_scores_after_a_fully_masked_key_tile(rng):
        T, d = 40, 16
        q = np.full((1, 1, T, d), 10, np.float32)
        k = -10 + rng.standard_normal((1, 1, T, d), dtype=np.float32)      # scores around -400
        v = rng.standard_normal((1, 1, T, d), dtype=np.float32)
        key_valid = np.arange(T)[None, :] >= 33                            # first key tile: padding
        got = cuda_attention(q, k, v, key_valid)
        assert np.abs(got - causal_attention(q, k, v, key_valid)).max() <= TOLERANCE
        assert np.abs(got[0, 0, 33:]).max() > 0.1

    def test_backend_linear_with_transposed_weight_and_no_bias(rng):
        backend = CudaBackend()
        x = rng.standard_normal((2, 3, 16), dtype=np.float32)
        wte = rng.standard_normal((40, 16), dtype=np.float32)
        got = backend.linear(x, wte.T)                               # the tied LM head
        assert got.shape == (2, 3, 40)
        np.testing.assert_allclose(got, x @ wte.T, atol=1e-5)

    def test_backend_attention_on_strided_views(rng):
        backend = CudaBackend()
        qkv = rng.standard_normal((2, 9, 3 * 32), dtype=np.float32)
        q, k, v = (split_heads(part, 2) for part in np.split(qkv, 3, axis=-1))
        key_valid = np.ones((2, 9), bool)
        key_valid[1, :3] = False
        got = backend.attention(q, k, v, key_valid)
        assert np.abs(got - causal_attention(q, k, v, key_valid)).max() <= TOLERANCE

    def test_backend_keeps_weights_on_the_device(rng):
        backend = CudaBackend()
        w = rng.standard_normal((16, 8), dtype=np.float32)
        x = rng.standard_normal((3, 16), dtype=np.float32)
        backend.linear(x, w)
        uploaded = backend._weight(w)
        backend.linear(x + 1, w)
        assert backend._weight(w) is uploaded                        # not uploaded again
        config = GPT2Config(vocab_size=20, n_positions=8, n_embd=16, n_layer=2, n_head=2)
        params = random_params(config)
        backend.prepare(params)
        assert backend._weight(params.wte.T) is backend._weight(params.wte.T)
        assert len(backend._device_weights) >= 1 + 1 + 2 * 8         # w, zeros, LM head, 2 blocks
        backend.clear()
        assert not backend._device_weights
