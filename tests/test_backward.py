"""Every backward pass against central finite differences in float64, on small odd shapes.

Each test builds L = sum(forward(inputs) * dy) for a random dy and compares the backward's
dL/d(input) with the numerical one: relative error (norm-wise) below 1e-6. The forwards are
minillm's own, so the tests of LayerNorm, GELU, attention and the block need assignments 2 and
3 done (they say so with `uses`); linear, cross-entropy and the embedding use given code only.
Cross-entropy's gradient is also checked against PyTorch's, recorded in
tests/data/training_reference. The mutation tests at the end show that a plausible bug makes
the same check fail.
"""
from pathlib import Path

import numpy as np
import pytest

from gradcheck import mutate, numerical_gradient, relative_error
from minillm.checkpoint.safetensors_file import read_safetensors
from minillm.model.attention import causal_attention, causal_attention_backward
from minillm.model.backends import NumpyBackend
from minillm.model.config import GPT2Config
from minillm.model.layers import gelu, gelu_backward, layer_norm, layer_norm_backward, linear, linear_backward
from minillm.model.loss import IGNORE_INDEX, cross_entropy, negative_log_likelihood
from minillm.model.params import BlockParams, block_shapes
from minillm.training.backprop import block_backward, block_forward, embedding_backward

TOLERANCE = 1e-6
REFERENCE = Path(__file__).parent / "data" / "training_reference"
rng = np.random.default_rng(0)


def randn64(*shape, scale=1.0):
    return scale * rng.standard_normal(shape)


def assert_gradient(forward, inputs: list, analytical: list, dy):
    """Each analytical gradient matches the numerical one of L = sum(forward(*inputs) * dy)."""
    loss = lambda: float((forward(*inputs) * dy).sum())
    for x, grad in zip(inputs, analytical):
        assert np.shape(grad) == x.shape, f"gradient of shape {np.shape(grad)} for an input of shape {x.shape}"
        error = relative_error(numerical_gradient(loss, x), grad)
        assert error < TOLERANCE, f"relative error {error:.2e} for an input of shape {x.shape}"


@pytest.mark.assignment(6)
def test_linear_backward():
    x, w, b = randn64(2, 3, 5), randn64(5, 7), randn64(7)
    dy = randn64(2, 3, 7)
    dx, dw, db = linear_backward(dy, x, w)
    assert_gradient(linear, [x, w, b], [dx, dw, db], dy)


@pytest.mark.assignment(6, uses=[3])
@pytest.mark.parametrize("scale", [1.0, 0.01])   # small variance: eps matters
def test_layer_norm_backward(scale):
    x, gain, bias = randn64(3, 2, 9, scale=scale) + 0.5, 1 + randn64(9, scale=0.3), randn64(9)
    dy = randn64(3, 2, 9)
    dx, dgain, dbias = layer_norm_backward(dy, x, gain, 1e-5)
    assert_gradient(lambda x, g, b: layer_norm(x, g, b, 1e-5), [x, gain, bias], [dx, dgain, dbias], dy)


@pytest.mark.assignment(6, uses=[3])
def test_gelu_backward():
    x = randn64(4, 11, scale=2.0)
    dy = randn64(4, 11)
    assert_gradient(gelu, [x], [gelu_backward(dy, x)], dy)


@pytest.mark.assignment(6)
def test_cross_entropy_gradient_is_softmax_minus_onehot():
    logits = randn64(3, 5, 13, scale=2.0)
    targets = rng.integers(0, 13, (3, 5))
    targets[0, 1] = targets[2, 4] = IGNORE_INDEX
    loss, dlogits = cross_entropy(logits, targets)
    nll, count = negative_log_likelihood(logits, targets)                # given: the summed loss
    assert count == 13 and loss == pytest.approx(nll / count, rel=1e-12)
    mean_loss = lambda: negative_log_likelihood(logits, targets)[0] / count
    assert relative_error(numerical_gradient(mean_loss, logits), dlogits) < TOLERANCE
    assert np.all(dlogits[0, 1] == 0) and np.all(dlogits[2, 4] == 0)     # ignored rows


@pytest.mark.assignment(6)
def test_cross_entropy_matches_torch_on_recorded_logits():
    """torch's logits of a batch give torch's loss, and dL/dlogits carried through the tied head
    (dh = dlogits wte) and summed over the rows is torch's gradient of ln_f.bias."""
    with np.load(REFERENCE / "grads.npz") as recorded:
        logits, targets = recorded["logits"], recorded["targets"]
        torch_loss, torch_dbias = float(recorded["loss"]), recorded["grad/ln_f.bias"]
    wte = read_safetensors(REFERENCE / "model.safetensors")["transformer.wte.weight"]
    loss, dlogits = cross_entropy(logits, targets)
    assert dlogits.dtype == np.float32 and dlogits.shape == logits.shape
    assert loss == pytest.approx(torch_loss, abs=1e-5)
    dbias = (dlogits @ wte).sum(axis=(0, 1))                                 # (C,)
    np.testing.assert_allclose(dbias, torch_dbias, rtol=0, atol=1e-5 * np.abs(torch_dbias).max())


def test_cross_entropy_rejects_bad_targets():
    logits = randn64(2, 4, 6)
    with pytest.raises(ValueError, match="out of range"):
        cross_entropy(logits, np.full((2, 4), 6))
    with pytest.raises(ValueError, match="no loss to compute"):
        cross_entropy(logits, np.full((2, 4), IGNORE_INDEX))
    with pytest.raises(ValueError, match="do not match"):
        cross_entropy(logits, np.zeros((2, 3), int))


@pytest.mark.assignment(6, uses=[2])
def test_attention_backward():
    q, k, v = (randn64(2, 3, 7, 5) for _ in range(3))
    dout = randn64(2, 3, 7, 5)
    dq, dk, dv = causal_attention_backward(dout, q, k, v)
    assert_gradient(causal_attention, [q, k, v], [dq, dk, dv], dout)


@pytest.mark.assignment(6, uses=[2])
def test_attention_backward_sends_nothing_to_future_keys():
    q, k, v = (randn64(1, 2, 6, 4) for _ in range(3))
    dout = np.zeros_like(q)
    dout[..., 2, :] = randn64(1, 2, 4)             # only query 2 has a gradient
    dq, dk, dv = causal_attention_backward(dout, q, k, v)
    assert np.all(dk[..., 3:, :] == 0) and np.all(dv[..., 3:, :] == 0)
    assert np.all(dq[..., :2, :] == 0) and np.all(dq[..., 3:, :] == 0)
    assert np.abs(dv[..., :3, :]).min() > 0        # ...and something to every key it sees


@pytest.mark.assignment(6)
def test_embedding_backward_adds_repeated_ids():
    ids = np.array([[3, 1, 3], [0, 3, 2]])
    wte, wpe = randn64(5, 4), randn64(6, 4)
    dx0 = randn64(2, 3, 4)
    dwte, dwpe = embedding_backward(dx0, ids, 5, 6)
    assert_gradient(lambda wte, wpe: wte[ids] + wpe[:3], [wte, wpe], [dwte, dwpe], dx0)
    np.testing.assert_allclose(dwte[3], dx0[0, 0] + dx0[0, 2] + dx0[1, 1])   # three uses of id 3
    assert np.all(dwte[4] == 0) and np.all(dwpe[3:] == 0)


@pytest.mark.assignment(6, uses=[2, 3])
def test_block_backward():
    """dL/dx and every weight's gradient of one whole block (both residual halves)."""
    config = GPT2Config(vocab_size=11, n_positions=8, n_embd=6, n_layer=1, n_head=2)
    backend = NumpyBackend()
    shapes = block_shapes(config)
    block = BlockParams(**{name: randn64(*shape, scale=0.5) + (name.endswith("gain"))
                           for name, shape in shapes.items()})
    x, dout = randn64(2, 5, 6), randn64(2, 5, 6)
    _, tape = block_forward(x, block, config.n_head, 1e-5, backend)
    dx, grads = block_backward(dout, tape, block, 1e-5, backend)
    assert sorted(grads) == sorted(shapes)
    names = list(shapes)
    forward = lambda x, *weights: block_forward(x, BlockParams(**dict(zip(names, weights))),
                                                config.n_head, 1e-5, backend)[0]
    assert_gradient(forward, [x, *(getattr(block, n) for n in names)], [dx, *(grads[n] for n in names)], dout)


# ---- the same checks catch plausible bugs -------------------------------------------------
def test_check_catches_a_missing_scale_in_the_attention_backward():
    broken = mutate(causal_attention_backward, ("dq = (dscores @ k) * scale", "dq = dscores @ k"),
                    ("dk = (dscores.swapaxes(-1, -2) @ q) * scale", "dk = dscores.swapaxes(-1, -2) @ q"))
    q, k, v = (randn64(1, 2, 5, 4) for _ in range(3))
    dout = randn64(1, 2, 5, 4)
    with pytest.raises(AssertionError, match="relative error"):
        assert_gradient(causal_attention, [q, k, v], list(broken(dout, q, k, v)), dout)


def test_check_catches_a_dropped_layer_norm_mean_term():
    broken = mutate(layer_norm_backward, ("dx_hat - mean_dx_hat - x_hat", "dx_hat - x_hat"))
    x, gain, bias = randn64(3, 9), 1 + randn64(9, scale=0.3), randn64(9)
    dy = randn64(3, 9)
    with pytest.raises(AssertionError, match="relative error"):
        assert_gradient(lambda x, g, b: layer_norm(x, g, b, 1e-5), [x, gain, bias],
                        list(broken(dy, x, gain, 1e-5)), dy)


def test_check_catches_a_forgotten_residual_in_the_block_backward():
    broken = mutate(block_backward, ("dx += dx1", "dx = dx"))      # the residual path dropped
    config = GPT2Config(vocab_size=11, n_positions=8, n_embd=6, n_layer=1, n_head=2)
    backend = NumpyBackend()
    block = BlockParams(**{name: randn64(*shape, scale=0.5) for name, shape in block_shapes(config).items()})
    x, dout = randn64(1, 3, 6), randn64(1, 3, 6)
    _, tape = block_forward(x, block, config.n_head, 1e-5, backend)
    forward = lambda x: block_forward(x, block, config.n_head, 1e-5, backend)[0]
    with pytest.raises(AssertionError, match="relative error"):
        assert_gradient(forward, [x], [broken(dout, tape, block, 1e-5, backend)[0]], dout)
