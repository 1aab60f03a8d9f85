"""Loss and perplexity of a text, with the sliding window of HF's perplexity guide.

A text longer than the model's context is scored window by window. Each window holds up to
`window` tokens and starts `stride` after the previous one; only the tokens that the previous
window did not score are scored, so no token is scored twice, each with at least
window - stride tokens of context before it. A window's first token has no context inside
the window and is never a target: with stride = window (disjoint windows, HF's default in its
guide) the first token of every window goes unscored; a smaller stride scores every token but
the text's first, at more compute.

    perplexity = exp(mean NLL),    nats per byte = total NLL / UTF-8 bytes of the text

The first token of the text is never scored: nothing comes before it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minillm.model.loss import IGNORE_INDEX, negative_log_likelihood


@dataclass
class TextScore:
    nll_sum: float        # total negative log-likelihood, nats
    n_tokens: int         # tokens scored
    n_bytes: int          # UTF-8 bytes of the text
    n_chars: int          # characters of the text

    @property
    def loss(self) -> float:
        """Mean NLL in nats per token: the cross-entropy a training run reports."""
        return self.nll_sum / self.n_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def nats_per_byte(self) -> float:
        return self.nll_sum / self.n_bytes

    @property
    def nats_per_char(self) -> float:
        """The figure that compares with character-level models."""
        return self.nll_sum / self.n_chars


def window_targets(window_ids: np.ndarray, n_new: int) -> np.ndarray:
    """Targets for one window: position t predicts token t + 1, and only the last n_new tokens
    are scored (the others are context the previous window already scored). (L,) -> (L - 1,)"""
    n_context = len(window_ids) - n_new
    targets = window_ids[1:].astype(np.int64)                    # (L - 1,)
    targets[: max(n_context - 1, 0)] = IGNORE_INDEX              # target t is token t + 1
    return targets


def score_ids(model, ids, stride: int | None = None, window: int | None = None) -> tuple[float, int]:
    """(total NLL, tokens scored) of a token sequence, by the sliding window described above."""
    ids = np.asarray(ids)
    window = window or model.config.n_positions
    stride = window if stride is None else stride
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window of {window} tokens, got {stride}")
    if len(ids) < 2:
        raise ValueError(f"a text of {len(ids)} token(s) has nothing to score: it needs at least 2")
    nll_sum, n_tokens, scored_up_to = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        window_ids = ids[begin:end]                                       # (L,)
        logits = model(window_ids)[:-1]                                   # (L - 1, V)
        nll, n = negative_log_likelihood(logits, window_targets(window_ids, end - scored_up_to))
        nll_sum, n_tokens, scored_up_to = nll_sum + nll, n_tokens + n, end
        if end == len(ids):
            break
    return nll_sum, n_tokens


def score_text(model, tokenizer, text: str, stride: int | None = None) -> TextScore:
    """Loss, perplexity and nats per byte / character of `text` under `model`."""
    ids = tokenizer.encode(text, allowed_special="all")
    nll_sum, n_tokens = score_ids(model, ids, stride)
    return TextScore(nll_sum, n_tokens, len(text.encode("utf-8")), len(text))
