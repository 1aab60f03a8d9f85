"""Every backward pass against central finite differences in float64, on small odd shapes.

Each test builds L = sum(forward(inputs) * dy) for a random dy and compares the backward's
dL/d(input) with the numerical one: relative error (norm-wise) below 1e-6. The mutation
tests at the end show that a plausible bug makes the same check fail.
"""
import numpy as np
import pytest

from gradcheck import mutate, numerical_gradient, relative_error
from minillm.model.attention import causal_attention, causal_attention_backward
from minillm.model.layers import gelu, gelu_backward, layer_norm, layer_norm_backward, linear, linear_backward
from minillm.model.loss import IGNORE_INDEX, cross_entropy, negative_log_likelihood
from minillm.training.backprop import embedding_backward

TOLERANCE = 1e-6
rng = np.random.default_rng(0)


def randn64(*shape, scale=1.0):
    return scale * rng.standard_normal(shape)


def assert_gradient(forward, inputs: list, analytical: list, dy):
    """Each analytical gradient matches the numerical one of L = sum(forward(*inputs) * dy)."""
    loss = lambda: float((forward(*inputs) * dy).sum())
    for x, grad in zip(inputs, analytical):
        error = relative_error(numerical_gradient(loss, x), grad)
        assert error < TOLERANCE, f"relative error {error:.2e} for an input of shape {x.shape}"


def test_linear_backward():
    x, w, b = randn64(2, 3, 5), randn64(5, 7), randn64(7)
    dy = randn64(2, 3, 7)
    dx, dw, db = linear_backward(dy, x, w)
    assert_gradient(linear, [x, w, b], [dx, dw, db], dy)


@pytest.mark.parametrize("scale", [1.0, 0.01])   # small variance: eps matters
def test_layer_norm_backward(scale):
    x, gain, bias = randn64(3, 2, 9, scale=scale) + 0.5, 1 + randn64(9, scale=0.3), randn64(9)
    dy = randn64(3, 2, 9)
    dx, dgain, dbias = layer_norm_backward(dy, x, gain, 1e-5)
    assert_gradient(lambda x, g, b: layer_norm(x, g, b, 1e-5), [x, gain, bias], [dx, dgain, dbias], dy)


def test_gelu_backward():
    x = randn64(4, 11, scale=2.0)
    dy = randn64(4, 11)
    assert_gradient(gelu, [x], [gelu_backward(dy, x)], dy)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
    logits = randn64(3, 5, 13, scale=2.0)
    targets = rng.integers(0, 13, (3, 5))
    targets[0, 1] = targets[2, 4] = IGNORE_INDEX
    loss, dlogits = cross_entropy(logits, targets)
    mean_loss = lambda: cross_entropy(logits, targets)[0]
    assert relative_error(numerical_gradient(mean_loss, logits), dlogits) < TOLERANCE
    assert np.all(dlogits[0, 1] == 0) and np.all(dlogits[2, 4] == 0)     # ignored rows
    counted = targets != IGNORE_INDEX
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected_loss = -np.log(np.take_along_axis(probs, np.where(counted, targets, 0)[..., None], -1))[..., 0]
    assert loss == pytest.approx(expected_loss[counted].mean(), rel=1e-12)
    nll, count = negative_log_likelihood(logits, targets)
    assert count == counted.sum() and nll == pytest.approx(loss * count, rel=1e-12)


def test_cross_entropy_rejects_bad_targets():
    logits = randn64(2, 4, 6)
    with pytest.raises(ValueError, match="out of range"):
        cross_entropy(logits, np.full((2, 4), 6))
    with pytest.raises(ValueError, match="no loss to compute"):
        cross_entropy(logits, np.full((2, 4), IGNORE_INDEX))
    with pytest.raises(ValueError, match="do not match"):
        cross_entropy(logits, np.zeros((2, 3), int))


def test_attention_backward():
    q, k, v = (randn64(2, 3, 7, 5) for _ in range(3))
    dout = randn64(2, 3, 7, 5)
    dq, dk, dv = causal_attention_backward(dout, q, k, v)
    assert_gradient(causal_attention, [q, k, v], [dq, dk, dv], dout)


def test_attention_backward_sends_nothing_to_future_keys():
    q, k, v = (randn64(1, 2, 6, 4) for _ in range(3))
    dout = np.zeros_like(q)
    dout[..., 2, :] = randn64(1, 2, 4)             # only query 2 has a gradient
    dq, dk, dv = causal_attention_backward(dout, q, k, v)
    assert np.all(dk[..., 3:, :] == 0) and np.all(dv[..., 3:, :] == 0)


def test_embedding_backward_adds_repeated_ids():
    ids = np.array([[3, 1, 3], [0, 3, 2]])
    wte, wpe = randn64(5, 4), randn64(6, 4)
    dx0 = randn64(2, 3, 4)
    dwte, dwpe = embedding_backward(dx0, ids, 5, 6)
    assert_gradient(lambda wte, wpe: wte[ids] + wpe[:3], [wte, wpe], [dwte, dwpe], dx0)
    np.testing.assert_allclose(dwte[3], dx0[0, 0] + dx0[0, 2] + dx0[1, 1])   # three uses of id 3
    assert np.all(dwte[4] == 0) and np.all(dwpe[3:] == 0)


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
