"""GPT2Config: the parameter count agrees with the shape table the weights are checked against."""
from __future__ import annotations

import math

import pytest

from minillm.model.config import GPT2_SIZES, GPT2Config
from minillm.model.params import block_shapes, top_shapes


@pytest.mark.parametrize("name", list(GPT2_SIZES))
def test_n_params_is_the_sum_over_the_params_shape_table(name):
    config = GPT2_SIZES[name]
    top = sum(math.prod(shape) for shape in top_shapes(config).values())
    per_block = sum(math.prod(shape) for shape in block_shapes(config).values())
    assert config.n_params() == top + config.n_layer * per_block


def test_n_params_of_gpt2_124m():
    assert GPT2_SIZES["gpt2"].n_params() == 124_439_808     # HF's GPT2LMHeadModel, tied LM head


@pytest.mark.parametrize("field, value, message", [
    ("layer_norm_epsilon", -1.0, r"layer_norm_epsilon must be a finite number > 0, got -1.0"),
    ("layer_norm_epsilon", 0.0, r"layer_norm_epsilon must be a finite number > 0"),
    ("layer_norm_epsilon", float("nan"), r"layer_norm_epsilon must be a finite number > 0"),
    ("layer_norm_epsilon", "big", r"layer_norm_epsilon must be a finite number > 0, got 'big'"),
    ("n_layer", True, r"n_layer must be a positive int, got True"),
    ("n_head", 2.0, r"n_head must be a positive int, got 2.0"),
])
def test_invalid_fields_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        GPT2Config(**{field: value})
