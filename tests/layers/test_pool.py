"""Max pooling: gradients, a per-window reference with Caffe's tie rule, overlap, dtype, purity, checks."""

import numpy as np
import pytest
from hypothesis import given

from refdns.layers import maxpool_backward, maxpool_forward
from tests.gradcheck import assert_layer_gradients
from tests.strategies import pool_cases, pool_output_shape

FLOATS = [np.float32, np.float64]


def maxpool_naive(x, dout, size, stride):
    """Per-window loop: max, and the whole dout to the first maximum in row-major order (Caffe's scan)."""
    n, c, oh, ow = pool_output_shape(x.shape, size, stride)
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    dx = np.zeros_like(x)
    for a in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    window = x[a, ch, i * stride : i * stride + size, j * stride : j * stride + size]
                    k = int(np.argmax(window))  # argmax returns the first maximum of the flattened window
                    out[a, ch, i, j] = window.flat[k]
                    dx[a, ch, i * stride + k // size, j * stride + k % size] += dout[a, ch, i, j]
    return out, dx


def _pool(x, size=2, stride=2, dout=None):
    out, cache = maxpool_forward(x, size=size, stride=stride)
    return out, maxpool_backward(np.ones_like(out) if dout is None else dout, cache)


@given(pool_cases(distinct=True))
def test_gradients_match_central_differences(case):
    assert_layer_gradients(
        maxpool_forward,
        maxpool_backward,
        {"x": case.x},
        case.dout,
        forward_kwargs={"size": case.size, "stride": case.stride},
    )


@given(pool_cases(distinct=False))
def test_matches_window_loop_reference_including_ties(case):
    out, dx = _pool(case.x, case.size, case.stride, case.dout)
    out_ref, dx_ref = maxpool_naive(case.x, case.dout, case.size, case.stride)
    np.testing.assert_array_equal(out, out_ref)
    # Same additions in the same order per element, so exact for non-overlapping windows; overlapping
    # windows may add the same contributions in another order, and mixed-sign contributions can cancel to
    # ~1e-16 where an order change shows as a relative error of 1: an absolute floor at dout's scale.
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(case.dout).max())))


@given(pool_cases(distinct=False))
def test_each_window_sends_its_gradient_to_exactly_one_element(case):
    ones = np.ones(pool_output_shape(case.x.shape, case.size, case.stride), dtype=case.x.dtype)
    _, dx = _pool(case.x, case.size, case.stride, ones)
    assert dx.sum() == ones.sum()  # integers in floats: exact
    assert np.all(dx >= 0) and np.all(dx == np.round(dx))


@pytest.mark.parametrize(("size", "stride"), [(2, 2), (3, 3), (3, 2), (2, 1)])
def test_all_equal_window_sends_gradient_to_its_top_left(size, stride):
    x = np.zeros((1, 1, size, size))
    _, dx = _pool(x, size, stride, dout=np.full((1, 1, 1, 1), 5.0))
    expected = np.zeros_like(x)
    expected[0, 0, 0, 0] = 5.0
    np.testing.assert_array_equal(dx, expected)


def test_flat_background_does_not_double_count():
    """MNIST-like zero background: one gradient per window, on each window's top-left pixel."""
    _, dx = _pool(np.zeros((1, 1, 4, 4), dtype=np.float32))
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[::2, ::2] = 1.0
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_ties_in_a_row_go_left_and_across_rows_go_up():
    x = np.array([[0.0, 1.0], [1.0, 1.0]]).reshape(1, 1, 2, 2)  # first max in row-major order is (0, 1)
    _, dx = _pool(x)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0], [0.0, 0.0]])
    x = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]).reshape(1, 1, 3, 3)
    _, dx = _pool(x, size=3, stride=3)
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_overlapping_windows_accumulate():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0  # the centre is the max of all four 2x2 windows
    dout = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    out, dx = _pool(x, size=2, stride=1, dout=dout)
    np.testing.assert_array_equal(out, np.ones((1, 1, 2, 2)))
    expected = np.zeros((3, 3))
    expected[1, 1] = 10.0
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_output_size_is_floor_and_leftovers_get_no_gradient():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    out, dx = _pool(x)
    assert out.shape == (1, 1, 2, 2)  # floor((5 - 2) / 2) + 1 = 2; Caffe's ceil would give 3
    np.testing.assert_array_equal(out[0, 0], [[6.0, 8.0], [16.0, 18.0]])
    assert not dx[0, 0, 4, :].any() and not dx[0, 0, :, 4].any()


def test_gaps_between_windows():
    x = np.arange(36.0).reshape(1, 1, 6, 6)
    out, dx = _pool(x, size=2, stride=3)
    np.testing.assert_array_equal(out[0, 0], [[7.0, 10.0], [25.0, 28.0]])
    assert dx.sum() == 4.0 and dx[0, 0, 1, 1] == dx[0, 0, 4, 4] == 1.0


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("size", "stride"), [(2, 2), (3, 2), (2, 3)])
def test_dtype_is_preserved(rng, dtype, size, stride):
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype)
    out, dx = _pool(x, size, stride)
    assert out.dtype == dtype and dx.dtype == dtype and dx.shape == x.shape


@pytest.mark.parametrize(("size", "stride"), [(2, 2), (3, 1)])
def test_inputs_and_cache_are_not_mutated(rng, size, stride):
    x = rng.standard_normal((2, 3, 7, 6))
    x0 = x.copy()
    out, cache = maxpool_forward(x, size=size, stride=stride)
    dout = rng.standard_normal(out.shape)
    dout0 = dout.copy()
    held = [a.copy() for a in cache if isinstance(a, np.ndarray)]  # masks (overlap) or offsets (disjoint)
    assert held
    maxpool_backward(dout, cache)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dout, dout0)
    for a, a0 in zip([a for a in cache if isinstance(a, np.ndarray)], held, strict=True):
        np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize(
    ("shape", "kwargs", "name"),
    [
        ((2, 3, 5), {}, "x"),
        ((2, 3, 5, 1), {}, "size"),
        ((2, 3, 5, 5), {"size": 6, "stride": 1}, "size"),
        ((2, 3, 5, 5), {"size": 0}, "size"),
        ((2, 3, 5, 5), {"stride": 0}, "stride"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(shape, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        maxpool_forward(np.zeros(shape), **kwargs)


def test_bad_types_and_dout_raise():
    with pytest.raises(TypeError, match=r"^x\b"):
        maxpool_forward(np.zeros((1, 1, 4, 4), dtype=np.int64))
    with pytest.raises(TypeError, match=r"^size\b"):
        maxpool_forward(np.zeros((1, 1, 4, 4)), size=2.0)
    out, cache = maxpool_forward(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"^dout\b"):
        maxpool_backward(np.zeros((1, 1, 4, 4)), cache)
    with pytest.raises(TypeError, match=r"^dout\b"):
        maxpool_backward(out.astype(np.float32), cache)
