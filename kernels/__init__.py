"""numba kernels (CPU JIT and CUDA) for the hot path, each tested against its NumPy reference."""
