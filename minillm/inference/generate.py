"""Autoregressive generation with a KV cache: prefill the prompt once, then one token per step.

    prefill:  logits = model(prompt, cache)          all T prompt positions in one pass; the cache
                                                     now holds every layer's keys and values
    decode:   repeat: pick a token from the last logits (greedy or sampled, see sampling.py),
              logits = model(token, cache)           1 position per step, attending to the cache

Arguments mean what they mean in Hugging Face's `model.generate`: max_new_tokens / max_length
(prompt + new, counting left padding), do_sample, temperature, top_k, top_p, eos_token_id,
pad_token_id, attention_mask. Differences: `seed` replaces torch's global RNG; temperature 0
means greedy; top_k defaults to None (HF silently uses top_k=50 when sampling: pass top_k=50
to sample like HF); eos_token_id defaults to None (never stop early; HF reads GPT-2's 50256 from
the model's generation config).

The context limit: len(prompt) + max_new_tokens may not exceed config.n_positions. Longer
requests raise ValueError up front, naming both numbers; nothing is truncated or slid.

Non-finite logits: if the model's logits hold NaN or inf at some step (broken weights, a bad
layer_norm_epsilon), generation stops with NonFiniteLogitsError (a ValueError and a
FloatingPointError) saying at which step, and in which layer the first NaN/inf appeared.

Batches: prompts of different lengths are left-padded (see `pad_batch`) with an attention mask;
each row then generates exactly what it would alone. A row that emits EOS is finished: later
positions get pad_token_id (default: the EOS id), and generation stops once every row is done.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Iterator, Sequence

import numpy as np

from minillm.inference.kv_cache import KVCache
from minillm.inference.sampling import NonFiniteLogitsError, TokenChooser
from minillm.model.inputs import check_token_ids


@dataclass
class Step:
    """One decoding step: the token chosen for each row and the logits it was chosen from."""
    token_ids: np.ndarray     # (B,) int64; pad_token_id for rows that had already finished
    logits: np.ndarray        # (B, V) float32, the model's raw next-token logits


@dataclass
class _Request:
    """Validated inputs of one generate call."""
    ids: np.ndarray                  # (B, T) int64 prompt, left-padded
    mask: np.ndarray | None          # (B, T) int64 attention mask, None when nothing is padded
    squeeze: bool                    # the prompt was 1-D: return 1-D
    max_new_tokens: int
    choose: TokenChooser
    eos_ids: np.ndarray | None       # (n_eos,) int64 stop tokens, or None
    pad_token_id: int
    use_cache: bool


@dataclass(frozen=True)
class GenerationConfig:
    """What generate, stream and generate_steps take besides the prompt, with HF's names and
    meanings (see the module docstring); each is a keyword argument of those functions."""
    max_new_tokens: int | None = None    # new tokens; or give max_length, not both
    max_length: int | None = None        # prompt (left padding included) + new tokens
    do_sample: bool = False              # False: greedy
    temperature: float = 1.0             # only when sampling; 0 means greedy
    top_k: int | None = None             # keep the k most likely tokens (HF samples with 50)
    top_p: float | None = None           # keep the smallest set whose probability is >= top_p
    seed: int | None = None              # the sampler's random generator; None: fresh entropy
    eos_token_id: int | Sequence[int] | None = None   # a row stops at any of these
    pad_token_id: int | None = None      # written after a row stops; default: the first EOS id or 0
    attention_mask: np.ndarray | None = None          # (B, T) 0 on left padding, 1 on tokens
    use_cache: bool = True               # False: recompute the whole sequence every step


# ------------------------------------------------------------------------------------------------
def generate(model, ids, max_new_tokens: int | None = None, **options) -> np.ndarray:
    """Prompt + generated ids: (T,) -> (T + n,), (B, T) -> (B, T + n), int64.

    n is max_new_tokens, or fewer if every row reached eos_token_id. The keyword arguments are
    the fields of GenerationConfig; all are checked before any work is done.
    """
    request = _prepare(model, ids, _config(max_new_tokens, options))
    new_ids = [step.token_ids for step in _decode(model, request)]
    out = np.concatenate([request.ids, np.stack(new_ids, axis=1)], axis=1)
    return out[0] if request.squeeze else out


def stream(model, ids, max_new_tokens: int | None = None, **options) -> Iterator:
    """Yield the new tokens one step at a time: an int for a 1-D prompt, a (B,) array for a
    batch. Same arguments as `generate`; they are checked before the first token is computed."""
    request = _prepare(model, ids, _config(max_new_tokens, options))
    if request.squeeze:
        return (int(step.token_ids[0]) for step in _decode(model, request))
    return (step.token_ids for step in _decode(model, request))


def generate_steps(model, ids, max_new_tokens: int | None = None, **options) -> Iterator[Step]:
    """Like `stream`, but each step also carries the (B, V) logits the tokens were chosen from."""
    return _decode(model, _prepare(model, ids, _config(max_new_tokens, options)))


def pad_batch(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts of different lengths into one batch.

    Returns ids (B, T_max) int64 and attention_mask (B, T_max) int64, 0 on padding. Padding
    goes on the left so every row's last position is a real token: the next token is
    predicted from there.
    """
    if len(prompts) == 0:
        raise ValueError("pad_batch needs at least one prompt, got none")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty; every prompt needs at least one token")
    width = max(lengths)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------------
def _decode(model, request: _Request) -> Iterator[Step]:
    """Prefill, then one forward pass of one token per step; no work after the last token."""
    B, T = request.ids.shape
    total = T + request.max_new_tokens
    mask = None
    if request.mask is not None:
        # The mask for every step, allocated once: new tokens are always real (HF appends 1s).
        mask = np.ones((B, total), dtype=np.int64)
        mask[:, :T] = request.mask
    cache = KVCache.for_model(model.config, B, max_len=total) if request.use_cache else None
    # The whole sequence: the full-recompute baseline feeds it, and a NaN report replays it.
    sequence = np.empty((B, total), dtype=np.int64)
    sequence[:, :T] = request.ids
    logits = _last_logits(model, request.ids, _upto(mask, T), cache)

    unfinished = np.ones(B, dtype=bool)
    for step in range(request.max_new_tokens):
        _check_finite(model, logits, sequence[:, :T + step], _upto(mask, T + step), step)
        ### BEGIN SOLUTION a4: one decoding step (choose, handle EOS, yield, feed the new token)
        token_ids = request.choose(logits)                                   # (B,)
        if request.eos_ids is not None:
            token_ids = np.where(unfinished, token_ids, request.pad_token_id)
            unfinished &= ~np.isin(token_ids, request.eos_ids)
        yield Step(token_ids, logits)
        if step == request.max_new_tokens - 1 or not unfinished.any():
            return
        length = T + step + 1
        sequence[:, length - 1] = token_ids
        if cache is not None:
            logits = _last_logits(model, token_ids[:, None], _upto(mask, length), cache)
        else:
            logits = _last_logits(model, sequence[:, :length], _upto(mask, length), None)
        ### END SOLUTION


def _upto(mask: np.ndarray | None, length: int) -> np.ndarray | None:
    return None if mask is None else mask[:, :length]


def _last_logits(model, ids: np.ndarray, mask: np.ndarray | None, cache: KVCache | None) -> np.ndarray:
    """Logits of the last position of each row: (B, V) float32. Only that position's logits
    choose the next token, so the LM head (a (T, C) x (C, V) matmul) runs on it alone."""
    return model.forward(ids, attention_mask=mask, cache=cache, last_only=True).logits[:, -1]


def _check_finite(model, logits: np.ndarray, sequence: np.ndarray, mask: np.ndarray | None,
                  step: int) -> None:
    """NonFiniteLogitsError if any logit is NaN or inf, saying where the first one arose."""
    bad_rows = np.flatnonzero(~np.isfinite(logits).all(axis=-1))
    if bad_rows.size == 0:
        return
    row = int(bad_rows[0])
    in_row = f" in row {row} of the batch" if len(logits) > 1 else ""
    where = _first_non_finite_layer(model, sequence[row], None if mask is None else mask[row])
    raise NonFiniteLogitsError(
        f"the model's logits are NaN or inf at generation step {step}{in_row}: the first "
        f"non-finite values appear in {where}; check the weights and the config "
        f"(layer_norm_epsilon={model.config.layer_norm_epsilon!r})")


def _first_non_finite_layer(model, ids: np.ndarray, mask: np.ndarray | None) -> str:
    """Replay one row's sequence with every hidden state kept; name where NaN/inf first shows.
    Runs only after a failure, so its cost (one uncached forward) does not matter."""
    n_layer = model.config.n_layer
    out = model.forward(ids[None], attention_mask=None if mask is None else mask[None],
                        output_hidden_states=True)
    real = slice(None) if mask is None else mask.astype(bool)     # padding positions are never read
    for index, hidden in enumerate(out.hidden_states):
        if not np.isfinite(hidden[0][real]).all():
            if index == 0:
                return "the embeddings (wte + wpe)"
            if index < n_layer:
                return f"the output of block {index - 1} (blocks count from 0)"
            return f"the output of block {n_layer - 1} or the final LayerNorm ln_f"
    return "the LM head: every hidden state is finite, but the logits overflow float32"


# ------------------------------------------------------------------------------------------------
def _config(max_new_tokens: int | None, options: dict) -> GenerationConfig:
    """The GenerationConfig of one call; TypeError naming any keyword it does not know."""
    known = [field.name for field in fields(GenerationConfig)]
    unexpected = sorted(options.keys() - set(known))
    if unexpected:
        raise TypeError(f"unexpected argument(s) {unexpected}; expected some of {known[1:]}")
    return GenerationConfig(max_new_tokens=max_new_tokens, **options)


def _prepare(model, ids, config: GenerationConfig) -> _Request:
    """Check the prompt and every option against the model (ValueError naming the value and
    what was expected; TypeError for ids that are not integers)."""
    model_config = model.config
    ids_2d, squeeze = _check_prompt(ids, model_config.vocab_size)
    T = ids_2d.shape[1]
    n_new = _check_length(T, config.max_new_tokens, config.max_length, model_config.n_positions)
    mask = _check_mask(config.attention_mask, ids_2d.shape, squeeze)
    choose = TokenChooser(config.do_sample, config.temperature, config.top_k, config.top_p, config.seed)
    eos_ids = _check_token_list("eos_token_id", config.eos_token_id, model_config.vocab_size)
    if config.pad_token_id is None:
        pad_token_id = int(eos_ids[0]) if eos_ids is not None else 0
    else:
        pad_token_id = int(_check_token_list("pad_token_id", config.pad_token_id,
                                             model_config.vocab_size)[0])
    if not isinstance(config.use_cache, (bool, np.bool_)):
        raise ValueError(f"use_cache must be True or False, got {config.use_cache!r}")
    return _Request(ids_2d, mask, squeeze, n_new, choose, eos_ids, pad_token_id, bool(config.use_cache))


def _check_prompt(ids, vocab_size: int) -> tuple[np.ndarray, bool]:
    """The checks only generation needs (a ragged batch, an empty prompt), then the model's own
    (check_token_ids): (T,) or (B, T) ids in [0, vocab_size) -> (B, T) int64, and whether it was 1-D."""
    try:
        array = np.asarray(ids)
    except ValueError as error:       # ragged nested lists
        raise ValueError(f"prompts of different lengths must be padded first (see pad_batch): {error}") from None
    if array.dtype == object:
        raise ValueError("prompts of different lengths must be padded first (see pad_batch)")
    if array.size == 0:
        raise ValueError(f"the prompt is empty (shape {array.shape}); generation needs at least one "
                         f"token to start from (e.g. <|endoftext|>, id 50256 for GPT-2)")
    return check_token_ids(array, vocab_size)


def _check_length(prompt_len: int, max_new_tokens, max_length, n_positions: int) -> int:
    """The number of new tokens, from max_new_tokens or max_length, checked against the context."""
    if (max_new_tokens is None) == (max_length is None):
        raise ValueError("pass exactly one of max_new_tokens (new tokens) or max_length (prompt + new "
                         f"tokens), got max_new_tokens={max_new_tokens!r}, max_length={max_length!r}")
    if max_length is not None:
        if not _is_int(max_length) or max_length <= prompt_len:
            raise ValueError(f"max_length={max_length!r} counts the prompt too, so it must be an int "
                             f"greater than the prompt length {prompt_len}")
        max_new_tokens = max_length - prompt_len
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if prompt_len > n_positions:
        raise ValueError(f"the prompt has {prompt_len} tokens but the model's context is "
                         f"{n_positions} tokens (n_positions)")
    if prompt_len + max_new_tokens > n_positions:
        raise ValueError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) = "
                         f"{prompt_len + max_new_tokens} exceeds the model's context of {n_positions} "
                         f"tokens; ask for at most {n_positions - prompt_len} new tokens")
    return int(max_new_tokens)


def _check_mask(attention_mask, shape: tuple[int, int], squeeze: bool) -> np.ndarray | None:
    """A (B, T) 0/1 left-padding mask as int64, or None when no position is padded."""
    if attention_mask is None:
        return None
    mask = np.asarray(attention_mask)
    if squeeze and mask.ndim == 1:
        mask = mask[None, :]
    if mask.shape != shape:
        raise ValueError(f"attention_mask must have the shape of the ids, {shape}, got {mask.shape}")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    if (np.diff(mask.astype(np.int64), axis=1) < 0).any() or not mask[:, -1].all():
        raise ValueError("attention_mask must be left padding (0s, then 1s in every row) so that each "
                         "row ends in a real token; use pad_batch to build it")
    return None if mask.all() else mask.astype(np.int64)


def _check_token_list(name: str, value, vocab_size: int) -> np.ndarray | None:
    """None, an id or a list of ids, each in [0, vocab_size) -> (n,) int64 or None."""
    if value is None:
        return None
    values = [value] if _is_int(value) else list(value) if isinstance(value, (list, tuple, np.ndarray)) else []
    if not values or not all(_is_int(v) and 0 <= v < vocab_size for v in values):
        raise ValueError(f"{name} must be a token id (or list of ids) in [0, {vocab_size}), got {value!r}")
    return np.asarray(values, dtype=np.int64)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
