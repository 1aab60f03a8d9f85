"""Write the model card (weights/shakespeare/README.md) from the shipped run: its log, its
evaluation on the held-out plays, and a sample.

    minillm train --config recipes/shakespeare/config.toml   # into runs/shakespeare
    cp runs/shakespeare/{config.json,model.safetensors,vocab.json,merges.txt,log.jsonl,loss.png,trainer_state.json} weights/shakespeare/
    python recipes/shakespeare/make_card.py

Every measured figure in the card comes from this script; the paragraph on how the shipped run
was shortened on the way (RUN_HISTORY) is written by hand, and a new run should replace it.
"""
from __future__ import annotations

import json
from pathlib import Path

from minillm.checkpoint.pretrained import load_pretrained
from minillm.inference.perplexity import score_text
from minillm.training.plot import read_log

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "weights" / "shakespeare"
VAL = ROOT / "data" / "shakespeare" / "val.txt"
SLICE_CHARS = 20_000            # the committed slice tests/test_default_model.py checks
NANOGPT_CPU, NANOGPT_GPU = 1.88, 1.47   # karpathy/nanoGPT README, shakespeare_char val loss
SAMPLE = dict(do_sample=True, temperature=0.8, top_k=40)
SAMPLE_TOKENS = 200
RUN_HISTORY = """The machine was shared with other work, so the run was
shortened twice on the way (Ctrl-C, then `--resume` with a smaller `steps`): started with
`steps = 1800`, resumed at step 175 with 1300 and at step 626 with 1100, the value in the config
now. The cosine schedule depends on `steps`, so a fresh run of the config follows the same recipe
with a lower learning rate between steps 100 and 626 (by at most 0.00025, at step 625, of a
peak of 0.002), and gives a similar model, not this one bit for bit."""


def sample_text(model, tokenizer, prompt: str, n_new: int, seed: int = 0) -> str:
    """n_new sampled tokens after prompt. Past the model's context, continue in chunks, each
    from the last half-context of tokens (the model cannot see further back anyway)."""
    ids = tokenizer.encode(prompt)
    context = model.config.n_positions
    out = list(model.generate(ids, max_new_tokens=min(n_new, context - len(ids)), seed=seed, **SAMPLE))
    chunk = 0
    while len(out) - len(ids) < n_new:
        chunk += 1
        keep = out[-(context // 2):]
        step = min(n_new - (len(out) - len(ids)), context - len(keep))
        out += list(model.generate(keep, max_new_tokens=step, seed=seed + chunk, **SAMPLE))[len(keep):]
    return tokenizer.decode(out)


def training_minutes(train_records) -> float:
    """Time spent in training steps (batch tokens / tokens per second, summed), in minutes."""
    return sum(r["batch_tokens"] / r["tokens_per_s"] for r in train_records) / 60


def curve_table(train, val, state) -> list[str]:
    """Validation loss against training minutes, from the log."""
    batch_tokens = state["config"]["batch_size"] * state["config"]["context"]
    for r in train:
        r["batch_tokens"] = batch_tokens
    minutes_at = {}
    elapsed = 0.0
    for r in train:
        elapsed += r["batch_tokens"] / r["tokens_per_s"] / 60
        minutes_at[r["step"]] = elapsed
    rows = ["| step | training minutes | validation loss (nats/token) |", "| ---: | ---: | ---: |"]
    rows += [f"| {r['step']} | {minutes_at.get(r['step'], 0):.1f} | {r['val_loss']:.4f} |" for r in val]
    return rows


def main() -> None:
    state = json.loads((RUN / "trainer_state.json").read_text())
    config = state["config"]
    train, val = read_log(RUN / "log.jsonl")
    model, tokenizer = load_pretrained(RUN)
    text = VAL.read_text(encoding="utf-8")
    whole_128 = score_text(model, tokenizer, text, stride=128)
    whole_64 = score_text(model, tokenizer, text, stride=64)
    slice_score = score_text(model, tokenizer, text[:SLICE_CHARS], stride=128)
    final_train = sum(r["loss"] for r in train[-50:]) / len(train[-50:])
    sample = sample_text(model, tokenizer, "ROMEO:", SAMPLE_TOKENS)
    table = curve_table(train, val, state)
    n_params = model.config.n_params()
    n_train_tokens = len(tokenizer.encode((ROOT / "data" / "shakespeare" / "train.txt").read_text(encoding="utf-8"),
                                          allowed_special="all"))
    card = f"""# shakespeare: a small GPT-2 that minillm trained

A {model.config.n_layer}-layer, {model.config.n_embd}-wide GPT-2 ({model.config.n_head} heads,
context {model.config.n_positions}, {n_params / 1e6:.2f}M parameters, tied embedding) with its own
{tokenizer.n_vocab}-token byte-level BPE, trained from scratch by `minillm train` on 2 CPU cores.
It is minillm's default model: `minillm generate "ROMEO:"`, `GPT2.from_pretrained("shakespeare")`.
The folder is a complete Hugging Face GPT-2 checkpoint (`GPT2LMHeadModel`, `GPT2TokenizerFast`).

## Data
The plays and poems of Shakespeare from Project Gutenberg (modern spelling), see
[data/shakespeare/README.md](../../data/shakespeare/README.md). Three whole plays are held out and
never trained on: Macbeth, Twelfth Night and King Richard II (`data/shakespeare/val.txt`).
Vocabulary: {tokenizer.n_vocab} tokens from `train_bpe` on the training plays only
({whole_128.n_chars / (whole_128.n_tokens + 1):.2f} characters per token on the held-out plays).

## Training
`minillm train --config recipes/shakespeare/config.toml` ({config['steps']} steps of
{config['batch_size']} x {config['context']} tokens = {config['steps'] * config['batch_size'] * config['context'] / 1e6:.1f}M
tokens, about {config['steps'] * config['batch_size'] * config['context'] / n_train_tokens:.1f}
passes over the {n_train_tokens / 1e6:.2f}M tokens of the training plays; AdamW lr {config['lr']} -> {config['min_lr']} with {config['warmup_steps']} warm-up steps,
weight decay {config['weight_decay']}, betas ({config['beta1']}, {config['beta2']}), clipping at {config['grad_clip']};
backend {config['backend']}, seed {config['seed']}).
Time in training steps: {training_minutes(train):.0f} minutes on a shared 2-core machine (log.jsonl
has every step; loss.png the curve). {RUN_HISTORY}

## Results
| | |
| --- | --- |
| final training loss (mean of the last 50 steps) | {final_train:.4f} nats/token |
| validation loss in training (last evaluation, {config['eval_windows']} windows) | {val[-1]['val_loss']:.4f} nats/token |
| held-out plays, all of val.txt, stride 128 | {whole_128.loss:.4f} nats/token, {whole_128.nats_per_char:.4f} nats/char, perplexity {whole_128.perplexity:.1f} |
| held-out plays, all of val.txt, stride 64 | {whole_64.loss:.4f} nats/token, {whole_64.nats_per_char:.4f} nats/char |
| validation slice (val.txt[:{SLICE_CHARS}], stride 128) | {slice_score.loss:.4f} nats/token |

Stride 64 scores every token but the first, each with at least 64 tokens before it; stride 128
(disjoint windows, HF's guide's semantics) cannot score the first token of each window and gives
the others less context. nats per character is what compares with character-level models: nanoGPT's baby Shakespeare
model reaches {NANOGPT_CPU} on a laptop CPU and {NANOGPT_GPU} on a GPU (karpathy/nanoGPT, shakespeare_char),
on a random 10% of the lines of one file rather than on unseen plays, which is an easier test.

Validation loss against training minutes:

{chr(10).join(table)}

## Sample
200 tokens after "ROMEO:", sampled with temperature 0.8, top-k 40, seed 0. The context is
{model.config.n_positions} tokens, so the first {model.config.n_positions - 2} come from
`minillm generate --do-sample --temperature 0.8 --top-k 40 --seed 0 --max-new-tokens {model.config.n_positions - 2} "ROMEO:"`
and the rest continue from the last {model.config.n_positions // 2} tokens (`sample_text` in recipes/shakespeare/make_card.py):

```
{sample}
```

Rebuild the figures: `python recipes/shakespeare/make_card.py`;
`minillm eval --model shakespeare --text data/shakespeare/val.txt --stride 128`.
"""
    (RUN / "README.md").write_text(card, encoding="utf-8")
    print(card)


if __name__ == "__main__":
    main()
