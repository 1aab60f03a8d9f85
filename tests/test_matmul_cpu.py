"""The numba CPU matmul kernels against `a @ b`.

matmul: minillm.kernels.matmul_cpu.matmul (packs both operands on every call), and
matmul_packed_cpu.matmul_packed (batched decoding's 4 x 16 tile) and matmul_prompt (prompts'
6 x 16 tile) on a weight packed once, and matmul_prompt_avx512 (prompts' 6 x 64 tile of
16-float vectors), which must give matmul_prompt's bits. A length-K dot product in float32
carries rounding error proportional to sum_k |a_ik b_kj|, so the check is relative to that:
|C - (a @ b + bias)| <= 1e-5 * (|a| @ |b| + |bias|) elementwise (for K = 3072 that allows ~1e-5
relative error, where the typical one is ~1e-6).
"""
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minillm.kernels import matmul_cpu
from minillm.kernels.matmul_cpu import matmul
from minillm.kernels import matmul_packed_cpu, matmul_prompt_avx512 as avx512
from minillm.kernels.matmul_packed_cpu import (matmul_by_rows, matmul_packed, matmul_prompt,
                                               matmul_prompt_quantized, pack_prompt_rows,
                                               pack_weight, prompt_blocking)
from minillm.model.quantize import quantize

TOLERANCE = 1e-5


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---- matmul -------------------------------------------------------------------------------------
def assert_matmul_matches(a, b, bias=None, kernel=matmul):
    got = kernel(a, b, bias)
    want = matmul_cpu.reference(a, b, bias)
    scale = np.abs(a) @ np.abs(b) + (0 if bias is None else np.abs(bias))
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.all(np.abs(got - want) <= TOLERANCE * scale + 1e-30)


@pytest.mark.parametrize("M, K, N", [
    (1, 1, 1), (1, 768, 5), (7, 13, 5), (3, 256, 32),
    (37, 300, 65),             # edges in every dimension: M % 3, K % 256, N % 32
    (64, 3072, 100),           # long dot products
    (130, 257, 500),
])
def test_matmul_matches_numpy(rng, M, K, N):
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    assert_matmul_matches(a, b)
    assert_matmul_matches(a, b, rng.standard_normal(N, dtype=np.float32))


def test_matmul_on_transposed_and_strided_views(rng):
    a = rng.standard_normal((40, 96), dtype=np.float32)
    wte = rng.standard_normal((1000, 96), dtype=np.float32)
    assert_matmul_matches(a, wte.T)                                 # the tied LM head
    wide = rng.standard_normal((96, 300), dtype=np.float32)
    assert_matmul_matches(a, wide[:, ::3])                          # no unit stride at all
    assert_matmul_matches(a[::2], wide[:, 7:107])                   # strided rows of a


def test_matmul_gpt2_shape(rng):
    a = rng.standard_normal((128, 768), dtype=np.float32)
    b = rng.standard_normal((768, 2304), dtype=np.float32) * np.float32(0.02)
    assert_matmul_matches(a, b, rng.standard_normal(2304, dtype=np.float32))


@settings(max_examples=30, deadline=None)
@given(M=st.integers(1, 70), K=st.integers(1, 300), N=st.integers(1, 100),
       transposed=st.booleans(), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_matches_numpy_on_random_shapes(M, K, N, transposed, with_bias, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((N, K), dtype=np.float32).T if transposed else \
        rng.standard_normal((K, N), dtype=np.float32)
    assert_matmul_matches(a, b, rng.standard_normal(N, dtype=np.float32) if with_bias else None)


def test_matmul_with_one_thread(rng):
    a = rng.standard_normal((50, 70), dtype=np.float32)
    b = rng.standard_normal((70, 800), dtype=np.float32)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_thread = matmul(a, b)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(one_thread, matmul(a, b))


def packed(a, b, bias=None, n_shares=2):
    """matmul_packed through a freshly packed b."""
    return matmul_packed(a, pack_weight(b), b.shape[1], bias, n_shares)


def test_pack_weight_layout(rng):
    """panels[p, k, c] = W[k, 16 p + c]; the last panel's columns past N are zeros."""
    w = rng.standard_normal((5, 40), dtype=np.float32)
    panels = pack_weight(w)
    assert panels.shape == (3, 5, 16) and panels.flags.c_contiguous
    for p in range(3):
        for c in range(16):
            column = 16 * p + c
            expected = w[:, column] if column < 40 else np.zeros(5, np.float32)
            np.testing.assert_array_equal(panels[p, :, c], expected)


@pytest.mark.parametrize("M", [1, 3, 4, 5, 7, 16, 17])
@pytest.mark.parametrize("K, N", [(33, 40), (64, 48), (768, 2304), (3072, 96)])
def test_matmul_packed_matches_numpy(rng, M, K, N):
    """Row groups of 4 and panels of 16 with edges in both (M % 4, N % 16, odd K)."""
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    assert_matmul_matches(a, b, kernel=packed)
    assert_matmul_matches(a, b, rng.standard_normal(N, dtype=np.float32), kernel=packed)


@settings(max_examples=30, deadline=None)
@given(M=st.integers(0, 20), K=st.integers(0, 80), N=st.integers(1, 70),
       n_shares=st.integers(1, 5), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_packed_on_random_shapes(M, K, N, n_shares, with_bias, seed):
    """Any shape, empty ones included, and any number of shares (more shares than panels too)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32) if with_bias else None
    assert_matmul_matches(a, b, bias, kernel=lambda a, b, bias: packed(a, b, bias, n_shares))


def test_matmul_packed_on_a_strided_weight(rng):
    a = rng.standard_normal((6, 96), dtype=np.float32)
    wide = rng.standard_normal((96, 300), dtype=np.float32)
    assert_matmul_matches(a, wide[:, ::3], kernel=packed)                # no unit stride at all
    assert_matmul_matches(a, wide[:, 7:107], rng.standard_normal(100, dtype=np.float32),
                          kernel=packed)


def test_matmul_packed_rejects_what_it_cannot_read(rng):
    panels = pack_weight(rng.standard_normal((64, 40), dtype=np.float32))       # 3 panels
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match=r"x must be \(M, 64\)"):
        matmul_packed(np.ones((2, 63), np.float32), panels, 40, None, 2)
    with pytest.raises(ValueError, match="panels must be"):
        matmul_packed(x, panels.astype(np.float64), 40, None, 2)
    with pytest.raises(ValueError, match="panels must be"):
        matmul_packed(x, panels[:, :, :8], 40, None, 2)
    with pytest.raises(ValueError, match=r"hold 33-48 output columns, got n_out = 64"):
        matmul_packed(x, panels, 64, None, 2)
    with pytest.raises(ValueError, match=r"bias must be \(40,\)"):
        matmul_packed(x, panels, 40, np.ones(1, np.float32), 2)
    with pytest.raises(ValueError, match="n_shares must be at least 1"):
        matmul_packed(x, panels, 40, None, 0)


# ---- matmul_prompt: the 6 x 16 tile ---------------------------------------------------------------
def prompt(a, b, bias=None, n_threads=2):
    """matmul_prompt through a freshly packed b."""
    return matmul_prompt(a, pack_weight(b), b.shape[1], bias, n_threads)


def test_pack_prompt_rows_layout(rng):
    """Slice by slice of k, group by group of six rows: packed[n_groups*6*k0 + g*n_k*6 + k*6 + r]
    = x[6 g + r, k0 + k], zeros past the last row."""
    x = rng.standard_normal((8, 7), dtype=np.float32)             # 2 groups, the second half empty
    packed = pack_prompt_rows(x, 3)                                # slices of k: 0-2, 3-5, 6
    padded = np.zeros((12, 7), np.float32)
    padded[:8] = x
    expected = []
    for k0 in (0, 3, 6):
        n_k = min(3, 7 - k0)
        for g in range(2):
            expected.append(padded[6 * g:6 * g + 6, k0:k0 + n_k].T.reshape(-1))   # (n_k, 6)
    np.testing.assert_array_equal(packed, np.concatenate(expected))


def test_prompt_blocking_keeps_a_block_of_x_within_its_budget():
    assert prompt_blocking(64, 768) == (768, 11)                   # all of x fits: whole depth
    budget = matmul_packed_cpu.X_BLOCK_BYTES
    for n_rows, depth in [(256, 3072), (1024, 768), (5000, 3072), (700, 400)]:
        slice_depth, block_groups = prompt_blocking(n_rows, depth)
        assert slice_depth == min(depth, matmul_packed_cpu.SLICE_DEPTH)
        assert block_groups * slice_depth * matmul_packed_cpu.PROMPT_ROWS * 4 <= budget


@pytest.mark.parametrize("n_groups, block_groups, depth, slice_depth",
                         [(11, 11, 768, 768), (43, 25, 3072, 384), (5, 2, 100, 40), (1, 1, 16, 16)])
@pytest.mark.parametrize("first_panel, end_panel, after", [(0, 4, 8), (4, 6, -1), (3, 4, 9)])
def test_next_slice_is_the_one_the_prompt_loop_runs_next(n_groups, block_groups, depth,
                                                         slice_depth, first_panel, end_panel,
                                                         after):
    """What a tile asks for ahead is what _prompt_panels runs next (the panel after in the
    chunk, the next slice of k, the next block of rows), and the next chunk's first panel
    after the last. (A prefetch is a hint: asking for the wrong rows would only be slow.)"""
    visits = [(p, k0, first_group) for first_group in range(0, n_groups, block_groups)
              for k0 in range(0, depth, slice_depth) for p in range(first_panel, end_panel)]
    following = [(p, k0) for p, k0, _ in visits[1:]] + [(after, 0)]
    for (p, k0, first_group), expected in zip(visits, following):
        assert matmul_packed_cpu._next_slice(p, k0, first_group, first_panel, end_panel,
                                             slice_depth, depth, block_groups, n_groups,
                                             after) == expected


@pytest.mark.parametrize("n_block", [1, 2, 3, 11, 43])
@pytest.mark.parametrize("n_lines", [0, 1, 7, 384, 768])
def test_the_groups_ask_for_every_row_of_the_next_panel_once(n_block, n_lines):
    """The groups after the first share the next panel's rows: each row asked for by exactly
    one of them, none by the first (which streams the current panel), none by a group alone."""
    asked = []
    for group in range(n_block):
        first, count = matmul_packed_cpu._lines_to_ask(group, n_block, n_lines)
        assert count >= 0 and 0 <= first <= n_lines
        assert count == 0 or group > 0
        asked.extend(range(first, first + count))
    assert asked == (list(range(n_lines)) if n_block > 1 else [])


@pytest.mark.parametrize("M", [1, 5, 6, 7, 12, 13, 64, 100])
@pytest.mark.parametrize("K, N", [(33, 40), (64, 48), (768, 2304), (3072, 96)])
def test_matmul_prompt_matches_numpy(rng, M, K, N):
    """Row groups of 6 and panels of 16 with edges in both (M % 6, N % 16, odd K)."""
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    assert_matmul_matches(a, b, kernel=prompt)
    assert_matmul_matches(a, b, rng.standard_normal(N, dtype=np.float32), kernel=prompt)


def test_matmul_prompt_in_slices_and_blocks(rng):
    """x too large to be read whole for every panel: k in slices (out accumulated slice after
    slice, the bias added once), rows in more than one block, a last slice of 16."""
    M, K, N = 700, 400, 40
    slice_depth, block_groups = prompt_blocking(M, K)
    assert slice_depth < K and block_groups * 6 < M                # both paths taken
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    assert_matmul_matches(a, b, rng.standard_normal(N, dtype=np.float32), kernel=prompt)


@settings(max_examples=30, deadline=None)
@given(M=st.integers(0, 40), K=st.integers(0, 80), N=st.integers(1, 70),
       n_threads=st.integers(1, 3), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_prompt_on_random_shapes(M, K, N, n_threads, with_bias, seed):
    """Any shape, empty ones included (K = 0: the bias alone), on 1-3 threads."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32) if with_bias else None
    assert_matmul_matches(a, b, bias, kernel=lambda a, b, bias: prompt(a, b, bias, n_threads))


def test_matmul_prompt_is_the_same_on_any_number_of_threads(rng):
    """Each output is one tile's sum over k in order, whichever thread takes its panel."""
    a = rng.standard_normal((50, 300), dtype=np.float32)
    b = rng.standard_normal((300, 200), dtype=np.float32)
    one = prompt(a, b, n_threads=1)
    np.testing.assert_array_equal(prompt(a, b, n_threads=2), one)
    np.testing.assert_array_equal(prompt(a, b, n_threads=3), one)


def test_matmul_prompt_rejects_what_it_cannot_read(rng):
    panels = pack_weight(rng.standard_normal((64, 40), dtype=np.float32))
    with pytest.raises(ValueError, match=r"x must be \(M, 64\)"):
        matmul_prompt(np.ones((20, 63), np.float32), panels, 40, None, 2)
    with pytest.raises(ValueError, match=r"hold 33-48 output columns, got n_out = 64"):
        matmul_prompt(np.ones((20, 64), np.float32), panels, 64, None, 2)


# ---- matmul_prompt_avx512: the 6 x 64 tile of 16-float vectors ----------------------------------
# (On a CPU without AVX-512 LLVM runs each 16-float vector as two of 8: the same results.)
def prompt_avx512(a, b, bias=None, n_threads=2):
    """matmul_prompt_avx512 through a freshly packed b."""
    return avx512.matmul_prompt_avx512(a, pack_weight(b), b.shape[1], bias, n_threads)


def assert_same_bits_as_the_avx2_tile(a, b, bias=None, n_threads=2):
    """Both tiles run the same fused multiply-adds in the same order: identical bits, and
    (through that) within the tolerance of x @ W."""
    got = prompt_avx512(a, b, bias, n_threads)
    np.testing.assert_array_equal(got, prompt(a, b, bias, n_threads))
    assert_matmul_matches(a, b, bias, kernel=lambda a, b, bias: got)


@pytest.mark.parametrize("M", [1, 5, 6, 7, 13, 64, 100])
@pytest.mark.parametrize("K, N", [(33, 40), (64, 80), (100, 1000), (768, 2304), (3072, 96)])
def test_matmul_prompt_avx512_gives_the_avx2_tiles_bits(rng, M, K, N):
    """Row groups of 6 and tiles of 64 columns with edges in both: N = 40, 80, 1000, 96 leave a
    last tile of 3, 1, 3 and 2 real panels (its missing ones read and dropped)."""
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    assert_same_bits_as_the_avx2_tile(a, b)
    assert_same_bits_as_the_avx2_tile(a, b, rng.standard_normal(N, dtype=np.float32))


def test_matmul_prompt_avx512_in_slices_and_blocks(rng):
    """x too large to be read whole for every tile: k in slices, rows in more than one block,
    a last slice shorter than the others, a last tile of 3 panels."""
    M, K, N = 700, 400, 200
    slice_depth, block_groups = prompt_blocking(M, K)
    assert slice_depth < K and K % slice_depth and block_groups * 6 < M     # every path taken
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    assert_same_bits_as_the_avx2_tile(a, b, rng.standard_normal(N, dtype=np.float32))


@settings(max_examples=30, deadline=None)
@given(M=st.integers(0, 40), K=st.integers(0, 80), N=st.integers(1, 200),
       n_threads=st.integers(1, 3), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_prompt_avx512_on_random_shapes(M, K, N, n_threads, with_bias, seed):
    """Any shape, empty ones included (K = 0: the bias alone), on 1-3 threads."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32) if with_bias else None
    assert_same_bits_as_the_avx2_tile(a, b, bias, n_threads)


def test_matmul_prompt_avx512_is_the_same_on_any_number_of_threads(rng):
    a = rng.standard_normal((50, 300), dtype=np.float32)
    b = rng.standard_normal((300, 520), dtype=np.float32)
    one = prompt_avx512(a, b, n_threads=1)
    np.testing.assert_array_equal(prompt_avx512(a, b, n_threads=2), one)
    np.testing.assert_array_equal(prompt_avx512(a, b, n_threads=3), one)


def test_matmul_prompt_avx512_rejects_what_it_cannot_read(rng):
    panels = pack_weight(rng.standard_normal((64, 40), dtype=np.float32))
    with pytest.raises(ValueError, match=r"x must be \(M, 64\)"):
        avx512.matmul_prompt_avx512(np.ones((20, 63), np.float32), panels, 40, None, 2)
    with pytest.raises(ValueError, match=r"hold 33-48 output columns, got n_out = 64"):
        avx512.matmul_prompt_avx512(np.ones((20, 64), np.float32), panels, 64, None, 2)
    with pytest.raises(ValueError, match="panels must be pack_weight's"):
        avx512.matmul_prompt_avx512(np.ones((20, 64), np.float32), panels[:, :, :8], 40, None, 2)
    with pytest.raises(ValueError, match="n_shares must be at least 1"):
        avx512.matmul_prompt_avx512(np.ones((20, 64), np.float32), panels, 40, None, 0)


@pytest.mark.parametrize("n_panels", [4, 7, 5, 1])
def test_a_tile_past_the_last_panel_rereads_its_first(n_panels):
    """A tile's four panel starts at slice k0: consecutive panels while they exist, then the
    tile's first again (never past the weight's end)."""
    depth, k0 = 100, 30
    for first_panel in range(0, n_panels, avx512.TILE_PANELS):
        n_real = min(avx512.TILE_PANELS, n_panels - first_panel)
        starts = avx512._tile_starts(first_panel, n_real, k0, depth)
        panel_of = [(start - k0 * 16) // (depth * 16) for start in starts]
        assert panel_of == [first_panel + min(q, n_real - 1) for q in range(4)]
        assert max(starts) + (depth - k0) * 16 <= n_panels * depth * 16


@pytest.mark.parametrize("n_groups, block_groups, depth, slice_depth",
                         [(11, 11, 768, 768), (43, 25, 3072, 384), (5, 2, 100, 40), (1, 1, 16, 16)])
def test_what_a_wide_tile_asks_for_is_what_runs_next(n_groups, block_groups, depth, slice_depth):
    """The next slice of k, the next block of rows' first slice, then the next ticket's tile."""
    tile, after = 3, 7
    visits = [(k0, first_group) for first_group in range(0, n_groups, block_groups)
              for k0 in range(0, depth, slice_depth)]
    following = [(tile, k0) for k0, _ in visits[1:]] + [(after, 0)]
    for (k0, first_group), expected in zip(visits, following):
        assert avx512._next_work(k0, first_group, slice_depth, depth, block_groups, n_groups,
                                 tile, after) == expected


# ---- matmul_by_rows: x @ W^T with W as its rows (batched decoding's LM head) --------------------
def by_rows(a, b, bias=None, n_threads=2):
    """matmul_by_rows on b's transpose as its rows, the layout of wte."""
    return matmul_by_rows(a, np.ascontiguousarray(b.T), bias, n_threads)


@pytest.mark.parametrize("M", [1, 2, 6, 9, 16])
@pytest.mark.parametrize("K, N", [(1, 6), (33, 7), (64, 12), (100, 131), (768, 1000)])
def test_matmul_by_rows_matches_numpy(rng, M, K, N):
    """Groups of six rows of W with edges (N % 6: the last group overlaps the one before),
    1-16 rows of x in a 16-column panel."""
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    assert_matmul_matches(a, b, kernel=by_rows)
    assert_matmul_matches(a, b, rng.standard_normal(N, dtype=np.float32), kernel=by_rows)


@settings(max_examples=30, deadline=None)
@given(M=st.integers(1, 16), K=st.integers(0, 80), N=st.integers(1, 70),
       n_threads=st.integers(1, 3), with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_by_rows_on_random_shapes(M, K, N, n_threads, with_bias, seed):
    """Any shape it takes, N below one group of six and K = 0 included, on 1-3 threads."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32) if with_bias else None
    assert_matmul_matches(a, b, bias, kernel=lambda a, b, bias: by_rows(a, b, bias, n_threads))


def test_matmul_by_rows_is_the_same_on_any_number_of_threads(rng):
    """Each output is one sum over k in order, whichever thread takes its rows of W."""
    a = rng.standard_normal((16, 200), dtype=np.float32)
    b = rng.standard_normal((200, 5000), dtype=np.float32)
    one = by_rows(a, b, n_threads=1)
    np.testing.assert_array_equal(by_rows(a, b, n_threads=2), one)
    np.testing.assert_array_equal(by_rows(a, b, n_threads=3), one)


def test_matmul_by_rows_rejects_what_it_cannot_read(rng):
    rows = rng.standard_normal((40, 64), dtype=np.float32)
    with pytest.raises(ValueError, match=r"x must be \(M, 64\) with 1 <= M <= 16"):
        matmul_by_rows(np.ones((17, 64), np.float32), rows, None, 2)
    with pytest.raises(ValueError, match=r"x must be \(M, 64\)"):
        matmul_by_rows(np.ones((2, 63), np.float32), rows, None, 2)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        matmul_by_rows(np.ones((2, 40), np.float32), rows.T, None, 2)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        matmul_by_rows(np.ones((2, 64), np.float32), rows.astype(np.float64), None, 2)
    with pytest.raises(ValueError, match=r"bias must be \(40,\)"):
        matmul_by_rows(np.ones((2, 64), np.float32), rows, np.ones(3, np.float32), 2)


# ---- matmul_prompt_quantized: float16 / int8 W^T, panels widened in the kernel -------------------
QUANTIZED = [("float16", None), ("int8", None), ("int8", 32)]      # int8: a scale per row / per 32


def assert_quantized_prompt_matches(x, weight_t, dtype, block, bias=None, n_threads=2):
    """Against x @ dequantize(W^T)^T + bias in float64, within 1e-6 of sum_k |x_k w_k|: the
    weights' rounding is the quantisation's, the kernel's only float32's."""
    quantized = quantize(weight_t, dtype, block)
    got = matmul_prompt_quantized(x, quantized, bias, n_threads)
    w = quantized.dequantize().T.astype(np.float64)                    # (K, N)
    want = x.astype(np.float64) @ w + (0 if bias is None else bias)
    scale = np.abs(x) @ np.abs(w) + (0 if bias is None else np.abs(bias))
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.all(np.abs(got - want) <= 1e-6 * scale + 1e-30)


@pytest.mark.parametrize("dtype, block", QUANTIZED)
@pytest.mark.parametrize("M, K, N", [(1, 32, 16), (7, 64, 40), (64, 768, 2304), (100, 3072, 96),
                                     (700, 512, 40)])      # the last: k in slices, rows in blocks
def test_matmul_prompt_quantized_matches_float64(rng, dtype, block, M, K, N):
    x = rng.standard_normal((M, K), dtype=np.float32)
    weight_t = rng.standard_normal((N, K), dtype=np.float32)
    assert_quantized_prompt_matches(x, weight_t, dtype, block, rng.standard_normal(N, dtype=np.float32))


@settings(max_examples=20, deadline=None)
@given(M=st.integers(0, 30), K=st.sampled_from([0, 32, 64, 96]), N=st.integers(1, 50),
       kind=st.sampled_from(QUANTIZED), n_threads=st.integers(1, 3), with_bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_matmul_prompt_quantized_on_random_shapes(M, K, N, kind, n_threads, with_bias, seed):
    rng = np.random.default_rng(seed)
    dtype, block = kind
    if K == 0 and dtype == "int8":          # quantize() makes no int8 matrix without columns
        K = 32
    x = rng.standard_normal((M, K), dtype=np.float32)
    weight_t = rng.standard_normal((N, K), dtype=np.float32)
    bias = rng.standard_normal(N, dtype=np.float32) if with_bias else None
    assert_quantized_prompt_matches(x, weight_t, dtype, block, bias, n_threads)


def test_matmul_prompt_quantized_rejects_what_it_cannot_read(rng):
    weight = quantize(rng.standard_normal((40, 64), dtype=np.float32), "int8")     # W^T (40, 64)
    x = np.ones((20, 64), np.float32)
    with pytest.raises(ValueError, match=r"x must be \(M, 64\) for this weight"):
        matmul_prompt_quantized(np.ones((20, 63), np.float32), weight, None, 2)
    with pytest.raises(ValueError, match=r"bias must be \(40,\)"):
        matmul_prompt_quantized(x, weight, np.ones(3, np.float32), 2)
    with pytest.raises(ValueError, match="n_threads must be at least 1"):
        matmul_prompt_quantized(x, weight, None, 0)


def test_matmul_empty_and_bad_shapes(rng):
    assert matmul(np.ones((0, 4), np.float32), np.ones((4, 3), np.float32)).shape == (0, 3)
    np.testing.assert_array_equal(matmul(np.ones((2, 0), np.float32), np.ones((0, 3), np.float32),
                                         np.arange(3, dtype=np.float32)), [[0, 1, 2], [0, 1, 2]])
    with pytest.raises(ValueError, match="matmul"):
        matmul(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32))


def test_linear_keeps_leading_axes(rng):
    x = rng.standard_normal((2, 5, 24), dtype=np.float32)
    w = rng.standard_normal((24, 40), dtype=np.float32)
    bias = rng.standard_normal(40, dtype=np.float32)
    got = matmul_cpu.linear(x, w, bias)
    assert got.shape == (2, 5, 40)
    np.testing.assert_allclose(got, x @ w + bias, atol=1e-5)


@pytest.mark.parametrize("n_cols, n_workers",
                         [(1, 2), (31, 2), (768, 2), (2304, 2), (50257, 2), (50257, 3), (100, 8)])
def test_matmul_column_blocks_share_the_work_evenly(n_cols, n_workers):
    """Blocks are whole register panels, fit the cache budget, and no worker gets more than
    its fair share of columns plus one panel's rounding per block."""
    width = matmul_cpu._block_cols(n_cols, n_workers)
    n_blocks = -(-n_cols // width)
    busiest = -(-n_blocks // n_workers)                  # blocks dealt round-robin
    assert width % matmul_cpu.NR == 0 and width <= matmul_cpu.NC_MAX
    assert busiest * width <= -(-n_cols // n_workers) + busiest * matmul_cpu.NR
