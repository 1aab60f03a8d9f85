"""Stage 1, text -> ids: GPT-2's byte-level BPE.

bpe.py      the readable tokenizer (Tokenizer), and FastTokenizer, which encodes with fast.py
fast.py     the same encoding compiled with numba (what `Tokenizer.gpt2()` uses by default);
            its jitted loops in fast_kernels.py
symbols.py  SymbolChain, the linked list of symbols the merge loop fuses
checks.py   vocabulary and merges files checked against each other
files.py    reading and writing vocab.json / merges.txt (and OpenAI's encoder.json / vocab.bpe)
train.py    learning a BPE vocabulary and merges from text
special.py  special tokens in raw text: tiktoken's allowed / disallowed rules
"""
