"""Choosing the next token from the model's logits: greedy, or sampling after filtering.

Sampling follows Hugging Face's `generate(do_sample=True)` step by step, in HF's order:

    1. temperature:  logits / temperature          (< 1 sharpens, > 1 flattens)
    2. top-k:        keep the k largest logits     (every logit tied with the k-th is kept too)
    3. top-p:        keep the smallest set of most likely tokens whose probability adds up to
                     >= top_p (always at least one token)
    4. draw one token from softmax(filtered logits)

Filtered tokens get logit -inf, so probability exactly 0. temperature == 0 means greedy
(argmax of the raw logits), where HF would refuse it; any other temperature must be > 0. All
functions work on (..., V) logits, which must be finite or -inf (NaN or +inf raise
NonFiniteLogitsError: there is no distribution to draw from).

A tiny temperature (say 1e-40) would overflow float32 in logits / temperature, turning the
distribution into NaN. There is no floor: when the division would overflow, the max-subtracted
logits are divided instead (in float64, then rounded to float32). softmax ignores the shift, the
largest logit becomes 0 and the rest very negative, so sampling tends to greedy, as it should.

Numerics: logits are float32. The top-p cut reproduces HF's float32 arithmetic (float32
probabilities, running sums accumulated in float64 and rounded to float32 as torch does on the
CPU, compared against float32(1 - top_p)), so boundary cases such as a uniform distribution
keep exactly the tokens HF keeps. The final distribution we draw from is computed in float64.
Among tied logits at the top-p cut the lower token ids are dropped first (a stable sort); torch
leaves that order unspecified beyond 16 tokens, so HF may drop a different one of the tied ids,
but the number of tokens kept and their probabilities are the same.
"""
from __future__ import annotations

import numbers

import numpy as np


class NonFiniteLogitsError(FloatingPointError, ValueError):
    """Logits holding NaN or +inf (broken weights or settings): no token can be chosen from them."""


def check_logits(logits: np.ndarray) -> None:
    """Logits may be finite or -inf (a filtered token), with at least one finite per row."""
    logits = np.asarray(logits)
    if np.isfinite(logits).all():     # the usual case, in one pass (a decoding step: 10-40 us)
        return
    if np.isnan(logits).any() or np.isposinf(logits).any():
        raise NonFiniteLogitsError("the logits hold NaN or +inf values; no token can be chosen")
    if not np.isfinite(logits).any(axis=-1).all():
        raise NonFiniteLogitsError("a row of logits is all -inf; there is no token left to choose")


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError naming the bad value and what was expected."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 (or None for no top-k filter), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real)
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] (or None for no top-p filter), got {top_p!r}")


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """logits / temperature, in float32 like HF's TemperatureLogitsWarper; computed from the
    max-subtracted logits where that would overflow (see the module docstring).  (..., V) -> (..., V)"""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scaled = logits / np.float32(temperature)
    if not (np.isinf(scaled) & np.isfinite(logits)).any():
        return scaled                      # HF's arithmetic, bit for bit
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)   # <= 0, max at 0
    with np.errstate(over="ignore"):
        return (shifted / temperature).astype(np.float32)    # overflow can only reach -inf


def top_k_filter(logits: np.ndarray, top_k: int) -> np.ndarray:
    """Set every logit below the k-th largest to -inf; ties with the k-th largest survive,
    so more than k tokens can remain (HF's TopKLogitsWarper).  (..., V) -> (..., V)"""
    ### BEGIN SOLUTION a4: the top-k filter (ties with the k-th largest survive)
    vocab = logits.shape[-1]
    k = min(int(top_k), vocab)
    kth_largest = np.partition(logits, vocab - k, axis=-1)[..., vocab - k, None]   # (..., 1)
    return np.where(logits < kth_largest, np.float32(-np.inf), logits)
    ### END SOLUTION


def top_p_filter(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens with probability mass >= top_p (HF's
    TopPLogitsWarper): sort ascending, drop the tokens whose running mass is <= 1 - top_p,
    never drop the most likely one.  (..., V) -> (..., V)"""
    if top_p >= 1.0:
        return logits                      # HF skips the filter at top_p = 1
    return np.where(_top_p_mask(logits, _softmax_weights(logits), top_p), logits, np.float32(-np.inf))


def _top_p_mask(logits: np.ndarray, weights: np.ndarray, top_p: float) -> np.ndarray:
    """Which tokens survive top-p, given the softmax weights exp(logits - max) of the same
    (..., V) logits (computed once by the caller, who reuses them).  -> (..., V) bool"""
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_weights = weights.reshape(flat_logits.shape)
    # HF's float32 probabilities: the float64 softmax rounded to float32.
    probs = (flat_weights / flat_weights.sum(axis=-1, keepdims=True)).astype(np.float32)
    threshold = np.float32(1.0 - top_p)    # torch compares a float32 tensor to float32(1 - p)
    kept = np.zeros(flat_logits.shape, dtype=bool)
    for row in range(len(flat_logits)):
        kept[row, _top_p_kept(flat_logits[row], probs[row], threshold)] = True
    return kept.reshape(logits.shape)


def _top_p_kept(logits: np.ndarray, probs: np.ndarray, threshold: np.float32) -> np.ndarray:
    """Indices that survive top-p in one (V,) row; probs is softmax(logits) in float32.

    Sorting all 50257 tokens costs more than a decode step's attention, yet only the few most
    likely can survive. So sort just the n most likely (n = 256, 1024, ... until enough): the
    rest are dropped anyway when all of them together weigh <= 1 - top_p, because the running
    mass of the ascending sort has not passed that total when it reaches them.
    """
    ### BEGIN SOLUTION a4: the top-p cut of one row (which token ids survive)
    n = 256
    while True:
        if n >= len(probs):
            candidates, outside_mass = np.flatnonzero(probs > 0), 0.0
        else:
            # Everything at least as likely as the n-th most likely token (ties included), so
            # every token outside is strictly less likely than every candidate.
            nth_largest = np.partition(probs, len(probs) - n)[len(probs) - n]
            candidates = np.flatnonzero((probs >= nth_largest) & (probs > 0))
            outside_mass = probs.sum(dtype=np.float64) - probs[candidates].sum(dtype=np.float64)
            if np.float32(outside_mass) > threshold:
                n *= 4
                continue
        # A stable sort puts tied tokens in id order, as torch's sort does up to 16 tokens.
        order = candidates[np.argsort(logits[candidates], kind="stable")]       # ascending
        # torch accumulates a float32 cumsum in float64 and rounds each partial sum to float32.
        running_mass = (outside_mass + np.cumsum(probs[order], dtype=np.float64)).astype(np.float32)
        drop = running_mass <= threshold
        drop[-1] = False                   # always keep the most likely token
        return order[~drop]
    ### END SOLUTION


def filtered_logits(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> np.ndarray:
    """Temperature, then top-k, then top-p; filtered entries are -inf.  (..., V) float32."""
    _check_filter_args(temperature, top_k, top_p)
    check_logits(logits)
    logits = _temperature_top_k(logits, temperature, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return logits


def filtered_probs(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> np.ndarray:
    """The distribution a sampled token is drawn from: softmax of the filtered logits,
    float64, exactly 0 on filtered tokens.  (..., V) -> (..., V)"""
    _check_filter_args(temperature, top_k, top_p)
    check_logits(logits)
    return _filtered_probs(logits, temperature, top_k, top_p)


def _check_filter_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        raise ValueError("temperature 0 means greedy decoding; there is no distribution to filter")


def _temperature_top_k(logits: np.ndarray, temperature: float, top_k: int | None) -> np.ndarray:
    """Steps 1 and 2, on float32 logits.  (..., V) -> (..., V) float32"""
    logits = np.asarray(logits, dtype=np.float32)
    if temperature != 1.0:
        logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    return logits


def _filtered_probs(logits: np.ndarray, temperature: float, top_k: int | None,
                    top_p: float | None) -> np.ndarray:
    """filtered_probs without the argument checks (TokenChooser checks once, up front).

    One exp over the vocabulary serves both top-p and the final distribution. The result is
    bit for bit softmax64(filtered logits): the max is the same (top-p keeps the most likely
    token), exp(-inf) = 0, and the sum runs over the same full-width row.
    """
    logits = _temperature_top_k(logits, temperature, top_k)
    weights = _softmax_weights(logits)                                  # (..., V) float64
    if top_p is not None and top_p < 1.0:
        weights = np.where(_top_p_mask(logits, weights, top_p), weights, 0.0)
    return weights / weights.sum(axis=-1, keepdims=True)


def greedy(logits: np.ndarray) -> np.ndarray:
    """The most likely token of each row (the first one on ties, like torch.argmax).  (..., V) -> (...)"""
    return np.argmax(logits, axis=-1)


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None) -> np.ndarray:
    """Draw one token per row from filtered_probs.  (B, V) -> (B,), or (V,) -> ()"""
    if temperature == 0:
        check_logits(logits)
        return greedy(logits)
    return draw(filtered_probs(logits, temperature, top_k, top_p), rng)


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row of a (B, V) distribution, by inverse CDF with one uniform number per
    row from `rng`, so a seeded generator gives the same tokens every time.  -> (B,)"""
    if probs.ndim == 1:
        return draw(probs[None, :], rng)[0]
    cdf = np.cumsum(probs, axis=-1)                                  # (B, V)
    targets = rng.random(probs.shape[0]) * cdf[:, -1]                # (B,) uniform in [0, total)
    # First index whose cdf exceeds the target: a token with probability 0 never wins,
    # because its cdf equals the one before it.
    picks = (cdf <= targets[:, None]).sum(axis=-1)
    last_possible = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(picks, last_possible)                          # guard against rounding at 1


class TokenChooser:
    """Greedy or seeded sampling with fixed settings, as `generate` uses it: chooser(logits) -> ids."""

    def __init__(self, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None):
        if not isinstance(do_sample, (bool, np.bool_)):
            raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
        check_sampling_args(temperature, top_k, top_p)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
        self.do_sample = bool(do_sample) and temperature != 0
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.rng = np.random.default_rng(seed)   # our own generator: the global RNG is never touched

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """(B, V) logits -> (B,) int64 token ids."""
        check_logits(logits)
        if not self.do_sample:
            return greedy(logits).astype(np.int64)
        # The settings were checked in __init__: no checks per token.
        probs = _filtered_probs(logits, self.temperature, self.top_k, self.top_p)
        return draw(probs, self.rng).astype(np.int64)


def _softmax_weights(logits: np.ndarray) -> np.ndarray:
    """exp(logits - max) over the last axis in float64, the unnormalised softmax; -inf entries
    get exactly 0. Divided by its sum it is the float64 softmax.  (..., V) -> (..., V)"""
    x = np.asarray(logits, dtype=np.float64)
    return np.exp(x - x.max(axis=-1, keepdims=True))
