"""Which kernels numpy's OpenBLAS runs, for the benchmarks' setup lines.

OpenBLAS picks its kernels once, when numpy loads it: from the CPU, unless OPENBLAS_CORETYPE
names them. Some machines set that variable (with OPENBLAS_L2_SIZE) for older OpenBLAS builds
that miscompute or crash on their CPUs; numpy's current OpenBLAS then runs the kernels named
there. "Haswell" on an AVX-512 CPU is the AVX2 set at half the vector width: every product
minillm leaves to OpenBLAS (prompts of POOL_MIN_ROWS tokens and more, training's matmuls) runs
slower, while ONNX Runtime, llama.cpp and torch bring BLAS kernels of their own. A comparison
of engines reports which kernels ran (benchmarks/README.md: run it with both variables unset).
"""
from __future__ import annotations

import os

VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def openblas_kernels() -> str:
    """'OpenBLAS 0.3.31, SkylakeX kernels (OPENBLAS_CORETYPE unset, OPENBLAS_L2_SIZE unset)'
    or the like; loads numpy."""
    import numpy  # noqa: F401  (threadpoolctl lists only libraries already loaded)
    from threadpoolctl import threadpool_info

    chosen = ", ".join(f"{name}={os.environ[name]}" if name in os.environ else f"{name} unset"
                       for name in VARIABLES)
    for library in threadpool_info():
        if library.get("internal_api") == "openblas":
            return (f"OpenBLAS {library.get('version')}, {library.get('architecture')} kernels "
                    f"({chosen})")
    return f"numpy's BLAS is not OpenBLAS ({chosen})"
