"""Stage 3, logits -> text: generating tokens one at a time.

kv_cache.py   the keys and values of past positions, so each new token costs O(T)
sampling.py   choosing the next token from logits: greedy, temperature, top-k, top-p
generate.py   the decoding loop: prefill the prompt, then one forward pass per new token
streaming.py  turning new token ids into text as they arrive, whole characters only
"""
