"""GPT2Config: the parameter count agrees with the shape table the weights are checked against."""
from __future__ import annotations

import math

import pytest

from minillm.model.config import GPT2_SIZES
from minillm.model.params import block_shapes, top_shapes


@pytest.mark.parametrize("name", list(GPT2_SIZES))
def test_n_params_is_the_sum_over_the_params_shape_table(name):
    config = GPT2_SIZES[name]
    top = sum(math.prod(shape) for shape in top_shapes(config).values())
    per_block = sum(math.prod(shape) for shape in block_shapes(config).values())
    assert config.n_params() == top + config.n_layer * per_block


def test_n_params_of_gpt2_124m():
    assert GPT2_SIZES["gpt2"].n_params() == 124_439_808     # HF's GPT2LMHeadModel, tied LM head
