"""Record what PyTorch computes when it trains and evaluates GPT-2, for minillm's training tests.

minillm's backward pass, optimiser and evaluation are checked against these recordings, so the
test suite needs numpy alone; torch and transformers are needed only here:

    python scripts/make_training_reference.py grads     # tiny model, one forward + backward
    python scripts/make_training_reference.py optim     # ten AdamW steps on the tiny model
    python scripts/make_training_reference.py eval      # sliding-window perplexity
    python scripts/make_training_reference.py hf-check FOLDER --out FILE.npz

`grads` writes tests/data/training_reference/:
    config.json, model.safetensors  a tiny GPT-2 (vocab 67, 16 positions, 24 wide, 3 heads,
                       2 layers) saved by HF's save_pretrained: `transformer.`-prefixed names,
                       the LM head tied to wte and so not stored
    grads.npz          ids, targets, logits, loss and the gradient of every parameter, in
                       float32 and again with the model cast to float64 (loss64, grad64/...)

`optim` (after `grads`) writes tests/data/training_reference/optim.npz: ten steps of
torch.optim.AdamW with nanoGPT's weight-decay groups, a warmup + cosine learning rate and
gradient-norm clipping, on batches that walk a short cycle of tokens (learnable in ten steps,
so the early steps clip and the late ones do not); per step the raw and clipped gradients, the
norm, the rate, the loss and the parameters after the step.

`eval` writes tests/data/eval_reference.json: the perplexity of weights/reference/ on the
tokenizer corpus, computed with the sliding-window loop of HF's guide "Perplexity of
fixed-length models", for three strides.

`hf-check` loads a GPT-2 folder written by minillm (config.json, model.safetensors,
vocab.json, merges.txt) with transformers and records its tokens, logits and a greedy
continuation for a few texts, so minillm can check that HF reads its files as minillm does.

Gradients are keyed by hub names (wte.weight, h.0.attn.c_attn.weight, ...): HF's names with
`transformer.` removed. Conv1D weights keep HF's [in, out] layout. wte's gradient is the tied
one: the sum of what flows through the LM head and through the embedding lookup.

The tiny model's weights are rounded to values exact in bfloat16 (stored as float32), so the
file compresses and a bfloat16 copy loads without loss. Every random number comes from a fixed
seed and torch runs on two threads, so reruns with the same library versions give the same
numbers up to the order of floating-point sums.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from make_reference import load_tokenizer   # the real GPT-2 tokenizer, from weights/gpt2/ (same folder)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "tests" / "data"
TRAIN_DIR = DATA_DIR / "training_reference"
REFERENCE_MODEL = REPO_ROOT / "weights" / "reference"
SEED = 0
IGNORE = -100                   # cross_entropy's ignore_index: targets that do not count

# The tiny model. Dropout is off everywhere so a forward pass is deterministic.
TINY = dict(vocab_size=67, n_positions=16, n_embd=24, n_head=3, n_layer=2,
            activation_function="gelu_new", layer_norm_epsilon=1e-5,
            attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, summary_first_dropout=0.0,
            bos_token_id=66, eos_token_id=66)
BATCH, SEQ = 2, 11              # a batch of 2 rows of 11 tokens
N_IGNORED = 3                   # targets set to IGNORE in each batch

# GPT-2's own init (std 0.02, gains 1, biases 0) leaves a random model nearly linear, with
# almost uniform attention, so a wrong gradient would hardly show. These scales make every
# tensor carry signal:
#   - embeddings std 0.5, so the residual stream entering block 0 is O(1) (std ~0.7) and
#     ln_1's backward pass does not blow its gradients up by 1/std;
#   - c_attn and c_fc std 0.2 on LayerNorm outputs: attention scores and MLP inputs of
#     order 1, so attention is far from uniform and GELU is far from linear;
#   - output projections (both c_proj) std 0.1, so each block adds O(1) to the stream;
#   - biases N(0, 0.1^2), LayerNorm gains 1 + N(0, 0.1^2) and biases N(0, 0.1^2).
MATRIX_STD = {"wte": 0.5, "wpe": 0.5, "c_attn": 0.2, "c_fc": 0.2, "c_proj": 0.1}
BIAS_STD, GAIN_STD = 0.1, 0.1

# Optimiser run (nanoGPT's recipe, shortened).
N_STEPS = 10
CYCLE_LEN = 5                   # the optimiser's data walks a cycle of this many tokens
OPTIM = dict(max_lr=1e-2, min_lr=1e-3, warmup_steps=3, total_steps=N_STEPS,
             beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, max_norm=1.0)

# Evaluation.
EVAL_TEXT = DATA_DIR / "tokenizer_corpus.txt"
EVAL_CHARS = 6000               # the text is the first EVAL_CHARS characters of the file
EVAL_STRIDES = (128, 64, 37)    # 128 = the window (no overlap); 37 divides neither window nor text

# hf-check.
CHECK_TEXTS = (
    "ROMEO:\nBut soft, what light",
    "The history of the town begins with a small market on the river, where farmers sold grain.",
    "First document ends here.<|endoftext|>A second one starts.",
    "  leading spaces,\ttabs,\n\n\nblank lines   and  trailing   ",
)
N_GREEDY_TOKENS = 20


def hub_name(name: str) -> str:
    return name.removeprefix("transformer.")


def bfloat16_exact(t: torch.Tensor) -> torch.Tensor:
    """Round to the nearest value that bfloat16 holds exactly, kept as float32."""
    return t.to(torch.bfloat16).to(torch.float32)


def cross_entropy(model, ids: torch.Tensor, targets: torch.Tensor):
    """Mean cross-entropy over the targets that are not IGNORE, and the logits.

    The targets are already the next tokens (targets[b, t] follows ids[b, t]); passing them as
    labels= would make HF shift them a second time."""
    logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)),
                                             targets.view(-1), ignore_index=IGNORE)
    return loss, logits


def random_batch(rng: np.random.Generator, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """ids and targets (BATCH, SEQ) cut from random token rows, with N_IGNORED targets ignored
    and a repeated id in every row (so wte's gradient must add rows, not overwrite them)."""
    tokens = rng.integers(0, vocab_size, (BATCH, SEQ + 1))
    tokens[:, SEQ - 2] = tokens[:, 1]
    ids, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()
    targets.flat[rng.choice(targets.size, N_IGNORED, replace=False)] = IGNORE
    return ids.astype(np.int64), targets.astype(np.int64)


def cycle_batch(rng: np.random.Generator, cycle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows that walk `cycle` round from random starting points, N_IGNORED targets ignored.

    The next token is a fixed function of the current one, so ten steps teach it well enough
    for the gradient norm to fall below max_norm: the run has clipped and unclipped steps."""
    starts = rng.integers(0, len(cycle), (BATCH, 1))
    tokens = cycle[(starts + np.arange(SEQ + 1)) % len(cycle)]
    ids, targets = tokens[:, :-1].copy(), tokens[:, 1:].copy()
    targets.flat[rng.choice(targets.size, N_IGNORED, replace=False)] = IGNORE
    return ids.astype(np.int64), targets.astype(np.int64)


def gradients(model) -> dict[str, np.ndarray]:
    return {hub_name(n): p.grad.detach().numpy().copy() for n, p in model.named_parameters()}


def parameters(model) -> dict[str, np.ndarray]:
    return {hub_name(n): p.detach().numpy().copy() for n, p in model.named_parameters()}


def prefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{name}": array for name, array in arrays.items()}


# ----------------------------------------------------------------------------------------------
def tiny_model() -> GPT2LMHeadModel:
    """HF's GPT-2 at the TINY size, re-drawn at the scales above and rounded to bfloat16."""
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(GPT2Config(**TINY))
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn_like(p)
            if p.ndim >= 2:                        # wte, wpe and the four Conv1D matrices
                value = MATRIX_STD[name.split(".")[-2]] * noise
            elif ".ln_" in name or name.startswith("transformer.ln_f"):
                value = 1.0 + GAIN_STD * noise if name.endswith("weight") else BIAS_STD * noise
            else:                                  # Conv1D biases
                value = BIAS_STD * noise
            p.copy_(bfloat16_exact(value))
    assert model.lm_head.weight is model.transformer.wte.weight, "head not tied"
    return model.eval()


def load_tiny_model() -> GPT2LMHeadModel:
    model, info = GPT2LMHeadModel.from_pretrained(str(TRAIN_DIR), attn_implementation="eager",
                                                  output_loading_info=True)
    assert not any(info.values()), info
    assert model.lm_head.weight is model.transformer.wte.weight, "head not tied"
    return model.eval()


def loss_and_gradients(model, ids: np.ndarray, targets: np.ndarray):
    model.zero_grad(set_to_none=True)
    loss, logits = cross_entropy(model, torch.from_numpy(ids), torch.from_numpy(targets))
    loss.backward()
    return loss.detach().numpy().copy(), logits.detach().numpy().copy(), gradients(model)


def make_grads() -> None:
    TRAIN_DIR.mkdir(parents=True, exist_ok=True)
    tiny_model().save_pretrained(str(TRAIN_DIR), safe_serialization=True)
    (TRAIN_DIR / "generation_config.json").unlink(missing_ok=True)   # defaults only; not needed
    model = load_tiny_model()                      # record what HF computes from the files

    ids, targets = random_batch(np.random.default_rng(SEED), TINY["vocab_size"])
    loss, logits, grads = loss_and_gradients(model, ids, targets)
    loss64, _, grads64 = loss_and_gradients(copy.deepcopy(model).double(), ids, targets)
    np.savez_compressed(TRAIN_DIR / "grads.npz", ids=ids, targets=targets, loss=loss,
                        logits=logits, loss64=loss64, **prefixed("grad", grads),
                        **prefixed("grad64", grads64))

    # The key biases' gradients are zero in exact arithmetic (a shift shared by all of a query's
    # scores does not change its softmax), so those entries hold rounding noise only.
    worst = max(np.abs(grads[n] - grads64[n]).max() / np.abs(grads64[n]).max() for n in grads)
    print(f"grads: loss {float(loss):.6f} (float64 {float(loss64):.9f}), logits std "
          f"{logits.std():.3f}, {len(grads)} gradients, worst float32 error relative to the "
          f"tensor's largest entry {worst:.1e}")


# ----------------------------------------------------------------------------------------------
def learning_rate(step: int, max_lr: float, min_lr: float, warmup_steps: int,
                  total_steps: int, **_) -> float:
    """Linear warmup to max_lr, then a half cosine down to min_lr at total_steps."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def adamw(model) -> torch.optim.AdamW:
    """nanoGPT's groups: decay matrices and embeddings (ndim >= 2), not biases or LayerNorms."""
    params = [p for p in model.parameters() if p.requires_grad]   # tied wte appears once
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": OPTIM["weight_decay"]},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=OPTIM["max_lr"], betas=(OPTIM["beta1"], OPTIM["beta2"]),
                             eps=OPTIM["eps"], weight_decay=OPTIM["weight_decay"], foreach=False)


def make_optim() -> None:
    model = load_tiny_model()
    model.train()                                  # dropout is 0, so this changes nothing
    optimizer = adamw(model)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    rng = np.random.default_rng(SEED + 1)
    cycle = rng.choice(TINY["vocab_size"], CYCLE_LEN, replace=False)
    batches = [cycle_batch(rng, cycle) for _ in range(N_STEPS)]

    arrays = {name: np.array(value) for name, value in OPTIM.items()}
    arrays["batch_ids"] = np.stack([ids for ids, _ in batches])
    arrays["batch_targets"] = np.stack([targets for _, targets in batches])
    arrays["cycle"] = cycle.astype(np.int64)
    arrays.update(prefixed("init", parameters(model)))
    for step, (ids, targets) in enumerate(batches):
        lr = learning_rate(step, **OPTIM)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, _ = cross_entropy(model, torch.from_numpy(ids), torch.from_numpy(targets))
        loss.backward()
        loss = loss.detach()
        arrays.update(prefixed(f"step{step}/grad", gradients(model)))
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=OPTIM["max_norm"])
        arrays.update(prefixed(f"step{step}/clipped", gradients(model)))
        optimizer.step()
        arrays.update(prefixed(f"step{step}/param", parameters(model)))
        optimizer.zero_grad(set_to_none=True)
        arrays[f"step{step}/norm"] = norm.detach().numpy().copy()
        arrays[f"step{step}/lr"] = np.array(lr)
        arrays[f"step{step}/loss"] = loss.numpy().copy()
        print(f"step {step}: lr {lr:.5f}  loss {float(loss):.4f}  grad norm {float(norm):.4f}"
              + ("  (clipped)" if norm > OPTIM["max_norm"] else ""))
    np.savez_compressed(TRAIN_DIR / "optim.npz", **arrays)


# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def sliding_window_perplexity(model, ids: torch.Tensor, max_length: int, stride: int) -> dict:
    """The loop of HF's guide, plus an exact count of what it scores.

    Each window scores its last trg_len tokens; HF shifts the labels inside the model, so a
    window's first token is never a target. The guide's count subtracts that one token from
    every window, but once windows overlap the first token is already -100 and nothing is
    lost, so its figure can differ from the exact one recorded next to it."""
    seq_len = ids.size(1)
    guide_nll_sum, guide_n_tokens = 0.0, 0
    nll_sum, n_targets, n_windows = 0.0, 0, 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = ids[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = IGNORE
        outputs = model(input_ids, labels=target_ids)

        num_loss_tokens = (target_ids != IGNORE).sum().item() - target_ids.size(0)
        guide_nll_sum += outputs.loss * num_loss_tokens
        guide_n_tokens += num_loss_tokens

        log_probs = outputs.logits[:, :-1].double().log_softmax(-1)
        labels = target_ids[:, 1:]
        counted = labels != IGNORE
        nll_sum += float(-log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0][counted].sum())
        n_targets += int(counted.sum())
        n_windows += 1

        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    guide_mean = float(guide_nll_sum / guide_n_tokens)
    return {"stride": stride, "window": max_length, "n_windows": n_windows,
            "nll_sum": nll_sum, "n_targets": n_targets, "mean_nll": nll_sum / n_targets,
            "perplexity": math.exp(nll_sum / n_targets),
            "guide_nll_sum": float(guide_nll_sum), "guide_n_tokens": guide_n_tokens,
            "guide_mean_nll": guide_mean, "guide_perplexity": math.exp(guide_mean)}


def make_eval() -> None:
    model = GPT2LMHeadModel.from_pretrained(str(REFERENCE_MODEL), attn_implementation="eager")
    model.eval()
    text = EVAL_TEXT.read_bytes().decode("utf-8")[:EVAL_CHARS]      # keeps \r\n as it is
    ids = load_tokenizer()(text)["input_ids"]
    window = model.config.n_positions
    results = [sliding_window_perplexity(model, torch.tensor([ids]), window, stride)
               for stride in EVAL_STRIDES]
    info = {
        "model": str(REFERENCE_MODEL.relative_to(REPO_ROOT)),
        "text_source": str(EVAL_TEXT.relative_to(REPO_ROOT)),
        "text_slice": [0, EVAL_CHARS],
        "text_chars": len(text), "text_utf8_bytes": len(text.encode("utf-8")),
        "n_tokens": len(ids),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "note": ("nll_sum is the float64 sum of -log p(target) over the targets HF's loss "
                 "counts (shifted label != -100), from float32 logits; guide_* follow the "
                 "guide's own accumulation (loss * (valid labels - batch size))."),
        "strides": results,
        "token_ids": ids,
    }
    (DATA_DIR / "eval_reference.json").write_text(json.dumps(info, indent=1) + "\n",
                                                  encoding="utf-8")
    print(f"eval: {len(text)} characters, {len(ids)} tokens, window {window}")
    for r in results:
        print(f"  stride {r['stride']:3d}: {r['n_windows']} windows, {r['n_targets']} targets, "
              f"mean NLL {r['mean_nll']:.6f}, ppl {r['perplexity']:.4f}; guide "
              f"{r['guide_n_tokens']} tokens, ppl {r['guide_perplexity']:.4f}")


# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def make_hf_check(folder: Path, out: Path) -> None:
    model, info = GPT2LMHeadModel.from_pretrained(str(folder), attn_implementation="eager",
                                                  output_loading_info=True)
    model.eval()
    tokenizer = GPT2TokenizerFast.from_pretrained(str(folder))
    arrays = {"texts": np.array(json.dumps(CHECK_TEXTS)),
              "loading_info": np.array(json.dumps({k: sorted(map(str, v))
                                                   for k, v in info.items()}))}
    for k, text in enumerate(CHECK_TEXTS):
        ids = tokenizer(text)["input_ids"]
        arrays[f"ids/{k}"] = np.array(ids, np.int64)
        arrays[f"logits/{k}"] = model(torch.tensor([ids])).logits[0].numpy()
    prompt = torch.from_numpy(arrays["ids/0"])[None]
    eos = tokenizer.eos_token_id
    sequence = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=N_GREEDY_TOKENS, pad_token_id=eos)
    arrays["greedy"] = sequence[0].numpy()         # prompt + up to 20 tokens (stops at EOS)
    np.savez_compressed(out, **arrays)
    print(f"hf-check: loading info {json.loads(arrays['loading_info'][()])}")
    print(f"  tied head: {model.lm_head.weight is model.transformer.wte.weight}, eos {eos}")
    for k, text in enumerate(CHECK_TEXTS):
        print(f"  {text!r}: {arrays[f'ids/{k}'].tolist()}")
    print(f"  greedy: {arrays['greedy'].tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("grads", help="tiny model + one backward pass -> training_reference/")
    commands.add_parser("optim", help="ten AdamW steps -> training_reference/optim.npz")
    commands.add_parser("eval", help="sliding-window perplexity -> eval_reference.json")
    check = commands.add_parser("hf-check", help="what HF computes from a minillm checkpoint")
    check.add_argument("folder", type=Path)
    check.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    torch.set_num_threads(2)
    if args.command == "grads":
        make_grads()
    elif args.command == "optim":
        make_optim()
    elif args.command == "eval":
        make_eval()
    else:
        make_hf_check(args.folder, args.out)


if __name__ == "__main__":
    main()
