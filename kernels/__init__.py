"""numba kernels (CPU JIT and CUDA) for the hot path, each tested against its NumPy reference.

    attention_cpu   fused causal attention (online softmax) -- against
                    minillm.model.attention.causal_attention
    attention_decode_cpu
                    the same for one new query per sequence against a KV cache (decoding)
    attention_cpu_v1, attention_cpu_v2
                    the steps towards it, tested against the same reference: v1 the
                    reference's loops one query at a time, v2 the online softmax in one pass
    matmul_cpu      packed, register-blocked matmul -- against x @ w
    matvec_cpu      few-row products with weights stored by output row, in float32, float16
                    or int8 (decoding) -- against x @ dequantize(W^T).T
    matmul_packed_cpu
                    few-row products on a weight packed once into 16-column panels, a 4 x 16
                    register tile of explicit 8-float vectors (batched decoding) -- against x @ w
    decode_step_cpu a whole decoding step of one sequence (every layer and the LM head) as
                    one call, its threads meeting at barriers -- against GPT2.forward with a
                    KV cache on the "numpy" backend; step_weights arranges the model's
                    parameters for it, no copies
    attention_cuda  the fused attention as a CUDA kernel (numba.cuda)
    matmul_cuda     shared-memory tiled matmul as a CUDA kernel
    fused_cpu       LayerNorm and GELU, one loop each -- against minillm/model/layers.py
    attention_backward_cpu
                    attention for training: a forward that keeps each row's logsumexp, and the
                    FlashAttention-2 backward -- against causal_attention_backward
    workers         one pool of threads that shares out every big CPU operation
    backend         NumbaBackend and CudaBackend: GPT2(..., backend="numba" or "cuda")

Importing a CPU module compiles its kernels the first time; numba caches them on disk after.
"""
