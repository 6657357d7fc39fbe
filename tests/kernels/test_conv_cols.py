"""im2col / col2im kernels against their NumPy twins: bit-identical, in both layouts, with padding and stride."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from refdns.kernels.conv_cols import col2im, col2im_ref, cols_shape, im2col, im2col_ref

from tests.strategies import finite_floats

LAYOUTS = ["batch_first", "batch_last"]


@st.composite
def geometries(draw):
    """(x_shape, KH, KW, stride, pad) with a kernel that fits the padded input."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pad = draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * pad), 8))
    w = draw(st.integers(max(1, kw - 2 * pad), 8))
    return (n, c, h, w), kh, kw, draw(st.integers(1, 3)), pad


def bits(a):
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(geo=geometries(), data=st.data())
def test_im2col_and_col2im_equal_their_twins_bit_for_bit(layout, dtype, geo, data):
    x_shape, kh, kw, stride, pad = geo
    x = np.asarray(data.draw(st.lists(finite_floats(4.0, dtype=dtype), min_size=int(np.prod(x_shape)),
                                      max_size=int(np.prod(x_shape)))), dtype=dtype).reshape(x_shape)
    cols = im2col(x, kh, kw, stride=stride, pad=pad, layout=layout)
    want = im2col_ref(x, kh, kw, stride=stride, pad=pad, layout=layout)
    assert cols.shape == want.shape == cols_shape(x_shape, kh, kw, stride, pad, layout)
    np.testing.assert_array_equal(bits(cols), bits(want))
    dcols = np.random.default_rng(0).standard_normal(cols.shape).astype(dtype)
    dx = col2im(dcols, x_shape, kh, kw, stride=stride, pad=pad, layout=layout)
    np.testing.assert_array_equal(bits(dx), bits(col2im_ref(dcols, x_shape, kh, kw, stride=stride, pad=pad,
                                                            layout=layout)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_col2im_is_the_adjoint_of_im2col(layout, rng):
    """<im2col(x), c> = <x, col2im(c)> in float64: every column entry goes back to the pixel it came from."""
    x = rng.standard_normal((2, 3, 7, 6))
    c = rng.standard_normal(cols_shape(x.shape, 3, 2, 2, 1, layout))
    lhs = float(np.sum(im2col(x, 3, 2, stride=2, pad=1, layout=layout) * c))
    rhs = float(np.sum(x * col2im(c, x.shape, 3, 2, stride=2, pad=1, layout=layout)))
    assert lhs == pytest.approx(rhs, rel=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_outputs_and_scratch_are_reused_and_overwritten(layout, rng):
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    shape = cols_shape(x.shape, 3, 3, 1, 1, layout)
    out = np.full(shape, np.nan, np.float32)
    scratch = np.full((2, 7, 7, 2), np.nan, np.float32) if layout == "batch_last" else None
    got = im2col(x, 3, 3, pad=1, layout=layout, out=out, scratch=scratch)
    assert got is out
    np.testing.assert_array_equal(out, im2col_ref(x, 3, 3, pad=1, layout=layout))
    dx = np.full(x.shape, np.nan, np.float32)
    scratch = np.full((2, 7, 7, 2), np.nan, np.float32) if layout == "batch_last" else None
    assert col2im(out, x.shape, 3, 3, pad=1, layout=layout, out=dx, scratch=scratch) is dx
    np.testing.assert_array_equal(dx, col2im_ref(out, x.shape, 3, 3, pad=1, layout=layout))


def test_bad_input_is_refused_by_name():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="layout"):
        im2col(x, 2, 2, layout="nhwc")
    with pytest.raises(TypeError, match="x.dtype"):
        im2col(x.astype(np.int32), 2, 2)
    with pytest.raises(ValueError, match="larger than the padded input"):
        im2col(x, 5, 5)
    with pytest.raises(ValueError, match="out: expected a float32 array of shape"):
        im2col(x, 2, 2, out=np.zeros((1, 4, 9), np.float64))
    with pytest.raises(ValueError, match="dcols.shape"):
        col2im(np.zeros((1, 4, 8), np.float32), x.shape, 2, 2)
