"""minillm: GPT-2 from scratch in NumPy, with numba kernels for the hot path."""
from minillm.model.config import GPT2_SIZES, GPT2Config

__all__ = ["GPT2Config", "GPT2_SIZES", "GPT2", "Tokenizer"]
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import minillm` stays cheap and a tokenizer-only user never loads the model.
    if name == "GPT2":
        from minillm.model.gpt2 import GPT2
        return GPT2
    if name == "Tokenizer":
        from minillm.tokenizer.bpe import Tokenizer
        return Tokenizer
    raise AttributeError(f"module 'minillm' has no attribute {name!r}")
