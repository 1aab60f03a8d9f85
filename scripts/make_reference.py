"""Build the small random GPT-2 in weights/reference/ and record what HF transformers computes.

The test suite checks minillm against these recordings, so it runs with numpy alone. This
script is the only place torch and transformers are needed (the `reference` extra):

    python scripts/make_reference.py

It writes weights/reference/:
    model.safetensors  hub layout (h.0.attn.c_attn.weight, ..., wte.weight; no lm_head), with
                       the h.N.attn.bias causal-mask buffers that the released files carry
    config.json        HF's config for the model
    reference.npz      HF's outputs for a few prompts (see record_prompts / record_generation)
    reference.json     library versions, prompts, and how sensitive the model is to mistakes

Every random number comes from a fixed seed and torch runs single-threaded, so rerunning with
the same library versions rewrites identical files.
"""
from __future__ import annotations

import copy
import json
import platform
import sys
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
import torch
import transformers
from transformers import GPT2Config as HFConfig
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from minillm.model.config import GPT2Config                       # noqa: E402
from minillm.model.params import (BlockParams, GPT2Params, block_shapes,  # noqa: E402
                            params_to_hf)

OUT_DIR = REPO_ROOT / "weights" / "reference"
VOCAB_DIR = REPO_ROOT / "weights" / "gpt2"
SEED = 0
EOS = 50256
CONFIG = GPT2Config(vocab_size=50257, n_positions=128, n_embd=48, n_layer=3, n_head=3)
N_LOGIT_COLUMNS = 2048      # vocabulary columns whose logits are stored for every position
N_GREEDY_TOKENS = 20
N_BATCH_TOKENS = 10

# Weight scales. GPT-2's own init (std 0.02, gains 1, biases 0) makes a random model nearly
# linear, with near-uniform attention: a wrong detail would barely move its logits. These
# scales make every part of the computation matter:
#   - c_attn std 0.25 spreads attention scores over several units, so attention is far from
#     uniform and dropping 1/sqrt(d_k) changes the logits by several units;
#   - c_fc std 0.3 puts MLP pre-activations where tanh-GELU and erf-GELU differ most;
#   - a small embedding (variance ~0.007) reaches block 0's first LayerNorm, where it is
#     comparable to eps, so eps = 1e-6 instead of 1e-5 is visible;
#   - random LayerNorm gains/biases and biases, so a swapped gain/bias or a dropped bias shows;
#   - a final LayerNorm gain ~3 spreads the logits (std ~1.5) so greedy choices are not ties.
WEIGHT_STD = {"wte": 0.08, "wpe": 0.02, "attn_qkv_weight": 0.25, "mlp_fc_weight": 0.3,
              "attn_proj_weight": 0.15, "mlp_proj_weight": 0.15, "bias": 0.1, "gain": 0.3}
LN_F_GAIN_MEAN = 3.0

PROMPTS = {
    "english": "The quick brown fox jumps over the lazy dog.",
    "chinese": "我喜欢吃苹果",
    "code": "def add(a, b):\n    return a + b",
    "long": ("It was a bright cold day in April, and the clocks were striking thirteen. "
             "Winston Smith, his chin nuzzled into his breast in an effort to escape the vile "
             "wind, slipped quickly through the glass doors of Victory Mansions, though not "
             "quickly enough to prevent a swirl of gritty dust from entering along with him."),
}
GREEDY_PROMPTS = ("english", "chinese")
BATCH_PROMPTS = (PROMPTS["english"], PROMPTS["chinese"], PROMPTS["code"], "Hello world")


def half_precision_exact(x: np.ndarray) -> np.ndarray:
    """Round to values exact in both float16 and bfloat16 (8 significant bits, fp16's range),
    so half-precision copies of the file load without loss and git compresses it well."""
    bits = x.astype(np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    rounded = bits.view(np.float32)
    rounded = np.where(np.abs(rounded) < 2.0 ** -14, np.float32(0), rounded)  # fp16 subnormals
    assert np.array_equal(rounded.astype(np.float16).astype(np.float32), rounded)
    return rounded


def reference_params(config: GPT2Config, seed: int) -> GPT2Params:
    rng = np.random.default_rng(seed)

    def normal(shape, std, mean=0.0):
        return half_precision_exact(mean + std * rng.standard_normal(shape))

    def block() -> BlockParams:
        arrays = {}
        for name, shape in block_shapes(config).items():
            if name.endswith("gain"):
                arrays[name] = normal(shape, WEIGHT_STD["gain"], mean=1.0)
            elif name.endswith("bias"):
                arrays[name] = normal(shape, WEIGHT_STD["bias"])
            else:
                arrays[name] = normal(shape, WEIGHT_STD[name])
        return BlockParams(**arrays)

    C = config.n_embd
    return GPT2Params(
        wte=normal((config.vocab_size, C), WEIGHT_STD["wte"]),
        wpe=normal((config.n_positions, C), WEIGHT_STD["wpe"]),
        blocks=[block() for _ in range(config.n_layer)],
        ln_f_gain=normal(C, WEIGHT_STD["gain"], mean=LN_F_GAIN_MEAN),
        ln_f_bias=normal(C, WEIGHT_STD["bias"]),
    )


# ----------------------------------------------------------------------------------------------
def hf_config(config: GPT2Config) -> HFConfig:
    return HFConfig(vocab_size=config.vocab_size, n_positions=config.n_positions,
                    n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                    layer_norm_epsilon=config.layer_norm_epsilon,
                    activation_function="gelu_new", bos_token_id=EOS, eos_token_id=EOS)


def build_hf_model(params: GPT2Params, config: GPT2Config) -> GPT2LMHeadModel:
    model = GPT2LMHeadModel(hf_config(config))
    state = {f"transformer.{name}": torch.from_numpy(array.copy())
             for name, array in params_to_hf(params).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    return model.eval()


def save_hub_checkpoint(model: GPT2LMHeadModel, config: GPT2Config, out_dir: Path) -> None:
    """The hub layout: no `transformer.` prefix, no lm_head, plus h.N.attn.bias buffers.

    Those buffers are float32 (1, 1, n_positions, n_positions) lower-triangular ones, as in
    openai-community/gpt2 (whose 548 MB = 124M float32 weights + 12 such 4 MiB masks).
    transformers no longer saves them, so they are added here.
    """
    tensors = {name.removeprefix("transformer."): t.detach().numpy().copy()
               for name, t in model.state_dict().items() if name != "lm_head.weight"}
    P = config.n_positions
    mask = np.tril(np.ones((P, P), np.float32)).reshape(1, 1, P, P)
    for i in range(config.n_layer):
        tensors[f"h.{i}.attn.bias"] = mask
    safetensors.numpy.save_file(tensors, str(out_dir / "model.safetensors"),
                                metadata={"format": "pt"})
    hf_config(config).to_json_file(str(out_dir / "config.json"), use_diff=True)


def load_hf_model(out_dir: Path) -> GPT2LMHeadModel:
    model = GPT2LMHeadModel.from_pretrained(str(out_dir), attn_implementation="eager")
    assert model.dtype == torch.float32
    return model.eval()


def load_tokenizer() -> GPT2TokenizerFast:
    """The real GPT-2 tokenizer, built from the vocabulary files in weights/gpt2/."""
    vocab = json.loads((VOCAB_DIR / "encoder.json").read_text(encoding="utf-8"))
    lines = (VOCAB_DIR / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    try:                                   # transformers >= 5
        tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    except TypeError:                      # transformers 4.x
        tokenizer = GPT2TokenizerFast(vocab_file=str(VOCAB_DIR / "encoder.json"),
                                      merges_file=str(VOCAB_DIR / "vocab.bpe"))
    assert tokenizer("Hello world")["input_ids"] == [15496, 995], "wrong GPT-2 tokenizer"
    return tokenizer


# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def forward(model, ids: list[int], **kwargs):
    return model(torch.tensor([ids]), output_hidden_states=True, **kwargs)


def record_prompts(model, prompt_ids: dict[str, list[int]], columns: np.ndarray) -> dict:
    """Per prompt: ids, every hidden state (HF convention), full logits at the last position,
    and logits at every position over the fixed vocabulary `columns`."""
    arrays = {"logit_columns": columns}
    for name, ids in prompt_ids.items():
        out = forward(model, ids)
        logits = out.logits[0].numpy()                                    # (T, V)
        arrays[f"{name}.ids"] = np.array(ids, np.int64)
        arrays[f"{name}.hidden_states"] = torch.stack(out.hidden_states)[:, 0].numpy()  # (L+1, T, C)
        arrays[f"{name}.logits_last"] = logits[-1]
        arrays[f"{name}.logits_columns"] = logits[:, columns]
    return arrays


@torch.no_grad()
def greedy(model, ids: torch.Tensor, attention_mask: torch.Tensor, n_new: int):
    """HF generate, greedy; also the smallest top-1/top-2 logit gap over the steps."""
    out = model.generate(ids, attention_mask=attention_mask, max_new_tokens=n_new,
                         do_sample=False, pad_token_id=EOS,
                         output_scores=True, return_dict_in_generate=True)
    new_tokens = out.sequences[:, ids.shape[1]:]
    assert new_tokens.shape[1] == n_new and not (new_tokens == EOS).any(), "generated EOS"
    top2 = torch.stack(out.scores).topk(2, dim=-1).values                 # (n_new, B, 2)
    return out.sequences.numpy(), float((top2[..., 0] - top2[..., 1]).min())


def record_generation(model, prompt_ids: dict[str, list[int]],
                      rows: list[list[int]]) -> tuple[dict, dict]:
    """Greedy continuations of single prompts, and of the prompts `rows` as a left-padded
    batch (padded with <|endoftext|>, attention_mask 0 on the padding)."""
    arrays, margins = {}, {}
    for name in GREEDY_PROMPTS:
        ids = torch.tensor([prompt_ids[name]])
        sequences, margins[name] = greedy(model, ids, torch.ones_like(ids), N_GREEDY_TOKENS)
        arrays[f"{name}.greedy"] = sequences[0]

    width = max(map(len, rows))
    padded = np.array([[EOS] * (width - len(r)) + r for r in rows], np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int64)
    sequences, margins["batch"] = greedy(model, torch.from_numpy(padded),
                                         torch.from_numpy(mask), N_BATCH_TOKENS)
    for row, sequence in zip(rows, sequences):     # padding must not change any row's tokens
        alone, _ = greedy(model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long),
                          N_BATCH_TOKENS)
        assert list(alone[0]) == list(sequence[width - len(row):]), "batched != alone"
    arrays.update({"batch.ids": padded, "batch.attention_mask": mask, "batch.greedy": sequences})
    return arrays, margins


# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def sensitivity(model, ids: list[int]) -> dict:
    """How far the logits move when one detail of the model is wrong: each must be >> 1e-4
    for the tests' 1e-4 tolerance to catch it."""
    base = forward(model, ids).logits

    def change(mutate) -> float:
        mutant = copy.deepcopy(model)
        mutate(mutant)
        return float((forward(mutant, ids).logits - base).abs().max())

    def skip_block(i):
        def mutate(m):                 # zero both output projections: the block adds nothing
            block = m.transformer.h[i]
            for layer in (block.attn.c_proj, block.mlp.c_proj):
                layer.weight.zero_()
                layer.bias.zero_()
        return mutate

    def set_layer_norm_eps(m):
        for module in m.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = 1e-6

    def erf_gelu(m):
        for block in m.transformer.h:
            block.mlp.act = torch.nn.GELU()

    def no_attention_scale(m):
        for block in m.transformer.h:
            block.attn.scaling = 1.0

    stats = {f"without_block_{i}": change(skip_block(i)) for i in range(len(model.transformer.h))}
    stats.update(layer_norm_eps_1e6=change(set_layer_norm_eps), erf_gelu=change(erf_gelu),
                 no_attention_scale=change(no_attention_scale))
    return stats


@torch.no_grad()
def model_stats(model, ids: list[int]) -> dict:
    out = forward(model, ids, output_attentions=True)
    T = len(ids)
    late = slice(T // 2, T)            # queries with many keys, where uniform would be <= 2/T
    attention_max = [float(a[0, :, late].max(-1).values.mean()) for a in out.attentions]
    logits = out.logits[0]
    return {
        "prompt_tokens": T,
        "mean_max_attention_weight_per_layer": attention_max,
        "uniform_attention_weight": float(np.mean([1 / (t + 1) for t in range(T // 2, T)])),
        "hidden_state_std": [float(h.std()) for h in out.hidden_states],
        "logits_std": float(logits.std()),
        "logits_max_abs": float(logits.abs().max()),
        "sensitivity_max_abs_logit_change": sensitivity(model, ids),
    }


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    params = reference_params(CONFIG, SEED)
    save_hub_checkpoint(build_hf_model(params, CONFIG), CONFIG, OUT_DIR)
    model = load_hf_model(OUT_DIR)           # record what HF computes from the saved files
    for name, array in params_to_hf(params).items():
        assert np.array_equal(model.transformer.state_dict()[name].numpy(), array), name

    tokenizer = load_tokenizer()
    prompt_ids = {name: tokenizer(text)["input_ids"] for name, text in PROMPTS.items()}
    assert len(prompt_ids["long"]) >= 64, len(prompt_ids["long"])
    columns = np.sort(np.random.default_rng(SEED).choice(CONFIG.vocab_size, N_LOGIT_COLUMNS,
                                                          replace=False)).astype(np.int64)
    arrays = record_prompts(model, prompt_ids, columns)
    batch_rows = [tokenizer(text)["input_ids"] for text in BATCH_PROMPTS]
    generated, margins = record_generation(model, prompt_ids, batch_rows)
    arrays.update(generated)
    np.savez_compressed(OUT_DIR / "reference.npz", **arrays)

    info = {
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "safetensors": safetensors.__version__,
                     "python": platform.python_version()},
        "seed": SEED, "weight_std": WEIGHT_STD, "ln_f_gain_mean": LN_F_GAIN_MEAN,
        "prompts": PROMPTS, "batch_prompts": list(BATCH_PROMPTS),
        "attn_implementation": "eager", "dtype": "float32",
        "greedy_min_top2_logit_gap": margins,
        "stats_on_long_prompt": model_stats(model, prompt_ids["long"]),
    }
    (OUT_DIR / "reference.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    print(json.dumps(info, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
