"""Weights in and out: safetensors files, the hub, and checking a model against HF's outputs.

weights.py   reading and writing .safetensors checkpoints in both HF layouts
download.py  fetching a released GPT-2 from the Hugging Face hub, resumably and checked
verify.py    comparing a model's logits and greedy continuations with a reference file
"""
