"""The "numba" and "cuda" backends: the model's heavy operations on the kernels of this package.

Both implement `minillm.model.backends.Backend` (its docstrings give every shape). NumbaBackend
brings fused `layer_norm` and `gelu` (minillm.kernels.fused_cpu); CudaBackend keeps those two on
the host. Measured speeds are in benchmarks/README.md.
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np

from minillm.kernels.compile_notice import announce_compilation

from minillm.model import layers
from minillm.model.loss import loss_rows
from minillm.model.quantize import QuantizedMatrix


# The kernels a forward pass runs (importing attention_cpu compiles its eagerly typed ones).
_KERNELS_DIR = Path(__file__).resolve().parent
INFERENCE_KERNELS = {_KERNELS_DIR / "attention_cpu.py": None, _KERNELS_DIR / "attention_decode_cpu.py": None,
                     _KERNELS_DIR / "decode_step_cpu.py": None,
                     _KERNELS_DIR / "fused_cpu.py": ("_gelu_flat", "_layer_norm_rows"),
                     _KERNELS_DIR / "matvec_cpu.py": None, _KERNELS_DIR / "matmul_packed_cpu.py": None,
                     _KERNELS_DIR / "matmul_prompt_avx512.py": None}

# Calls over at least this many token positions (batch x queries) run on the worker pool: below
# it OpenBLAS's own threads split a matmul better; the crossover measured on 2 cores lies
# between T = 256 and T = 512 (benchmarks/README.md).
POOL_MIN_ROWS = 384

# Quantised weights: calls over at most this many token positions (decoding, also batched) run
# the matrix-vector kernels, which widen each weight once for all the rows; prompts up to
# POOL_MIN_ROWS the prompt kernel, which widens a panel at a time (matmul_packed_cpu); longer
# ones widen a tile of the weights at a time and multiply it with BLAS on the pool.
MATVEC_MAX_ROWS = 16
# Float32 weights, batched decoding (one new token for each of 2..16 sequences): a 4 x 16
# register-tile kernel on copies of the weights packed once (minillm.kernels.matmul_packed_cpu)
# reads each weight once for all the sequences, where OpenBLAS's sgemm packs the whole weight
# again on every such call (benchmarks/README.md has the tokens/s).
BATCHED_DECODE_MAX = MATVEC_MAX_ROWS
# Float32 prompts (more than one position per sequence) from this many rows up to
# POOL_MIN_ROWS: the 6 x 16 prompt tile on the same packed copies. OpenBLAS's sgemm, packing
# the whole weight on every call, took 74-76 ms for a whole prefill of 6-16 tokens, the tile
# 37-46 (the model's logits agree to 8e-5).
PROMPT_MIN_ROWS = 2
# Batched decoding (one length, no mask) runs as one whole-step kernel call (decode_step_cpu)
# for up to this many sequences; more go operation by operation. GPT-2 124M, two threads,
# tokens/s against operation by operation (Intel Xeons with AVX-512): float32, on the panels
# below, 1.30x / 1.29x / 1.12x / 1.09x / 1.05x at 2 / 4 / 8 / 12 / 16 sequences; float16
# 1.49x / 1.43x / 1.08x / 1.21x at 2 / 4 / 8 / 16; int8 1.75x / 1.42x / 1.37x / 1.44x.
WHOLE_STEP_MAX_SEQUENCES = {"float32": 16, "float16": 16, "int8": 16}
# Float32 steps of at least this many sequences, on a CPU with AVX-512: the whole step's
# block products read the packed copies (the ones prompts and operation by operation use)
# instead of W under the column kernel: one sequence a panel at a time, one stream of memory
# (1.19x the tokens/s, with the LM head's one-row dot products, on an AMD Zen 5; the 6 x 64
# tile at one sequence had been 1.02x); batches under the 6 x 64 tile: 1.05x /
# 1.16x / 1.16x / 1.23x / 1.6x / 1.3x at 2 / 3 / 4 / 8 / 12 / 16 sequences (the column kernel
# loads and stores its partial sums for every sequence at every pass; the tile keeps them in
# registers).
WHOLE_STEP_PANELS_MIN_SEQUENCES = 1
# Prompts' float32 register tile: 6 x 16 in AVX2 vectors (matmul_packed_cpu.matmul_prompt) or
# 6 x 64 in AVX-512 vectors (matmul_prompt_avx512); "auto": AVX-512 where the CPU has it
PROMPT_TILES = ("auto", "avx2", "avx512")
# Elements of a weight compared at every use of a copy derived from it (_fingerprint)
FINGERPRINT_SIZE = 16
# Whose threads ran the last linear layer, and so are awake (spinning) on the cores now
ON_OPENBLAS, ON_NUMBA, ON_POOL = "OpenBLAS", "numba", "pool"
# Output rows per widened tile: 256 x 3072 float32 = 3 MiB at most, per thread, reused.
WIDEN_TILE_ROWS = 256


class NumbaBackend:
    """CPU kernels compiled by numba: fused FlashAttention-style attention, and BLAS matmul.

    attention: always the fused kernel (minillm.kernels.attention_cpu); it needs O(T d) memory
    where the NumPy reference needs O(T^2).

    linear: NumPy's BLAS by default. The numba matmul (minillm.kernels.matmul_cpu) is a
    teaching kernel that stays below BLAS on every shape the model uses, and far below it for
    decoding (T = 1), where BLAS runs a matrix-vector product while the kernel packs the whole
    weight for one row. `NumbaBackend(matmul="numba")` runs the model on it anyway, e.g. to
    test it end to end.

    layer_norm, gelu: one loop each (minillm.kernels.fused_cpu) instead of NumPy's chain of
    temporaries.

    Threads. A call over at least `pool_min_rows` token positions (a long prompt) runs on one
    pool of `threads` workers (minillm.kernels.workers): each matmul as row blocks, one
    single-threaded BLAS call per worker, and each kernel as per-worker shares. OpenBLAS's own
    threads and numba's would otherwise take turns with the cores, and an idle OpenBLAS worker
    spins for a while after every call, slowing a parallel kernel that runs next to it.
    Prompts of 2 (PROMPT_MIN_ROWS) to `pool_min_rows` rows (token positions, all sequences
    together), with float32 weights, run on numba's threads alone (`prompt_kernel=True`, the
    default): their products on the 6 x 16 register tile of minillm.kernels.matmul_packed_cpu
    (`matmul_prompt`) over copies of the block weights packed once into 16-column panels (on a
    CPU with AVX-512, the same panels under the 6 x 64 tile of 16-float vectors of
    minillm.kernels.matmul_prompt_avx512, the same sums bit for bit; `prompt_tile` chooses), and
    LayerNorm, GELU, attention and the last position's LM head (wte's rows as they are, the
    matrix-vector kernel) on all of numba's threads, so that OpenBLAS never wakes. One row
    (decoding one sequence step by step) runs its matmuls on OpenBLAS's threads and every
    kernel on the calling thread alone. float16 and int8 weights take the same route for
    prompts of 17 rows up to `pool_min_rows` (up to 16 rows, the matrix-vector kernels), their
    panels widened inside the prompt kernel (`matmul_prompt_quantized`); from `pool_min_rows`
    rows on they are widened a tile at a time for single-threaded BLAS on the pool. Batched decoding and quantised
    weights run their matmuls on numba's threads (minillm.kernels.matmul_packed_cpu and
    matvec_cpu), and then decode attention shares its heads among numba's threads too.
    `_products_on` records whose threads ran the last product (and are awake), which the
    kernels after it follow.

    Decoding. With `whole_step=True` (the default) the model hands each step of one sequence,
    or of a batch of sequences of one length (one new token each, no attention_mask), to
    `decode_step`: the whole forward pass as one call of minillm.kernels.decode_step_cpu,
    whose threads start once per step and meet at barriers, on the weights as the model holds
    them (float32, float16, or int8 with one scale per row), no copy made, except float32 on
    a CPU with AVX-512 (WHOLE_STEP_PANELS_MIN_SEQUENCES), which reads the packed copies
    described below: the ones a prompt of 2 to `pool_min_rows` rows has made already, else
    made at the first step (340 MB for GPT-2 124M, +68%; prompt_tile="avx2" keeps to W); a
    weight replaced by another array is noticed at the next step. Batches of more than
    WHOLE_STEP_MAX_SEQUENCES[dtype] sequences (or `whole_step_max_sequences`), prompts, a mask,
    hidden states, blocked int8 scales, whole_step=False or matmul="numba" run the layers one
    operation at a time, as below.

    Layout for decoding, operation by operation. One row times a weight (in, out) with
    out < in -- the MLP's down-projection, (3072, 768) -- reads the weight in strips of only
    `out` floats, which OpenBLAS's gemv streams more slowly than the other shapes. With
    `decode_copies=True` (the default) such a weight is used through a contiguous copy of its
    transpose, so that each output is one dot product along a contiguous row. The price is
    memory: one more copy of those weights (113 MB for GPT-2 124M, +23%), made on first use
    and kept while the backend lives. Batched decoding operation by operation (one token for each of up to BATCHED_DECODE_MAX
    sequences, where the whole step does not take them) uses
    copies of every block weight packed into 16-column panels (340 MB for GPT-2 124M, +68%)
    with the register-tile kernel of minillm.kernels.matmul_packed_cpu, which reads each
    weight once for all the sequences (on a CPU with AVX-512, from
    matmul_prompt_avx512.BATCH_MIN_ROWS sequences on, the AVX-512 prompt tile instead); its LM head reads wte's rows as they are, with the
    matrix-vector kernel for a few sequences and from ROWS_TILE_MIN_ROWS on with the prompt
    tile run over wte's rows (`matmul_by_rows`). Prompts of 2 to `pool_min_rows` rows use the same packed copies
    (`prompt_kernel=False` keeps them on OpenBLAS without copies). A backend that has decoded
    both one sequence operation by operation and several sequences (or a prompt) holds both
    kinds of copy (453 MB for 124M, +91%). A copy is made again when its weight was changed in
    place (a fingerprint of 16 of its elements is checked at every use, which an optimiser's
    step or a scaled matrix changes); after editing only a few elements, call `clear()`.
    """

    name = "numba"

    def __init__(self, matmul: str = "blas", decode_copies: bool = True,
                 threads: int | None = None, pool_min_rows: int = POOL_MIN_ROWS,
                 whole_step: bool = True, prompt_kernel: bool = True,
                 prompt_tile: str = "auto",
                 whole_step_max_sequences: int | None = None):
        if matmul not in ("blas", "numba"):
            raise ValueError(f"matmul must be 'blas' or 'numba', got {matmul!r}")
        if prompt_tile not in PROMPT_TILES:
            raise ValueError(f"prompt_tile must be one of {', '.join(map(repr, PROMPT_TILES))}, "
                             f"got {prompt_tile!r}")
        # Imported here: compiling (or loading from numba's cache) happens on first use.
        announce_compilation("model kernels", INFERENCE_KERNELS)
        from minillm.kernels import (attention_backward_cpu, attention_cpu, decode_step_cpu,
                                     fused_cpu, matmul_cpu, matmul_packed_cpu,
                                     matmul_prompt_avx512, matvec_cpu, step_weights)
        from minillm.kernels.buffers import OutputBuffers
        from minillm.kernels.workers import WorkerPool

        self.matmul = matmul
        self.decode_copies = decode_copies and matmul == "blas"
        # matmul="numba" exists to run the model on the teaching matmul: keep every step on it
        self.whole_step = whole_step and matmul == "blas"
        self.whole_step_max_sequences = whole_step_max_sequences
        self.pool = WorkerPool(threads)          # threads=None: numba's thread count
        self.pool_min_rows = pool_min_rows
        self.prompt_kernel = prompt_kernel and matmul == "blas"
        self._attention = attention_cpu.flash_attention
        self._attention_backward = attention_backward_cpu
        self._numba_linear = matmul_cpu.linear
        self._layer_norm = fused_cpu.layer_norm
        self._gelu = fused_cpu.gelu
        self._fused = fused_cpu
        self._matvec = matvec_cpu
        self._matmul_packed = matmul_packed_cpu
        self._prompt_avx512 = matmul_prompt_avx512
        if prompt_tile == "auto":
            prompt_tile = "avx512" if matmul_prompt_avx512.HOST_HAS_AVX512 else "avx2"
        self.prompt_tile = prompt_tile
        self._matmul_prompt = (self._prompt_avx512.matmul_prompt_avx512 if prompt_tile == "avx512"
                               else matmul_packed_cpu.matmul_prompt)
        self._decode_step, self._step_weights_module = decode_step_cpu, step_weights
        # (key of the arrays, StepWeights or None if the kernel cannot take them), last used
        self._step_weights: tuple | None = None
        self._step_lock = threading.Lock()
        self._transposed: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._packed: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._tiles: dict[int, list[np.ndarray]] = {}       # row length -> one tile per thread
        self._products_on = ON_OPENBLAS         # whose threads ran the last linear (awake now)
        # Prompts' big outputs (products on the pool, GELU, LayerNorm) go into buffers used
        # again once free, not fresh pages (minillm.kernels.buffers says why)
        self._outputs = OutputBuffers()

    def _pool_for(self, n_rows: int):
        """The pool for a call over n_rows token positions, or None: the calling thread alone."""
        return self.pool if n_rows >= self.pool_min_rows else None

    def _is_prompt(self, n_rows: int) -> bool:
        """Does a call over n_rows token positions run as a prompt on numba's threads (the 6 x 16
        tile for float32 products, every kernel on all of numba's threads)?"""
        return self.prompt_kernel and PROMPT_MIN_ROWS <= n_rows < self.pool_min_rows

    def _numba_threads(self, n_rows: int) -> int:
        """How many of numba's threads a kernel off the pool takes: all of them within a prompt
        whose products ran on numba's threads, which are awake and own the cores; else 1 (the
        calling thread): next to idle threads of OpenBLAS or of the pool, still spinning after
        their last call, numba's would share a core with them."""
        if self._products_on == ON_NUMBA and self._is_prompt(n_rows):
            return self.pool.n_threads
        return 1

    def linear(self, x: np.ndarray, weight: np.ndarray,
               bias: np.ndarray | None = None) -> np.ndarray:
        """(..., in) @ (in, out) + (out,) -> (..., out)"""
        if isinstance(weight, QuantizedMatrix):
            return self._quantized_linear(x, weight, bias)
        n_in, n_out = weight.shape
        if self.matmul == "numba":
            self._products_on = ON_NUMBA
            return self._numba_linear(x, weight, bias)
        rows = x.reshape(-1, n_in)                                            # (M, in)
        n_rows = rows.shape[0]
        by_output_row = weight.T.flags.c_contiguous     # the LM head's wte.T: wte's rows as they are
        threads = self.pool.n_threads
        if self.decode_copies and _is_batched_decoding(x, n_in):
            self._products_on = ON_NUMBA
            rows = np.ascontiguousarray(rows, np.float32)                     # (B, in)
            if by_output_row and n_rows >= self._matmul_packed.ROWS_TILE_MIN_ROWS:
                out = self._matmul_packed.matmul_by_rows(rows, weight.T, bias, threads)  # (B, out)
            elif by_output_row:
                out = self._matvec.matvec(weight.T, rows, bias, threads)       # (B, out)
            elif self.prompt_tile == "avx512" and n_rows >= self._prompt_avx512.BATCH_MIN_ROWS:
                out = self._matmul_prompt(rows, self._packed_copy(weight), n_out, bias,
                                          threads)                             # (B, out)
            else:
                out = self._matmul_packed.matmul_packed(rows, self._packed_copy(weight), n_out,
                                                        bias, threads)         # (B, out)
            return out.reshape(*x.shape[:-1], n_out)                          # (B, 1, out)
        if self._is_prompt(n_rows) and weight.flags.c_contiguous:
            self._products_on = ON_NUMBA
            out = self._matmul_prompt(rows, self._packed_copy(weight), n_out, bias,
                                      threads)                                # (M, out)
            return out.reshape(*x.shape[:-1], n_out)
        if n_rows == 1 and by_output_row and self._products_on == ON_NUMBA:
            # the LM head of a prompt whose products ran on numba's threads: stay on them
            out = self._matvec.matvec(weight.T, np.ascontiguousarray(rows, np.float32), bias,
                                      threads)                                # (1, out)
            return out.reshape(*x.shape[:-1], n_out)
        if self.decode_copies and n_out < n_in and n_rows == 1:        # one row, narrowing
            self._products_on = ON_OPENBLAS
            out = self._transposed_copy(weight) @ x.reshape(n_in)      # (out,)
            if bias is not None:
                out += bias
            return out.reshape(*x.shape[:-1], n_out)
        if self._pool_for(n_rows) is None:
            self._products_on = ON_OPENBLAS
            return layers.linear(x, weight, bias)                      # OpenBLAS's threads
        self._products_on = ON_POOL
        out = self._outputs.empty((n_rows, n_out))                     # (M, out)
        blocks = self.pool.split(n_rows)

        def row_block(i):
            start, stop = blocks[i]
            np.matmul(rows[start:stop], weight, out=out[start:stop])
            if bias is not None:
                out[start:stop] += bias

        self.pool.run(row_block, len(blocks))
        return out.reshape(*x.shape[:-1], n_out)

    def _quantized_linear(self, x: np.ndarray, weight: QuantizedMatrix,
                          bias: np.ndarray | None) -> np.ndarray:
        """(..., in) @ W + (out,) -> (..., out), W held as W^T (out, in) in float16 or int8."""
        n_out, n_in = weight.shape
        rows = np.ascontiguousarray(x.reshape(-1, n_in), np.float32)     # (M, in)
        if rows.shape[0] <= MATVEC_MAX_ROWS:
            self._products_on = ON_NUMBA
            out = self._matvec.matvec(weight, rows, bias, self.pool.n_threads)  # (M, out)
        elif self._is_prompt(rows.shape[0]):
            self._products_on = ON_NUMBA
            out = self._matmul_packed.matmul_prompt_quantized(rows, weight, bias,
                                                              self.pool.n_threads)  # (M, out)
        else:
            self._products_on = ON_POOL
            out = self._widened_tiles_matmul(rows, weight, bias)           # (M, out)
        return out.reshape(*x.shape[:-1], n_out)

    def _widened_tiles_matmul(self, rows: np.ndarray, weight: QuantizedMatrix,
                              bias: np.ndarray | None) -> np.ndarray:
        """rows (M, in) @ W: W^T widened to float32 one tile of output rows at a time, each
        tile multiplied by single-threaded BLAS on the pool (so only a few MiB of float32
        weights exist at once)."""
        n_out, n_in = weight.shape
        out = self._outputs.empty((rows.shape[0], n_out))                  # (M, out)
        starts = range(0, n_out, WIDEN_TILE_ROWS)
        tiles = self._tile_buffers(n_in)

        def tile(i):
            start = starts[i]
            stop = min(start + WIDEN_TILE_ROWS, n_out)
            widened = tiles[i % len(tiles)][: stop - start]                 # (tile, in)
            self._matvec.widen_rows(weight, start, stop, widened)
            np.matmul(rows, widened.T, out=out[:, start:stop])
            if bias is not None:
                out[:, start:stop] += bias[start:stop]

        self.pool.run(tile, len(starts))
        return out

    def _tile_buffers(self, n_in: int) -> list[np.ndarray]:
        """One (WIDEN_TILE_ROWS, n_in) float32 buffer per thread, made once per row length."""
        if n_in not in self._tiles:
            self._tiles[n_in] = [np.empty((WIDEN_TILE_ROWS, n_in), np.float32)
                                 for _ in range(self.pool.n_threads)]
        return self._tiles[n_in]

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  key_valid: np.ndarray | None = None) -> np.ndarray:
        """q: (B,H,Tq,d), k, v: (B,H,Tk,d), key_valid: (B,Tk) bool or None -> (B,H,Tq,d)"""
        # One query per sequence (decoding) runs on numba's threads when the matmuls before it
        # did (quantised weights, batched float32, matmul="numba"); after a call on OpenBLAS's
        # threads (float32, one sequence) its idle threads spin on the cores for a while, and
        # numba's threads beside them made decoding 4x slower (measured).
        decode_threads = 1 if self._products_on == ON_OPENBLAS else self.pool.n_threads
        n_rows = q.shape[0] * q.shape[2]
        return self._attention(q, k, v, key_valid, pool=self._pool_for(n_rows),
                               decode_threads=decode_threads, n_threads=self._numba_threads(n_rows))

    def layer_norm(self, x: np.ndarray, gain: np.ndarray, bias: np.ndarray,
                   eps: float) -> np.ndarray:
        """(..., C) -> (..., C)"""
        n_rows = x.size // x.shape[-1]
        return self._layer_norm(x, gain, bias, eps, pool=self._pool_for(n_rows),
                                n_threads=self._numba_threads(n_rows),
                                out=self._outputs.empty(x.shape))

    def gelu(self, x: np.ndarray) -> np.ndarray:
        """(..., 4C) -> (..., 4C)"""
        n_rows = x.size // x.shape[-1]
        return self._gelu(x, pool=self._pool_for(n_rows), n_threads=self._numba_threads(n_rows),
                          out=self._outputs.empty(x.shape))

    def linear_backward(self, dy: np.ndarray, x: np.ndarray, weight: np.ndarray):
        """dx (..., in), dW (in, out), db (out,) of y = x W + b, from dy (..., out).

        On the pool (training-sized calls): dx = dy W^T by row blocks and dW = x^T dy by
        blocks of its output columns, each a single-threaded BLAS call, for the same reason
        as the forward's row blocks."""
        n_in, n_out = weight.shape
        dy_rows, x_rows = dy.reshape(-1, n_out), x.reshape(-1, n_in)      # (M, out), (M, in)
        if self._pool_for(dy_rows.shape[0]) is None:
            return layers.linear_backward(dy, x, weight)
        dx = np.empty((dy_rows.shape[0], n_in), np.float32)                # (M, in)
        dweight = np.empty((n_in, n_out), np.float32)                      # (in, out)
        dbias = np.empty(n_out, np.float32)                                # (out,)
        row_blocks, col_blocks = self.pool.split(dy_rows.shape[0]), self.pool.split(n_out)

        def piece(i):          # split() gives fewer blocks than threads for a narrow layer
            if i < len(row_blocks):
                rows = slice(*row_blocks[i])
                np.matmul(dy_rows[rows], weight.T, out=dx[rows])
            if i < len(col_blocks):
                cols = slice(*col_blocks[i])
                np.matmul(x_rows.T, dy_rows[:, cols], out=dweight[:, cols])
                np.sum(dy_rows[:, cols], axis=0, out=dbias[cols])   # a pass over dy: shared out too

        self.pool.run(piece, max(len(row_blocks), len(col_blocks)))
        return dx.reshape(x.shape), dweight, dbias

    def attention_train(self, q: np.ndarray, k: np.ndarray, v: np.ndarray):
        """Causal attention for training -> (out (B,H,T,d), lse (B,H,T)): the row statistics
        the fused backward recomputes the probabilities from (minillm.kernels.attention_backward_cpu)."""
        return self._attention_backward.attention_forward(q, k, v, pool=self._pool_for(q.shape[0] * q.shape[2]))

    def attention_backward(self, dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                           out: np.ndarray, lse: np.ndarray):
        """dq, dk, dv: (B,H,T,d) each, FlashAttention-2 style (no T x T matrix)."""
        return self._attention_backward.attention_backward(
            dout, q, k, v, out, lse, pool=self._pool_for(q.shape[0] * q.shape[2]))

    def gelu_backward(self, dy: np.ndarray, x: np.ndarray) -> np.ndarray:
        """dx (..., 4C) of GELU from dy and its input x, one fused pass."""
        n_rows = x.size // x.shape[-1]
        return self._fused.gelu_backward(dy, x, pool=self._pool_for(n_rows))

    def layer_norm_backward(self, dy: np.ndarray, x: np.ndarray, gain: np.ndarray, eps: float):
        """dx (..., C), dgain (C,), dbias (C,) of LayerNorm, one fused loop per row."""
        n_rows = x.size // x.shape[-1]
        return self._fused.layer_norm_backward(dy, x, gain, eps, pool=self._pool_for(n_rows))

    def cross_entropy(self, logits: np.ndarray, targets: np.ndarray):
        """Mean cross-entropy and dlogits (..., V), softmax and gradient in one fused pass."""
        loss_rows(logits, targets)                           # the reference's checks
        n_rows = logits.size // logits.shape[-1]
        return self._fused.cross_entropy(logits, targets, pool=self._pool_for(n_rows))

    def decode_step(self, params, config, x: np.ndarray, cache) -> np.ndarray | None:
        """Logits (B, V) of one new token of each of B sequences, the whole step in one
        kernel call (minillm.kernels.decode_step_cpu), their keys and values written to
        `cache`; None where that kernel does not apply (whole_step=False, matmul="numba",
        weights it does not take, more sequences than whole_step_max_sequences, default
        WHOLE_STEP_MAX_SEQUENCES for the weights' dtype), and the model then runs its layers
        one operation at a time. x: (B, 1, C)."""
        if not self.whole_step:
            return None
        arrange = self._step_weights_module
        key = arrange.key(params)             # which arrays the model holds now
        if self._step_weights is None or self._step_weights[0] != key:
            usable = arrange.unsupported_reason(params) is None
            self._step_weights = (key, arrange.StepWeights(params) if usable else None)
        weights, n_sequences = self._step_weights[1], x.shape[0]
        if weights is None or n_sequences > (self.whole_step_max_sequences
                                             or WHOLE_STEP_MAX_SEQUENCES[weights.dtype]):
            return None
        panels = None
        if (weights.dtype == "float32" and n_sequences >= WHOLE_STEP_PANELS_MIN_SEQUENCES
                and self.prompt_tile == "avx512"):
            panels = tuple(tuple(map(self._packed_copy, per_layer)) for per_layer in weights.weights)
        with self._step_lock:                 # one step at a time: the workers meet at barriers
            return self._decode_step.decode_step(weights, x.reshape(n_sequences, -1), cache,
                                                 config.layer_norm_epsilon, config.n_head,
                                                 self.pool, panels)

    def clear(self) -> None:
        """Forget the transposed and packed copies of the weights, and the step kernel's
        arrangement of them (no copies, but references that keep the arrays alive)."""
        self._transposed.clear()
        self._packed.clear()
        self._step_weights = None

    def _transposed_copy(self, weight: np.ndarray) -> np.ndarray:
        """weight.T as a C-contiguous (out, in) array, copied on first use and kept."""
        return _derived_copy(self._transposed, weight, lambda w: np.ascontiguousarray(w.T))

    def _packed_copy(self, weight: np.ndarray) -> np.ndarray:
        """weight packed into 16-column panels (matmul_packed_cpu.pack_weight), on first use."""
        return _derived_copy(self._packed, weight, self._matmul_packed.pack_weight)


def _derived_copy(cache: dict, weight: np.ndarray, derive) -> np.ndarray:
    """derive(weight), made the first time this weight (address, shape, strides, dtype) is
    seen and kept in `cache` with the weight itself, which pins the address so it cannot be
    reused; made again when the weight's fingerprint shows it was changed in place."""
    key = (weight.__array_interface__["data"][0], weight.shape, weight.strides, weight.dtype.str)
    cached = cache.get(key)
    if cached is None or _fingerprint(weight, cached[2]) != cached[3]:
        where = _fingerprint_indices(weight.size)
        cached = (weight, derive(weight), where, _fingerprint(weight, where))
        cache[key] = cached
    return cached[1]


def _fingerprint_indices(size: int) -> tuple[int, ...]:
    """FINGERPRINT_SIZE flat (C-order) indices, evenly spaced over an array of `size` elements."""
    return tuple(range(0, size, max(1, size // FINGERPRINT_SIZE)))[:FINGERPRINT_SIZE]


def _fingerprint(weight: np.ndarray, where: tuple[int, ...]) -> tuple[float, ...]:
    """The weight's elements at the flat indices `where`, as Python numbers (read in place in
    any layout; ~3 us): an update in place that touches most elements (an optimiser's step,
    scaling a matrix) changes them, so a copy is never used stale after one. An edit of a few
    elements can miss them: clear() after such an edit."""
    return tuple(map(weight.item, where))


def _is_batched_decoding(x: np.ndarray, n_in: int) -> bool:
    """x (B, 1, in) with 2 <= B <= BATCHED_DECODE_MAX: one new token for each of a few sequences."""
    return (x.ndim >= 2 and x.shape[-1] == n_in and x.shape[-2] == 1
            and 1 < x.size // n_in <= BATCHED_DECODE_MAX)


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA kernels cannot run here, or None if they can (GPU or simulator)."""
    import numba
    from numba import cuda

    if numba.config.ENABLE_CUDASIM:
        return None
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return ("NUMBA_ENABLE_CUDASIM=1 was set after numba was imported, so the CUDA simulator "
                "is off: set it in the environment before starting Python")
    if not cuda.is_available():
        return ("the 'cuda' backend needs an NVIDIA GPU with a working CUDA driver, and "
                "numba.cuda.is_available() is False here. To run the CUDA kernels on the CPU "
                "with numba's (slow) simulator instead, set NUMBA_ENABLE_CUDASIM=1 in the "
                "environment before numba is imported, e.g. `NUMBA_ENABLE_CUDASIM=1 python ...`")
    return None


class CudaBackend:
    """CUDA kernels (numba.cuda): shared-memory tiled matmul and fused attention.

    The rest of the model is NumPy, so activations go to the device and back on every call.
    Weights do not: the first time a weight or bias is used its device copy is cached on this
    instance (keyed by its memory address, shape and strides, and holding a reference so the
    address cannot be reused), and later calls reuse it. `prepare(params)` uploads every weight
    up front. The cache assumes weights are not modified in place; call `clear()` if they are.
    """

    name = "cuda"

    def __init__(self):
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        from numba import cuda

        from minillm.kernels import attention_cuda, matmul_cuda

        self._cuda = cuda
        self._launch_matmul = matmul_cuda.launch_matmul
        self._launch_attention = attention_cuda.launch_attention
        self._device_weights: dict[tuple, tuple[np.ndarray, object]] = {}

    # ---- weights that stay on the device ----------------------------------------------------
    def prepare(self, params) -> None:
        """Upload every weight of a GPT2Params (blocks, biases, and the LM head wte.T) now."""
        self._weight(params.wte.T)
        for block in params.blocks:
            for weight, bias in ((block.attn_qkv_weight, block.attn_qkv_bias),
                                 (block.attn_proj_weight, block.attn_proj_bias),
                                 (block.mlp_fc_weight, block.mlp_fc_bias),
                                 (block.mlp_proj_weight, block.mlp_proj_bias)):
                self._weight(weight)
                self._weight(bias)

    def clear(self) -> None:
        """Forget the device copies of the weights."""
        self._device_weights.clear()

    def _weight(self, array: np.ndarray):
        """The device copy of a weight, uploaded (as a C-contiguous float32 array) on first use."""
        key = (array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)
        cached = self._device_weights.get(key)
        if cached is None:
            host = np.ascontiguousarray(array, np.float32)
            cached = (array, self._cuda.to_device(host))   # `array` pins the address in the key
            self._device_weights[key] = cached
        return cached[1]

    def _zeros(self, n: int):
        """Device zeros of length n, standing in for a missing bias (cached like a weight)."""
        key = ("zeros", n)
        if key not in self._device_weights:
            self._device_weights[key] = (None, self._cuda.to_device(np.zeros(n, np.float32)))
        return self._device_weights[key][1]

    # ---- the protocol -------------------------------------------------------------------------
    def linear(self, x: np.ndarray, weight: np.ndarray,
               bias: np.ndarray | None = None) -> np.ndarray:
        """(..., in) @ (in, out) + (out,) -> (..., out)"""
        if isinstance(weight, QuantizedMatrix):
            raise ValueError(f"the cuda backend runs float32 weights only, got {weight.dtype} "
                             f"weights; load the model with dtype='float32', or use the numba "
                             f"backend for float16/int8")
        n_in, n_out = weight.shape
        rows = np.ascontiguousarray(x.reshape(-1, n_in), np.float32)         # (M, in)
        out = self._cuda.device_array((rows.shape[0], n_out), np.float32)   # (M, out)
        bias_device = self._zeros(n_out) if bias is None else self._weight(bias)
        if rows.shape[0] > 0:
            self._launch_matmul(self._cuda.to_device(rows), self._weight(weight), bias_device, out)
        return out.copy_to_host().reshape(*x.shape[:-1], n_out)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  key_valid: np.ndarray | None = None) -> np.ndarray:
        """q: (B,H,Tq,d), k, v: (B,H,Tk,d), key_valid: (B,Tk) bool or None -> (B,H,Tq,d)"""
        n_batch, n_keys = k.shape[0], k.shape[2]
        if key_valid is None:
            key_valid = np.ones((n_batch, n_keys), np.bool_)
        to_device = self._cuda.to_device
        q_d, k_d, v_d = (to_device(np.ascontiguousarray(a, np.float32)) for a in (q, k, v))
        valid_d = to_device(np.ascontiguousarray(key_valid, np.bool_))
        out = self._cuda.device_array(q.shape, np.float32)
        if math.prod(q.shape) > 0:
            self._launch_attention(q_d, k_d, v_d, valid_d, out)
        return out.copy_to_host()

    # LayerNorm and GELU stay on the host: with activations copied back after every matmul,
    # a device kernel for them would only add two more transfers.
    def layer_norm(self, x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
        """(..., C) -> (..., C), the NumPy reference"""
        return layers.layer_norm(x, gain, bias, eps)

    def gelu(self, x: np.ndarray) -> np.ndarray:
        """(...) -> (...), the NumPy reference"""
        return layers.gelu(x)
