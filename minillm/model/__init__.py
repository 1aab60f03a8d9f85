"""Stage 2, ids -> logits: the GPT-2 network in NumPy.

config.py     GPT2Config and the four released sizes
inputs.py     checking the token ids a model is given
params.py     the weights: names, shapes, random initialisation, HF's names for them
layers.py     LayerNorm, GELU, softmax, linear: the reference maths, one function each
attention.py  causal multi-head attention and the head split / merge reshapes
backends.py   who computes linear / attention / layer_norm / gelu: NumPy, numba or CUDA kernels
gpt2.py       GPT2: embeddings, the transformer blocks, the tied LM head
"""
