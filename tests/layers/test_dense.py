"""Dense layer: gradients, reference values, dtype, purity and argument validation."""

import numpy as np
import pytest
from hypothesis import given

from refdns.layers import dense_backward, dense_forward
from tests.gradcheck import assert_layer_gradients
from tests.strategies import dense_cases
from tests.tolerances import assert_close

FLOATS = [np.float32, np.float64]


def _case(rng, dtype, n=4, d=5, m=3):
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((m, d)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    dout = rng.standard_normal((n, m)).astype(dtype)
    return x, w, b, dout


@given(dense_cases())
def test_gradients_match_central_differences(case):
    assert_layer_gradients(dense_forward, dense_backward, {"x": case.x, "w": case.w, "b": case.b}, case.dout)


@given(dense_cases())
def test_forward_matches_einsum_reference(case):
    out, _ = dense_forward(case.x, case.w, case.b)
    assert_close(out, np.einsum("nd,md->nm", case.x, case.w) + case.b)


@given(dense_cases())
def test_need_dx_false_skips_dx_only(case):
    _, cache = dense_forward(case.x, case.w, case.b)
    dx, dw, db = dense_backward(case.dout, cache)
    none, dw2, db2 = dense_backward(case.dout, cache, need_dx=False)
    assert none is None and dx is not None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize("dtype", FLOATS)
def test_dtype_is_preserved(rng, dtype):
    x, w, b, dout = _case(rng, dtype)
    out, cache = dense_forward(x, w, b)
    grads = dense_backward(dout, cache)
    assert out.dtype == dtype
    assert [g.dtype for g in grads] == [dtype] * 3
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]


def test_float32_agrees_with_float64(rng):
    x, w, b, dout = _case(rng, np.float64, n=64, d=800, m=50)
    out64, c64 = dense_forward(x, w, b)
    out32, c32 = dense_forward(*(a.astype(np.float32) for a in (x, w, b)))
    assert_close(out32, out64)
    for g32, g64 in zip(dense_backward(dout.astype(np.float32), c32), dense_backward(dout, c64), strict=True):
        assert_close(g32, g64)


def test_inputs_and_cache_are_not_mutated(rng):
    x, w, b, dout = _case(rng, np.float64)
    before = [a.copy() for a in (x, w, b, dout)]
    _, cache = dense_forward(x, w, b)
    cache_before = [a.copy() for a in cache]
    dense_backward(dout, cache)
    for a, a0 in zip((x, w, b, dout), before, strict=True):
        np.testing.assert_array_equal(a, a0)
    for a, a0 in zip(cache, cache_before, strict=True):
        np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "b_shape", "name"),
    [
        ((4, 5), (3, 6), (3,), "w"),
        ((4, 5), (3, 5), (4,), "b"),
        ((4, 5), (3, 5), (3, 1), "b"),
        ((5,), (3, 5), (3,), "x"),
        ((4, 5), (15,), (3,), "w"),
    ],
)
def test_bad_shapes_raise_naming_the_argument(x_shape, w_shape, b_shape, name):
    x, w, b = np.zeros(x_shape), np.zeros(w_shape), np.zeros(b_shape)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        dense_forward(x, w, b)


def test_bad_dout_raises(rng):
    x, w, b, dout = _case(rng, np.float64)
    _, cache = dense_forward(x, w, b)
    with pytest.raises(ValueError, match=r"^dout\b"):
        dense_backward(dout.T, cache)
    with pytest.raises(TypeError, match=r"^dout\b"):
        dense_backward(dout.astype(np.float32), cache)


def test_dtype_mismatch_and_non_float_raise(rng):
    x, w, b, _ = _case(rng, np.float32)
    with pytest.raises(TypeError, match=r"^w\b"):
        dense_forward(x, w.astype(np.float64), b)
    with pytest.raises(TypeError, match=r"^b\b"):
        dense_forward(x, w, b.astype(np.float64))
    with pytest.raises(TypeError, match=r"^x\b"):
        dense_forward(x.astype(np.int64), w, b)
    with pytest.raises(TypeError, match=r"^x\b"):
        dense_forward(x.tolist(), w, b)
