"""The one integer-argument rule shared by every module (slt_companion._checks.check_int)."""

import math

import numpy as np
import pytest

from slt_companion._checks import check_int
from slt_companion.data import tms_data
from slt_companion.models import AttentionOnlyLM


@pytest.mark.parametrize("value, expected", [(3, 3), (np.int64(3), 3), (np.int32(7), 7), (1e4, 10_000), (2.0, 2)])
def test_whole_numbers_are_accepted(value, expected):
    out = check_int("n", value)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value", [True, False, 2.5, math.nan, math.inf, "3", None, 0, -1])
def test_everything_else_is_refused_naming_the_argument(value):
    with pytest.raises(ValueError, match=r"num_steps must be an integer ≥ 1"):
        check_int("num_steps", value)


def test_minimum_and_same_rule_across_modules():
    assert check_int("rank", 0, 0) == 0
    with pytest.raises(ValueError, match="rank must be an integer ≥ 0"):
        check_int("rank", -1, 0)
    # the modules use the same rule: NumPy integers and whole floats pass, fractions fail
    assert AttentionOnlyLM(np.int64(10), n_ctx=8, d_model=8, num_heads=2).vocab_size == 10
    assert len(tms_data(np.int64(5), 4)) == 5
    with pytest.raises(ValueError, match="n_ctx"):
        AttentionOnlyLM(10, n_ctx=8.5)
