"""Fused causal attention on an NVIDIA GPU, FlashAttention-style, with numba.cuda.

    out = softmax(Q K^T / sqrt(d) + M) V      q: (B, H, Tq, d), k, v: (B, H, Tk, d) -> (B, H, Tq, d)

Reference: `minillm.model.attention.causal_attention` (here `reference`); tests/test_kernels_cuda.py
compares the two, on the GPU when there is one and in numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1) when not.
Same conventions as the CPU kernel (kernels/attention_cpu.py): the queries are the last Tq of
the Tk positions, key_valid (B, Tk) masks padding keys, and a query with no visible key gets 0.

One block per (query tile, head, batch); one thread per query of the tile (BLOCK_Q threads).
Each thread keeps its query row, its output accumulator and its online-softmax statistics
(running max m, running sum l) in registers / local memory. The block walks the keys in tiles
of BLOCK_K: all its threads copy the tile's keys and values from global into shared memory
together (consecutive threads read consecutive addresses, so the loads coalesce), wait at a
barrier, and then each thread scores its query against every key of the tile, masks, takes the
tile's max, rescales l and acc by exp(m_old - m_new) and adds exp(score - m_new) * v. Keys past
the last query of the block are never loaded. out = acc / l at the end.

Memory: shared 2 BLOCK_K x MAX_HEAD_DIM floats per block (32 KiB), per thread 2 MAX_HEAD_DIM +
BLOCK_K floats: O(T d) in all, no T x T score matrix.

For decoding (Tq = 1) this launches one block per (batch, head) with a single busy thread:
correct, but a real GPU wants the key axis split over blocks too (flash-decoding) to fill it.
"""
from __future__ import annotations

import math

from numba import cuda, float32

from minillm.model.attention import causal_attention as reference  # noqa: F401  what the kernel computes

BLOCK_Q = 32            # queries per block = threads per block
BLOCK_K = 32            # keys per shared-memory tile
MAX_HEAD_DIM = 128      # shared and local arrays need compile-time sizes; GPT-2 uses 64
NEG_INF = float32(-math.inf)


@cuda.jit
def flash_attention_kernel(q, k, v, key_valid, out):
    """Launch with grid (ceil(Tq / BLOCK_Q), H, B) and BLOCK_Q threads (see `launch_attention`)."""
    k_tile = cuda.shared.array((BLOCK_K, MAX_HEAD_DIM), float32)
    v_tile = cuda.shared.array((BLOCK_K, MAX_HEAD_DIM), float32)
    key_bias = cuda.shared.array(BLOCK_K, float32)          # 0, or -inf for a padding key
    q_row = cuda.local.array(MAX_HEAD_DIM, float32)
    acc = cuda.local.array(MAX_HEAD_DIM, float32)
    scores = cuda.local.array(BLOCK_K, float32)

    b, h = cuda.blockIdx.z, cuda.blockIdx.y
    q0 = cuda.blockIdx.x * BLOCK_Q
    thread = cuda.threadIdx.x
    n_queries, head_dim = q.shape[2], q.shape[3]
    n_keys = k.shape[2]
    query = q0 + thread
    active = query < n_queries                  # threads past the last query still load tiles
    query_pos = n_keys - n_queries + query      # absolute position: the keys it may see
    scale = float32(1.0 / math.sqrt(head_dim))
    for t in range(head_dim):
        q_row[t] = q[b, h, query, t] * scale if active else float32(0.0)
        acc[t] = float32(0.0)
    row_max = NEG_INF
    row_sum = float32(0.0)

    # The block's last query sees keys [0, keys_seen); later tiles are never loaded.
    keys_seen = n_keys - n_queries + min(q0 + BLOCK_Q, n_queries)
    for k0 in range(0, keys_seen, BLOCK_K):
        n_tile = min(BLOCK_K, keys_seen - k0)
        for index in range(thread, n_tile * head_dim, BLOCK_Q):     # cooperative, coalesced
            j, t = index // head_dim, index % head_dim
            k_tile[j, t] = k[b, h, k0 + j, t]
            v_tile[j, t] = v[b, h, k0 + j, t]
        for j in range(thread, n_tile, BLOCK_Q):
            key_bias[j] = float32(0.0) if key_valid[b, k0 + j] else NEG_INF
        cuda.syncthreads()                      # the tile is in shared memory

        if active:
            tile_max = NEG_INF
            for j in range(n_tile):
                s = float32(0.0)
                for t in range(head_dim):
                    s += q_row[t] * k_tile[j, t]
                s = s + key_bias[j] if k0 + j <= query_pos else NEG_INF
                scores[j] = s
                tile_max = max(tile_max, s)
            new_max = max(row_max, tile_max)
            if new_max > NEG_INF:               # else every key so far is masked: nothing to add
                correction = math.exp(row_max - new_max)
                row_sum *= correction
                for t in range(head_dim):
                    acc[t] *= correction
                for j in range(n_tile):
                    p = math.exp(scores[j] - new_max)
                    row_sum += p
                    for t in range(head_dim):
                        acc[t] += p * v_tile[j, t]
                row_max = new_max
        cuda.syncthreads()                      # done with the tile before it is overwritten

    if active:
        inv_sum = float32(1.0) / row_sum if row_sum > float32(0.0) else float32(0.0)
        for t in range(head_dim):
            out[b, h, query, t] = acc[t] * inv_sum


def launch_attention(q, k, v, key_valid, out) -> None:
    """Run `flash_attention_kernel` over all of out (device arrays)."""
    n_batch, n_heads, n_queries, head_dim = q.shape
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {head_dim} exceeds the kernel's MAX_HEAD_DIM ({MAX_HEAD_DIM})")
    grid = (math.ceil(n_queries / BLOCK_Q), n_heads, n_batch)
    flash_attention_kernel[grid, BLOCK_Q](q, k, v, key_valid, out)
