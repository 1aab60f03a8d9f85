"""The kernels' output buffers (minillm.kernels.buffers): a buffer goes out again only when
nothing outside holds it or any view of it, never past the cap, and the numba backend's
results stay what they were while later calls run."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

buffers = pytest.importorskip("minillm.kernels.buffers")
OutputBuffers = buffers.OutputBuffers

MIB_FLOATS = (1 << 20) // 4          # float32 elements in 1 MiB, the default smallest pooled size


def test_a_free_buffer_is_used_again_and_a_held_one_is_not():
    pool = OutputBuffers()
    first = pool.empty((MIB_FLOATS,))
    held = pool.empty((MIB_FLOATS,))
    assert not np.shares_memory(first, held)
    address = first.__array_interface__["data"][0]
    del first
    again = pool.empty((2, MIB_FLOATS // 2))                # same size, another shape
    assert again.__array_interface__["data"][0] == address
    assert again.shape == (2, MIB_FLOATS // 2) and again.dtype == np.float32
    assert again.flags.c_contiguous and not np.shares_memory(again, held)


def test_a_view_of_a_result_keeps_its_buffer_out_of_use():
    pool = OutputBuffers()
    result = pool.empty((4, MIB_FLOATS))
    row = result[1]                        # a slice outlives the array it came from
    result[:] = 1.0
    del result
    fresh = pool.empty((4, MIB_FLOATS))
    fresh[:] = 7.0
    assert not np.shares_memory(row, fresh) and np.all(row == 1.0)


def test_small_arrays_are_plain_and_the_cap_holds():
    pool = OutputBuffers(max_bytes=3 << 20)
    small = pool.empty((10, 10))
    assert small.shape == (10, 10) and pool.nbytes == 0
    held = [pool.empty((MIB_FLOATS,)) for _ in range(5)]     # all held: three kept at most
    assert pool.nbytes == 3 << 20
    assert len({a.__array_interface__["data"][0] for a in held}) == 5
    del held
    two = pool.empty((2 * MIB_FLOATS,))    # room made by dropping unused 1 MiB buffers
    assert two.size == 2 * MIB_FLOATS and pool.nbytes <= 3 << 20


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.booleans()), min_size=1, max_size=30))
def test_no_two_live_results_share_memory(steps):
    """Any order of asking (sizes 1-3 MiB) and letting go: the live results never overlap,
    and each still holds what was written into it."""
    pool = OutputBuffers(max_bytes=6 << 20)
    live = []                                   # (result, the value written into it)
    for step, (mib, keep) in enumerate(steps):
        out = pool.empty((mib * MIB_FLOATS,))
        out[:] = step
        for earlier, value in live:
            assert not np.shares_memory(out, earlier)
            assert earlier[0] == value and earlier[-1] == value
        if keep:
            live.append((out, step))
        elif live:
            live.pop(0)                # let go of the oldest: its buffer is free again
    assert pool.nbytes <= 6 << 20


def test_threads_never_get_the_same_buffer():
    pool = OutputBuffers()
    got, start = [], threading.Barrier(4)

    def ask():
        start.wait()
        got.append(pool.empty((MIB_FLOATS,)))      # each thread holds its result

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    addresses = {a.__array_interface__["data"][0] for a in got}
    assert len(addresses) == 4


def test_the_backends_results_outlive_later_calls():
    """GELU, LayerNorm and a product on the pool, each called twice on inputs of one shape:
    the first result is not written over by the second."""
    backend_module = pytest.importorskip("minillm.kernels.backend")
    backend = backend_module.NumbaBackend(pool_min_rows=64)
    rng = np.random.default_rng(1)
    x1, x2 = (rng.standard_normal((2, 300, 512), dtype=np.float32) for _ in range(2))
    w, b = rng.standard_normal((512, 1024), dtype=np.float32), np.zeros(1024, np.float32)
    gain, bias = np.ones(512, np.float32), np.zeros(512, np.float32)
    for op in (backend.gelu, lambda x: backend.layer_norm(x, gain, bias, 1e-5),
               lambda x: backend.linear(x, w, b)):
        first = op(x1)
        kept = first.copy()
        second = op(x2)
        assert not np.shares_memory(first, second)
        np.testing.assert_array_equal(first, kept)


def test_the_models_outputs_outlive_a_second_forward_pass():
    """A prompt long enough for the pool, logits and the final LayerNorm's output big enough
    for the buffers: a first pass's outputs are unchanged by a second one on other ids, and
    equal a pass on a backend of their own."""
    backend_module = pytest.importorskip("minillm.kernels.backend")
    from minillm.model.config import GPT2Config
    from minillm.model.gpt2 import GPT2
    from minillm.model.params import random_params

    config = GPT2Config(vocab_size=1000, n_positions=512, n_embd=512, n_layer=2, n_head=8)
    params = random_params(config, seed=3)
    shared = GPT2(config, params, backend=backend_module.NumbaBackend(pool_min_rows=64))
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 300))
    first = shared.forward(ids, output_hidden_states=True)
    kept = [first.logits.copy()] + [h.copy() for h in first.hidden_states]
    shared.forward(ids[:, ::-1].copy(), output_hidden_states=True)      # other values, same sizes
    for before, now in zip(kept, [first.logits] + first.hidden_states):
        np.testing.assert_array_equal(before, now)
    alone = GPT2(config, params, backend=backend_module.NumbaBackend(pool_min_rows=64))
    np.testing.assert_array_equal(alone(ids), first.logits)
