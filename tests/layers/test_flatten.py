"""Flatten: NCHW (C, H, W) order, gradients, round trip, dtype, purity, validation."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.layers import flatten_backward, flatten_forward
from tests.gradcheck import assert_layer_gradients
from tests.strategies import float_arrays, small_shapes


@st.composite
def flatten_cases(draw):
    shape = draw(small_shapes(min_dims=2))
    return draw(float_arrays(shape)), draw(float_arrays((shape[0], int(np.prod(shape[1:])))))


@given(flatten_cases())
def test_gradients_match_central_differences(case):
    x, dout = case
    assert_layer_gradients(flatten_forward, flatten_backward, {"x": x}, dout)


def test_order_is_c_then_h_then_w():
    n, c, h, w = 2, 3, 4, 5
    x = np.arange(n * c * h * w, dtype=np.float64).reshape(n, c, h, w)
    out, _ = flatten_forward(x)
    assert out.shape == (n, c * h * w)
    for i, ch, r, col in [(0, 0, 0, 1), (1, 2, 3, 4), (0, 1, 2, 0)]:
        assert out[i, ch * h * w + r * w + col] == x[i, ch, r, col]


@given(small_shapes(min_dims=2).flatmap(float_arrays))
def test_backward_inverts_forward(x):
    out, cache = flatten_forward(x)
    dx = flatten_backward(out, cache)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dx, x)


def test_non_contiguous_input_keeps_nchw_order(rng):
    x = rng.standard_normal((2, 6, 4, 3)).transpose(0, 1, 3, 2)  # a view with strides out of order
    out, _ = flatten_forward(x)
    np.testing.assert_array_equal(out, np.ascontiguousarray(x).reshape(2, -1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(rng, dtype):
    x = rng.standard_normal((4, 3, 2, 2)).astype(dtype)
    out, cache = flatten_forward(x)
    dx = flatten_backward(np.ones_like(out), cache)
    assert out.dtype == dtype and dx.dtype == dtype


def test_inputs_are_not_mutated(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    x0 = x.copy()
    out, cache = flatten_forward(x)
    dout = rng.standard_normal(out.shape)
    dout0 = dout.copy()
    flatten_backward(dout, cache)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dout, dout0)


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match=r"^x\b"):
        flatten_forward(np.zeros(5))
    with pytest.raises(TypeError, match=r"^x\b"):
        flatten_forward(np.zeros((2, 3), dtype=np.int8))
    _, cache = flatten_forward(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"^dout\b"):
        flatten_backward(np.zeros((2, 59)), cache)
    with pytest.raises(TypeError, match=r"^dout\b"):
        flatten_backward(np.zeros((2, 60), dtype=np.float32), cache)
