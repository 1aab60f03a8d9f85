"""The random-weight GPT-2 124M every engine loads: one HF-format folder in the work dir.

It holds model.safetensors + config.json (minillm's save_checkpoint), the GPT-2 vocabulary under
the names transformers and llama.cpp's converter read (vocab.json, merges.txt, a
tokenizer_config.json), and "n_ctx" in config.json, which the converter's GPT-2 path needs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GPT2_VOCAB = REPO / "weights" / "gpt2"          # encoder.json = vocab.json, vocab.bpe = merges.txt
TOKENIZER_CONFIG = {
    "model_max_length": 1024, "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
    "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
}


def model_folder(workdir: Path, seed: int, std: float) -> Path:
    """The folder of GPT-2 124M with minillm.model.params.random_params(seed, std); built once.

    Files derived from it (ONNX graphs, GGUF files) go in subfolders of it."""
    folder = workdir / f"gpt2-124m-seed{seed}-std{std:g}"
    if (folder / "tokenizer_config.json").exists():       # written last: the folder is complete
        return folder
    from minillm.checkpoint.weights import save_checkpoint
    from minillm.model.config import GPT2_SIZES
    from minillm.model.params import random_params

    config = GPT2_SIZES["gpt2"]
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_checkpoint(random_params(config, seed=seed, std=std), config, partial,
                    extra_config={"n_ctx": config.n_positions, "bos_token_id": 50256,
                                  "eos_token_id": 50256})
    shutil.copyfile(GPT2_VOCAB / "encoder.json", partial / "vocab.json")
    shutil.copyfile(GPT2_VOCAB / "vocab.bpe", partial / "merges.txt")
    (partial / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder
