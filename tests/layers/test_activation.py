"""ReLU: gradients away from the kink, Caffe's zero gradient at 0, dtype, purity, validation."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.layers import relu_backward, relu_forward
from tests.gradcheck import assert_layer_gradients
from tests.strategies import away_from_zero_arrays, float_arrays, small_shapes

FLOATS = [np.float32, np.float64]


@st.composite
def relu_cases(draw):
    shape = draw(small_shapes())
    return draw(away_from_zero_arrays(shape)), draw(float_arrays(shape))


@given(relu_cases())
def test_gradients_match_central_differences(case):
    x, dout = case
    assert_layer_gradients(relu_forward, relu_backward, {"x": x}, dout)


@given(small_shapes().flatmap(float_arrays))
def test_forward_and_backward_values(x):
    out, cache = relu_forward(x)
    np.testing.assert_array_equal(out, np.where(x > 0, x, 0.0))
    dout = np.arange(1.0, x.size + 1).reshape(x.shape)
    np.testing.assert_array_equal(relu_backward(dout, cache), np.where(x > 0, dout, 0.0))


def test_gradient_at_exactly_zero_is_zero():
    x = np.array([0.0, -0.0, 1e-300, -1e-300, 2.0])
    out, cache = relu_forward(x)
    np.testing.assert_array_equal(out, [0.0, 0.0, 1e-300, 0.0, 2.0])
    np.testing.assert_array_equal(relu_backward(np.full(5, 3.0), cache), [0.0, 0.0, 3.0, 0.0, 3.0])


@pytest.mark.parametrize("dtype", FLOATS)
def test_dtype_is_preserved(rng, dtype):
    x = rng.standard_normal((4, 3, 2)).astype(dtype)
    out, cache = relu_forward(x)
    dx = relu_backward(np.ones_like(out), cache)
    assert out.dtype == dtype and dx.dtype == dtype and dx.shape == x.shape


def test_inputs_and_cache_are_not_mutated(rng):
    x = rng.standard_normal((5, 7))
    dout = rng.standard_normal((5, 7))
    x0, dout0 = x.copy(), dout.copy()
    out, cache = relu_forward(x)
    mask0 = cache.positive.copy()
    relu_backward(dout, cache)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dout, dout0)
    np.testing.assert_array_equal(cache.positive, mask0)
    assert not np.shares_memory(out, x)


def test_bad_arguments_raise_naming_them():
    with pytest.raises(TypeError, match=r"^x\b"):
        relu_forward(np.arange(3))
    with pytest.raises(TypeError, match=r"^x\b"):
        relu_forward([1.0, -1.0])
    _, cache = relu_forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^dout\b"):
        relu_backward(np.zeros((3, 2)), cache)
    with pytest.raises(TypeError, match=r"^dout\b"):
        relu_backward(np.zeros((2, 3), dtype=np.float32), cache)
