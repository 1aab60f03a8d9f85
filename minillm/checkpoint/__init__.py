"""Weights in and out: safetensors files, the hub, and checking a model against HF's outputs.

safetensors_file.py  the .safetensors container: header checks, reading, writing, bfloat16
hf_config.py         config.json, read and checked field by field
weights.py           GPT-2 checkpoints in both HF layouts: load_checkpoint, save_checkpoint,
                     and where a model's name points (bundled, downloaded)
pretrained.py        a model together with its own tokenizer, checked against each other
locations.py         where bundled models live and where downloads go (the user cache)
download.py          fetching a released GPT-2 from the Hugging Face hub, resumably and checked
verify.py            comparing a model's logits and greedy continuations with a reference file
"""
