"""Generation: KV-cached logits equal a full recompute, greedy equals HF's recorded output,
padded batches equal each prompt alone, EOS handling, seeded sampling, and argument errors."""
from __future__ import annotations

import numpy as np
import pytest

from minillm.inference.generate import generate, generate_steps, pad_batch, stream
from minillm.inference.sampling import filtered_probs
from minillm.model.backends import get_backend
from minillm.model.config import GPT2Config
from minillm.model.gpt2 import GPT2
from minillm.model.params import random_params

SMALL = GPT2Config(vocab_size=300, n_positions=40, n_embd=32, n_layer=2, n_head=4)
PROMPTS = [[5, 17, 42], [7, 8, 9, 10, 11, 12, 13], [99], [250, 3, 3, 3]]


@pytest.fixture(scope="module")
def model() -> GPT2:
    return GPT2(SMALL, random_params(SMALL, seed=0, std=0.3))    # std 0.3: well-separated logits


@pytest.fixture(params=["numpy", "numba"])
def backend_model(request) -> GPT2:
    try:
        backend = get_backend(request.param)
    except (ImportError, AttributeError) as error:
        pytest.skip(f"backend {request.param!r} is not available: {error}")
    return GPT2(SMALL, random_params(SMALL, seed=0, std=0.3), backend=backend)


def full_recompute_last_logits(model, sequence, mask=None):
    return model.forward(sequence, attention_mask=mask).logits[:, -1]


# ---- the KV cache ------------------------------------------------------------------------------
def test_cached_logits_equal_full_recompute_at_every_step(backend_model):
    prompt = np.array([PROMPTS[1]])
    sequence = prompt
    for step in generate_steps(backend_model, prompt, 12):
        np.testing.assert_allclose(step.logits, full_recompute_last_logits(backend_model, sequence),
                                   atol=1e-5, rtol=0)
        sequence = np.concatenate([sequence, step.token_ids[:, None]], axis=1)
    assert sequence.shape[1] == prompt.shape[1] + 12


def test_cached_logits_equal_full_recompute_for_a_padded_batch(backend_model):
    ids, mask = pad_batch(PROMPTS, pad_id=0)
    sequence = ids
    for step in generate_steps(backend_model, ids, 10, attention_mask=mask):
        full_mask = np.concatenate([mask, np.ones((len(ids), sequence.shape[1] - ids.shape[1]), int)], 1)
        np.testing.assert_allclose(step.logits, full_recompute_last_logits(backend_model, sequence, full_mask),
                                   atol=1e-5, rtol=0)
        sequence = np.concatenate([sequence, step.token_ids[:, None]], axis=1)


def test_without_cache_gives_the_same_tokens(model):
    ids, mask = pad_batch(PROMPTS, pad_id=0)
    np.testing.assert_array_equal(generate(model, ids, 15, attention_mask=mask),
                                  generate(model, ids, 15, attention_mask=mask, use_cache=False))


def test_prefill_once_then_one_token_per_step(model, monkeypatch):
    """The prompt runs through the model once; each later call sees one new token, appends to
    the same preallocated cache, asks for the last position's logits only; and nothing runs
    after the last token is chosen."""
    calls = []
    forward = model.forward

    def spy(ids, **kwargs):
        cache = kwargs["cache"]
        calls.append((ids.shape, cache.length, id(cache.keys[0]), kwargs.get("last_only")))
        return forward(ids, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    ids, mask = pad_batch(PROMPTS[:2], pad_id=0)
    generate(model, ids, 6, attention_mask=mask)

    T = ids.shape[1]
    assert [c[0] for c in calls] == [(2, T)] + [(2, 1)] * 5
    assert [c[1] for c in calls] == [0, T, T + 1, T + 2, T + 3, T + 4]
    assert len({c[2] for c in calls}) == 1                      # one cache, never reallocated
    assert all(c[3] is True for c in calls)


# ---- greedy against HF -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_reference():
    from conftest import REFERENCE_DIR

    if not (REFERENCE_DIR / "reference.npz").is_file():
        pytest.skip("weights/reference/ is not there")
    with np.load(REFERENCE_DIR / "reference.npz") as data:
        recorded = {name: data[name] for name in data.files}
    return GPT2.from_pretrained(REFERENCE_DIR), recorded


@pytest.mark.parametrize("name", ["english", "chinese"])
def test_greedy_equals_hf_exactly(hf_reference, name):
    model, recorded = hf_reference
    prompt, expected = recorded[f"{name}.ids"], recorded[f"{name}.greedy"]
    out = generate(model, prompt, len(expected) - len(prompt))
    assert out.tolist() == expected.tolist()


def test_left_padded_batch_greedy_equals_hf_exactly(hf_reference):
    model, recorded = hf_reference
    ids, mask, expected = recorded["batch.ids"], recorded["batch.attention_mask"], recorded["batch.greedy"]
    out = generate(model, ids, expected.shape[1] - ids.shape[1], attention_mask=mask)
    assert out.tolist() == expected.tolist()


# ---- batches -----------------------------------------------------------------------------------
def test_pad_batch_pads_on_the_left():
    ids, mask = pad_batch([[1, 2, 3], [4], [5, 6]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4], [9, 5, 6]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert ids.dtype == mask.dtype == np.int64


def test_pad_batch_rejects_empty_input():
    with pytest.raises(ValueError, match="at least one prompt"):
        pad_batch([], 0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pad_batch([[1], []], 0)


def test_each_row_of_a_padded_batch_equals_that_prompt_alone(model):
    ids, mask = pad_batch(PROMPTS, pad_id=0)
    batch = generate(model, ids, 12, attention_mask=mask)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, prompt, 12)
        assert batch[row, ids.shape[1] - len(prompt):].tolist() == alone.tolist()


def test_padding_token_does_not_matter(model):
    new_tokens = []
    for pad in (0, 299):
        ids, mask = pad_batch(PROMPTS, pad)
        new_tokens.append(generate(model, ids, 10, attention_mask=mask)[:, ids.shape[1]:])
    np.testing.assert_array_equal(*new_tokens)


# ---- EOS ---------------------------------------------------------------------------------------
def first_new_token_not_seen_before(new_tokens: list[int], min_step: int) -> tuple[int, int]:
    for step in range(min_step, len(new_tokens)):
        if new_tokens[step] not in new_tokens[:step]:
            return step, new_tokens[step]
    pytest.fail("no suitable EOS candidate in the greedy run")


# Seeded sampling makes varied runs; a run with eos_token_id is the same run up to the EOS.
SAMPLED = dict(do_sample=True, seed=11)


def test_stops_after_eos_and_keeps_it(model):
    prompt = PROMPTS[1]
    free_run = generate(model, prompt, 20, **SAMPLED)[len(prompt):].tolist()
    step, eos = first_new_token_not_seen_before(free_run, min_step=3)
    out = generate(model, prompt, 20, eos_token_id=eos, **SAMPLED)
    assert out.tolist() == prompt + free_run[:step + 1]
    assert generate(model, prompt, 20, eos_token_id=[299, eos], **SAMPLED).tolist() == out.tolist()


def test_batch_pads_finished_rows_and_stops_when_all_are_done(model):
    ids, mask = pad_batch(PROMPTS, pad_id=0)
    n_new, T = 20, ids.shape[1]
    free_run = generate(model, ids, n_new, attention_mask=mask, **SAMPLED)[:, T:]
    step, eos = first_new_token_not_seen_before(free_run[0].tolist(), min_step=2)
    pad = 298

    out = generate(model, ids, n_new, attention_mask=mask, eos_token_id=eos, pad_token_id=pad, **SAMPLED)[:, T:]

    # HF's rule: a row is done after it emits EOS, pad_token_id fills it from then on
    expected = free_run.copy()
    for row in range(len(ids)):
        hits = np.flatnonzero(free_run[row] == eos)
        if hits.size:
            expected[row, hits[0] + 1:] = pad
    finished_at = [np.flatnonzero(r == eos)[0] + 1 if (r == eos).any() else n_new for r in free_run]
    assert out.tolist() == expected[:, :max(finished_at)].tolist()
    assert out[0, step] == eos and (out[0, step + 1:] == pad).all() and step + 1 < out.shape[1]


def test_batch_stops_early_when_every_row_hits_eos(model):
    ids, mask = pad_batch(PROMPTS, pad_id=0)
    T = ids.shape[1]
    first_tokens = generate(model, ids, 1, attention_mask=mask)[:, T]
    out = generate(model, ids, 10, attention_mask=mask, eos_token_id=first_tokens.tolist())
    assert out.shape == (len(PROMPTS), T + 1)                   # one step, then everyone is done


# ---- sampling ----------------------------------------------------------------------------------
def test_seeded_sampling_is_reproducible(model):
    kwargs = dict(do_sample=True, temperature=0.9, top_k=40, top_p=0.95)
    a = generate(model, PROMPTS[0], 25, seed=1234, **kwargs)
    b = generate(model, PROMPTS[0], 25, seed=1234, **kwargs)
    c = generate(model, PROMPTS[0], 25, seed=4321, **kwargs)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_sampling_does_not_touch_the_global_rng(model):
    np.random.seed(5)
    state = np.random.get_state()[1].copy()
    generate(model, PROMPTS[0], 5, do_sample=True)
    assert (np.random.get_state()[1] == state).all()


@pytest.mark.parametrize("kwargs", [dict(top_k=1), dict(temperature=0.0), dict(top_p=1e-9)])
def test_degenerate_sampling_is_greedy(model, kwargs):
    greedy = generate(model, PROMPTS[1], 15)
    assert generate(model, PROMPTS[1], 15, do_sample=True, seed=3, **kwargs).tolist() == greedy.tolist()


def test_sampled_tokens_lie_in_the_filtered_support(model):
    settings = dict(temperature=0.7, top_k=20, top_p=0.6)
    ids, mask = pad_batch(PROMPTS, pad_id=0)
    for step in generate_steps(model, ids, 15, attention_mask=mask, do_sample=True, seed=0, **settings):
        probs = filtered_probs(step.logits, **settings)
        assert (probs[np.arange(len(ids)), step.token_ids] > 0).all()


def test_sampling_ignored_without_do_sample(model):
    assert generate(model, PROMPTS[1], 10, temperature=2.0, top_k=3, seed=1).tolist() == \
        generate(model, PROMPTS[1], 10).tolist()


# ---- shapes, max_length, streaming -------------------------------------------------------------
def test_shapes_and_dtypes(model):
    one = generate(model, PROMPTS[0], 4)
    assert one.shape == (7,) and one.dtype == np.int64 and one[:3].tolist() == PROMPTS[0]
    batch = generate(model, np.array([PROMPTS[0], PROMPTS[0]]), 4)
    assert batch.shape == (2, 7)
    assert batch[0].tolist() == batch[1].tolist() == one.tolist()


def test_max_length_counts_the_prompt(model):
    assert generate(model, PROMPTS[1], max_length=12).tolist() == generate(model, PROMPTS[1], 5).tolist()


def test_model_methods_delegate(model):
    assert model.generate(PROMPTS[0], 5).tolist() == generate(model, PROMPTS[0], 5).tolist()
    assert list(model.stream(PROMPTS[0], 5)) == generate(model, PROMPTS[0], 5)[3:].tolist()


def test_context_can_be_filled_exactly(model):
    prompt = list(range(1, 31))
    out = generate(model, prompt, SMALL.n_positions - len(prompt))
    assert len(out) == SMALL.n_positions


def test_stream_yields_the_new_tokens_one_by_one(model):
    tokens = stream(model, PROMPTS[1], 8, do_sample=True, seed=9)
    first = next(tokens)                                          # a lazy generator of ints
    assert type(first) is int
    expected = generate(model, PROMPTS[1], 8, do_sample=True, seed=9)[len(PROMPTS[1]):].tolist()
    assert [first, *tokens] == expected


def test_stream_of_a_batch_yields_one_array_per_step(model):
    ids, mask = pad_batch(PROMPTS, pad_id=0)
    steps = list(stream(model, ids, 5, attention_mask=mask))
    assert len(steps) == 5 and all(s.shape == (len(PROMPTS),) for s in steps)
    np.testing.assert_array_equal(np.stack(steps, 1), generate(model, ids, 5, attention_mask=mask)[:, ids.shape[1]:])


def test_stream_checks_arguments_before_the_first_token(model):
    with pytest.raises(ValueError, match="top_p"):
        stream(model, PROMPTS[0], 5, do_sample=True, top_p=2.0)     # raised on the call itself


# ---- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, kwargs, message", [
    (list(range(41)), dict(max_new_tokens=1),
     r"the prompt has 41 tokens but the model's context is 40 tokens \(n_positions\)"),
    (list(range(30)), dict(max_new_tokens=11),
     r"prompt \(30 tokens\) \+ max_new_tokens \(11\) = 41 exceeds the model's context of 40 tokens; "
     r"ask for at most 10 new tokens"),
    (list(range(30)), dict(max_length=41), r"prompt \(30 tokens\) \+ max_new_tokens \(11\) = 41 exceeds"),
    ([1, 2, 3], dict(max_length=3), r"max_length=3 counts the prompt too, so it must be an int greater "
                                    r"than the prompt length 3"),
    ([1, 2], dict(max_new_tokens=0), r"max_new_tokens must be an int >= 1, got 0"),
    ([1, 2], dict(max_new_tokens=2.5), r"max_new_tokens must be an int >= 1, got 2.5"),
    ([1, 2], dict(), r"pass exactly one of max_new_tokens .* or max_length"),
    ([1, 2], dict(max_new_tokens=3, max_length=5), r"pass exactly one of max_new_tokens"),
    ([1, 2], dict(max_new_tokens=3, do_sample=True, top_p=0.0), r"top_p must be a number in \(0, 1\].*got 0.0"),
    ([1, 2], dict(max_new_tokens=3, do_sample=True, top_p=1.01), r"top_p must be .* got 1.01"),
    ([1, 2], dict(max_new_tokens=3, temperature=-1.0), r"temperature must be a finite number >= 0.*got -1.0"),
    ([1, 2], dict(max_new_tokens=3, do_sample=True, top_k=0), r"top_k must be an int >= 1.*got 0"),
    ([1, 300], dict(max_new_tokens=3), r"token id 300 is out of range: ids must be in \[0, 300\)"),
    ([-1, 2], dict(max_new_tokens=3), r"token id -1 is out of range"),
    ([], dict(max_new_tokens=3), r"the prompt is empty"),
    (np.zeros((2, 0), int), dict(max_new_tokens=3), r"the prompt is empty"),
    ([[1, 2], [3]], dict(max_new_tokens=3), r"prompts of different lengths must be padded first \(see pad_batch\)"),
    ([1, 2], dict(max_new_tokens=3, eos_token_id=300), r"eos_token_id must be a token id .* in \[0, 300\), got 300"),
    ([1, 2], dict(max_new_tokens=3, pad_token_id=-4), r"pad_token_id must be a token id .* got -4"),
    ([1, 2], dict(max_new_tokens=3, seed=-2), r"seed must be an int >= 0 or None, got -2"),
    ([[1, 2], [3, 4]], dict(max_new_tokens=3, attention_mask=[[1, 0], [1, 1]]), r"must be left padding"),
    ([[1, 2], [3, 4]], dict(max_new_tokens=3, attention_mask=[[1, 1]]),
     r"attention_mask must have the shape of the ids, \(2, 2\), got \(1, 2\)"),
    ([[1, 2], [3, 4]], dict(max_new_tokens=3, attention_mask=[[0, 2], [1, 1]]), r"only 0 \(padding\) and 1"),
])
def test_bad_arguments_raise_clear_errors(model, ids, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, ids, **kwargs)


def test_non_integer_ids_are_a_type_error(model):
    # The same TypeError as GPT2.forward's: both check ids with minillm.model.inputs.check_token_ids.
    with pytest.raises(TypeError, match=r"token ids must be integers, got dtype float64"):
        generate(model, [1.0, 2.0], max_new_tokens=3)


def test_unknown_keyword_is_a_type_error(model):
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['temprature'\]"):
        stream(model, [1, 2], 3, temprature=0.5)
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['temprature'\]"):
        generate(model, [1, 2], 3, temprature=0.5)
