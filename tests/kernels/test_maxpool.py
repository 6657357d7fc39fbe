"""Max-pool kernels against their NumPy twin (the separable path the layer keeps for overlapping windows).

Bit-for-bit, values and gradients: ties (integer-valued and all-equal windows, signed zeros), float32 and
float64, trailing rows and columns no window covers, gaps between windows (stride > size).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from refdns.kernels.maxpool import (
    index_dtype,
    maxpool,
    maxpool_backward,
    maxpool_backward_ref,
    maxpool_forward_ref,
)

from refdns.layers import Workspace, maxpool_select
from refdns.layers import maxpool_backward as layer_backward
from refdns.layers import maxpool_forward as layer_forward
from tests.strategies import finite_floats

FLOATS = [np.float32, np.float64]
# Few values, signed zeros among them: windows with ties, all-equal windows and +0.0/-0.0 pairs are common.
FEW = [-1.0, -0.0, 0.0, 0.5, 1.0]


def bits(a):
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)  # signed zeros and NaN payloads count


@st.composite
def disjoint_cases(draw, dtype):
    size = draw(st.integers(1, 4))
    stride = draw(st.integers(size, size + 2))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(size, 11)),
             draw(st.integers(size, 11)))
    elements = st.sampled_from(FEW) if draw(st.booleans()) else finite_floats(4.0, dtype=dtype)
    x = draw(hnp.arrays(dtype, shape, elements=elements, fill=st.nothing()))
    oh, ow = (shape[2] - size) // stride + 1, (shape[3] - size) // stride + 1
    dout = draw(hnp.arrays(dtype, (*shape[:2], oh, ow), elements=finite_floats(4.0, dtype=dtype),
                           fill=st.nothing()))
    return x, size, stride, dout


def _winner_offsets(col_win, row_win, size, stride):
    """The twin's two masks as one window offset i * size + j per output element."""
    i = np.argmax(row_win, axis=0)  # (N, C, OH, OW)
    n, c, oh, ow = np.indices(i.shape)
    j = np.argmax(col_win[:, n, c, oh * stride + i, ow], axis=0)
    return i * size + j


@pytest.mark.parametrize("dtype", FLOATS)
@given(data=st.data())
def test_kernels_equal_the_twin_bit_for_bit(dtype, data):
    x, size, stride, dout = data.draw(disjoint_cases(dtype))
    out, arg = maxpool(x, size, stride)
    out_ref, col_win, row_win = maxpool_forward_ref(x, size, stride)
    assert out.dtype == dtype and arg.dtype == index_dtype(size)
    np.testing.assert_array_equal(bits(out), bits(out_ref))
    np.testing.assert_array_equal(arg, _winner_offsets(col_win, row_win, size, stride))
    dx = maxpool_backward(dout, arg, x.shape, size, stride)
    dx_ref = maxpool_backward_ref(dout, col_win, row_win, x.shape, size, stride)
    np.testing.assert_array_equal(bits(dx), bits(dx_ref))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(("shape", "size", "stride"),
                         [((3, 4, 24, 24), 2, 2), ((2, 3, 9, 7), 2, 2), ((2, 3, 11, 10), 3, 3),
                          ((2, 2, 10, 9), 2, 3), ((1, 2, 5, 6), 1, 2), ((2, 2, 7, 7), 3, 4)])
def test_fixed_geometries_with_integer_ties(dtype, shape, size, stride, rng):
    """Integer-valued maps (ties everywhere), an all-zero map, and a map of -0.0 beside +0.0."""
    for x in (rng.integers(-2, 3, size=shape).astype(dtype), np.zeros(shape, dtype),
              np.where(rng.random(shape) < 0.5, -0.0, 0.0).astype(dtype)):
        out, arg = maxpool(x, size, stride)
        out_ref, col_win, row_win = maxpool_forward_ref(x, size, stride)
        np.testing.assert_array_equal(bits(out), bits(out_ref))
        np.testing.assert_array_equal(arg, _winner_offsets(col_win, row_win, size, stride))
        dout = rng.standard_normal(out.shape).astype(dtype)
        dout[..., 0] = -0.0  # a signed zero to route
        dx = maxpool_backward(dout, arg, shape, size, stride)
        np.testing.assert_array_equal(bits(dx), bits(maxpool_backward_ref(dout, col_win, row_win, shape, size,
                                                                          stride)))
    assert not np.any(maxpool(np.zeros(shape, dtype), size, stride)[1])  # all-equal: the top-left wins


@pytest.mark.parametrize(("size", "stride"), [(2, 2), (3, 2), (2, 1), (3, 3), (2, 3)])
def test_layer_takes_the_kernel_exactly_for_disjoint_windows(size, stride, rng):
    """The layer's result is the twin's, bit for bit, whichever path it takes; a reused Workspace too."""
    x = rng.integers(-3, 3, size=(2, 3, 9, 8)).astype(np.float32)
    dout_shape = (2, 3, (9 - size) // stride + 1, (8 - size) // stride + 1)
    dout = rng.standard_normal(dout_shape).astype(np.float32)
    out_ref, col_win, row_win = maxpool_forward_ref(x, size, stride)
    dx_ref = maxpool_backward_ref(dout, col_win, row_win, x.shape, size, stride)
    ws = Workspace()
    for _ in range(2):
        out, cache = layer_forward(x, size=size, stride=stride, ws=ws)
        assert (cache.arg is not None) == (stride >= size)
        np.testing.assert_array_equal(bits(out), bits(out_ref))
        np.testing.assert_array_equal(bits(layer_backward(dout, cache, ws=ws)), bits(dx_ref))


def test_outputs_are_reused_and_overwritten(rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    out = np.full((2, 3, 3, 3), np.nan, np.float32)
    arg = np.full((2, 3, 3, 3), 99, np.uint8)
    got_out, got_arg = maxpool(x, 2, 3, out=out, arg=arg)
    assert got_out is out and got_arg is arg
    out_ref, col_win, row_win = maxpool_forward_ref(x, 2, 3)
    np.testing.assert_array_equal(out, out_ref)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = np.full(x.shape, np.nan, np.float32)
    assert maxpool_backward(dout, arg, x.shape, 2, 3, out=dx) is dx
    np.testing.assert_array_equal(bits(dx), bits(maxpool_backward_ref(dout, col_win, row_win, x.shape, 2, 3)))


def test_bad_input_is_refused_by_name():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="stride=1 < size=2"):
        maxpool(x, 2, 1)
    with pytest.raises(TypeError, match="x.dtype"):
        maxpool(x.astype(np.int32), 2, 2)
    with pytest.raises(ValueError, match="x.shape"):
        maxpool(x[0], 2, 2)
    with pytest.raises(ValueError, match="size=5"):
        maxpool(x, 5, 5)
    with pytest.raises(ValueError, match="out: expected a float32 array"):
        maxpool(x, 2, 2, out=np.zeros((1, 1, 2, 2), np.float64))
    out, arg = maxpool(x, 2, 2)
    with pytest.raises(ValueError, match="dout.shape"):
        maxpool_backward(np.zeros((1, 1, 3, 3), np.float32), arg, x.shape, 2, 2)
    with pytest.raises(ValueError, match="arg: expected a uint8 array"):
        maxpool_backward(out, arg.astype(np.int32), x.shape, 2, 2)


@pytest.mark.parametrize(("size", "stride"), [(2, 2), (3, 3), (2, 3), (3, 2)])
def test_the_r_operator_selects_the_same_elements_on_both_paths(size, stride, rng):
    """maxpool_select (the Hessian engine's tangent) gathers rx at the kernel's winners: the twin's masks
    applied to rx, exactly."""
    x = rng.integers(-2, 3, size=(2, 3, 9, 10)).astype(np.float64)
    rx = rng.standard_normal(x.shape)
    _, col_win, row_win = maxpool_forward_ref(x, size, stride)
    oh, ow = row_win.shape[3:]
    he, we = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    rows = sum(col_win[j] * rx[:, :, : col_win.shape[3]][..., j : j + we : stride] for j in range(size))
    want = sum(row_win[i] * rows[:, :, i : i + he : stride] for i in range(size))
    np.testing.assert_array_equal(maxpool_select(rx, layer_forward(x, size=size, stride=stride)[1]), want)
