"""The worker pool (minillm.kernels.workers): every piece runs once, in parallel, with BLAS held
at one thread, errors come back to the caller; and the kernels give the same bits whichever
threads share their work."""
import threading

import numpy as np
import pytest

workers = pytest.importorskip("minillm.kernels.workers")
from minillm.kernels import attention_cpu, fused_cpu  # noqa: E402

from oracles import float32_normals  # noqa: E402

WorkerPool = workers.WorkerPool
randn = float32_normals(seed=0)


@pytest.fixture(scope="module")
def pool():
    return WorkerPool(3)


@pytest.mark.parametrize("n_pieces", [1, 2, 3, 7])
def test_every_piece_runs_once_and_pieces_sharing_i_mod_n_share_a_thread(pool, n_pieces):
    seen, lock = [], threading.Lock()

    def piece(i):
        with lock:
            seen.append((i, threading.get_ident()))

    pool.run(piece, n_pieces)
    assert sorted(i for i, _ in seen) == list(range(n_pieces))
    thread_of = dict(seen)
    for i in range(n_pieces):          # one after another: scratch indexed by i % n_threads is safe
        assert thread_of[i] == thread_of[i % pool.n_threads]
    assert thread_of[0] == threading.get_ident()  # the caller works too


def test_pieces_run_at_the_same_time(pool):
    """All n_threads pieces must be inside piece() together: a barrier that only opens for
    n_threads parties times out if the pool ran them one after another."""
    barrier = threading.Barrier(pool.n_threads, timeout=10)
    pool.run(lambda i: barrier.wait())


def test_blas_runs_on_one_thread_inside_the_pool_and_is_restored_after(pool):
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before, inside = blas_threads(), []
    pool.run(lambda i: inside.append(blas_threads()) if i == 0 else None)
    assert inside == [[1] * len(before)]
    assert blas_threads() == before


def test_an_error_in_any_piece_reaches_the_caller_after_all_pieces_stop(pool):
    finished = []

    def piece(i):
        if i == 2:
            raise ValueError("piece 2 failed")
        finished.append(i)

    with pytest.raises(ValueError, match="piece 2 failed"):
        pool.run(piece, 5)
    assert sorted(finished) == [0, 1, 3, 4]


@pytest.mark.parametrize("n_items", [0, 1, 2, 5, 1024])
def test_split_covers_the_range_in_near_equal_blocks(pool, n_items):
    blocks = pool.split(n_items)
    assert blocks[0][0] == 0 and blocks[-1][1] == n_items
    assert all(stop == start for (_, stop), (start, _) in zip(blocks, blocks[1:]))
    sizes = [stop - start for start, stop in blocks]
    assert max(sizes) - min(sizes) <= 1 and len(blocks) <= pool.n_threads


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_thread_count_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="n_threads must be a positive int"):
        WorkerPool(bad)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_forked_child_gets_threads_of_its_own(pool):
    """A child process inherits the pool object but none of its threads; it must not hang."""
    import multiprocessing

    pool.run(lambda i: None)                       # the parent's helpers exist now
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()

    def child():
        done, lock = [], threading.Lock()

        def piece(i):
            with lock:
                done.append(i)

        pool.run(piece, 7)
        results.put(sorted(done))

    process = context.Process(target=child)        # fork: the closure is not pickled
    process.start()
    process.join(timeout=30)
    alive = process.is_alive()
    if alive:
        process.kill()
    assert not alive and process.exitcode == 0
    assert results.get() == list(range(7))


def test_one_thread_pool_runs_on_the_caller():
    idents = []
    WorkerPool(1).run(lambda i: idents.append(threading.get_ident()), 3)
    assert idents == [threading.get_ident()] * 3


# ---- the kernels: the same bits on a pool of any size as on the calling thread alone ------------
@pytest.mark.parametrize("n_queries, n_keys", [(1, 70), (45, 45), (100, 130), (257, 257)])
@pytest.mark.parametrize("threads", [2, 3, 4])
def test_attention_is_bit_identical_however_the_jobs_are_shared(n_queries, n_keys, threads):
    q, k, v = randn(2, 3, n_queries, 64), randn(2, 3, n_keys, 64), randn(2, 3, n_keys, 64)
    key_valid = np.ones((2, n_keys), np.bool_)
    key_valid[1, :5] = False                        # left padding in the second sequence
    expected = attention_cpu.flash_attention(q, k, v, key_valid)          # the calling thread
    out = attention_cpu.flash_attention(q, k, v, key_valid, pool=WorkerPool(threads))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("n_queries, n_keys", [(45, 45), (100, 130)])
@pytest.mark.parametrize("threads", [2, 3])
def test_attention_is_bit_identical_on_numba_threads(n_queries, n_keys, threads):
    """n_threads of numba's threads (no pool) share the jobs as the pool's workers do."""
    q, k, v = randn(2, 3, n_queries, 64), randn(2, 3, n_keys, 64), randn(2, 3, n_keys, 64)
    key_valid = np.ones((2, n_keys), np.bool_)
    key_valid[1, :5] = False
    expected = attention_cpu.flash_attention(q, k, v, key_valid)
    np.testing.assert_array_equal(attention_cpu.flash_attention(q, k, v, key_valid, n_threads=threads),
                                  expected)


@pytest.mark.parametrize("threads", [2, 3])
def test_layer_norm_and_gelu_are_bit_identical_on_numba_threads(threads):
    x, gain, bias = randn(37, 768, scale=2.0), randn(768), randn(768)
    np.testing.assert_array_equal(fused_cpu.layer_norm(x, gain, bias, 1e-5, n_threads=threads),
                                  fused_cpu.layer_norm(x, gain, bias, 1e-5))
    h = randn(5, 13, 3072, scale=3.0)               # shares end mid-row
    np.testing.assert_array_equal(fused_cpu.gelu(h, n_threads=threads), fused_cpu.gelu(h))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_layer_norm_and_gelu_are_bit_identical_on_the_pool(threads):
    x, gain, bias = randn(37, 768, scale=2.0), randn(768), randn(768)
    pool = WorkerPool(threads)
    np.testing.assert_array_equal(fused_cpu.layer_norm(x, gain, bias, 1e-5, pool=pool),
                                  fused_cpu.layer_norm(x, gain, bias, 1e-5))
    h = randn(5, 13, 3072, scale=3.0)               # 199,680 elements: blocks end mid-row
    np.testing.assert_array_equal(fused_cpu.gelu(h, pool=pool), fused_cpu.gelu(h))
