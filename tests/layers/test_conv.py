"""conv2d: gradients, a direct-loop reference, both column layouts, dtype, purity, validation."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.layers import conv2d_backward, conv2d_forward
from tests.gradcheck import assert_layer_gradients
from tests.strategies import conv_cases, conv_output_shape
from tests.tolerances import assert_close

LAYOUTS = ["batch_first", "batch_last"]
FLOATS = [np.float32, np.float64]


def conv2d_naive(x, w, b, stride, pad):
    """Direct definition, one output pixel at a time: out[n, f, i, j] = <x_pad window, w[f]> + b[f]."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    xp[:, :, pad : pad + h, pad : pad + wd] = x
    _, _, oh, ow = conv_output_shape(x.shape, w.shape, stride, pad)
    out = np.empty((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]  # (N, C, KH, KW)
            out[:, :, i, j] = np.einsum("nckl,fckl->nf", window, w) + b
    return out


def conv2d_naive_backward(dout, x, w, stride, pad):
    """Gradients by scattering each output pixel's dout back over its window."""
    n, c, h, wd = x.shape
    _, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    xp[:, :, pad : pad + h, pad : pad + wd] = x
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            rows, cols = slice(i * stride, i * stride + kh), slice(j * stride, j * stride + kw)
            dxp[:, :, rows, cols] += np.einsum("nf,fckl->nckl", dout[:, :, i, j], w)
            dw += np.einsum("nf,nckl->fckl", dout[:, :, i, j], xp[:, :, rows, cols])
    return dxp[:, :, pad : pad + h, pad : pad + wd], dw, dout.sum(axis=(0, 2, 3))


def _case(rng, dtype, x_shape=(3, 2, 9, 8), w_shape=(4, 2, 3, 2)):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b


@given(conv_cases(), st.sampled_from(LAYOUTS))
def test_gradients_match_central_differences(case, layout):
    assert_layer_gradients(
        conv2d_forward,
        conv2d_backward,
        {"x": case.x, "w": case.w, "b": case.b},
        case.dout,
        forward_kwargs={"stride": case.stride, "pad": case.pad, "layout": layout},
    )


@given(conv_cases(), st.sampled_from(LAYOUTS))
def test_matches_direct_loop_reference(case, layout):
    out, cache = conv2d_forward(case.x, case.w, case.b, stride=case.stride, pad=case.pad, layout=layout)
    assert out.shape == case.dout.shape
    assert out.flags.c_contiguous
    assert_close(out, conv2d_naive(case.x, case.w, case.b, case.stride, case.pad))
    grads = conv2d_backward(case.dout, cache)
    expected = conv2d_naive_backward(case.dout, case.x, case.w, case.stride, case.pad)
    for g, e in zip(grads, expected, strict=True):
        assert_close(g, e)


@given(conv_cases())
def test_need_dx_false_skips_dx_only(case):
    for layout in LAYOUTS:
        _, cache = conv2d_forward(case.x, case.w, case.b, stride=case.stride, pad=case.pad, layout=layout)
        dx, dw, db = conv2d_backward(case.dout, cache)
        none, dw2, db2 = conv2d_backward(case.dout, cache, need_dx=False)
        assert none is None and dx is not None
        np.testing.assert_array_equal(dw2, dw)
        np.testing.assert_array_equal(db2, db)


@pytest.mark.parametrize(
    ("x_shape", "w_shape"),
    [((4, 1, 28, 28), (20, 1, 5, 5)), ((4, 20, 12, 12), (50, 20, 5, 5))],
    ids=["lenet5-conv1", "lenet5-conv2"],
)
@pytest.mark.parametrize("layout", ["auto", *LAYOUTS])
def test_lenet5_shapes_float32_against_float64_reference(rng, x_shape, w_shape, layout):
    x, w, b = _case(rng, np.float64, x_shape, w_shape)
    expected = conv2d_naive(x, w, b, 1, 0)
    out, cache = conv2d_forward(*(a.astype(np.float32) for a in (x, w, b)), layout=layout)
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert_close(out, expected, dtype=np.float32)
    dout = rng.standard_normal(out.shape)
    grads = conv2d_backward(dout.astype(np.float32), cache)
    for g, e in zip(grads, conv2d_naive_backward(dout, x, w, 1, 0), strict=True):
        assert g.dtype == np.float32
        assert_close(g, e, dtype=np.float32)


def test_auto_layout_choice_for_lenet5(rng):
    _, c1 = conv2d_forward(*_case(rng, np.float32, (2, 1, 28, 28), (20, 1, 5, 5)))
    _, c2 = conv2d_forward(*_case(rng, np.float32, (2, 20, 12, 12), (50, 20, 5, 5)))
    assert (c1.layout, c2.layout) == ("batch_first", "batch_last")


def test_output_size_is_floor():
    x, w, b = np.ones((1, 1, 7, 6)), np.ones((1, 1, 2, 2)), np.zeros(1)
    out, _ = conv2d_forward(x, w, b, stride=2)
    assert out.shape == (1, 1, 3, 3)  # (7 - 2) // 2 + 1 = 3, (6 - 2) // 2 + 1 = 3
    np.testing.assert_array_equal(out, 4.0)


def test_zero_padding_at_the_border():
    x, w, b = np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)), np.zeros(1)
    out, _ = conv2d_forward(x, w, b, pad=1)
    np.testing.assert_array_equal(out[0, 0], [[4.0, 4.0], [4.0, 4.0]])


def test_is_cross_correlation_not_convolution():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 0, 0] = 1.0  # picks the top-left pixel; a flipped kernel would pick the bottom-right
    out, _ = conv2d_forward(x, w, np.zeros(1))
    assert out.item() == 0.0


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pad", [0, 1])
def test_dtype_is_preserved(rng, dtype, layout, pad):
    x, w, b = _case(rng, dtype)
    out, cache = conv2d_forward(x, w, b, pad=pad, layout=layout)
    grads = conv2d_backward(np.ones_like(out), cache)
    assert out.dtype == dtype
    assert [g.dtype for g in grads] == [dtype] * 3
    assert [g.shape for g in grads] == [x.shape, w.shape, b.shape]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_inputs_and_cache_are_not_mutated(rng, layout):
    x, w, b = _case(rng, np.float64)
    _, cache = conv2d_forward(x, w, b, stride=2, pad=1, layout=layout)
    dout = rng.standard_normal(_.shape)
    before = [a.copy() for a in (x, w, b, dout)]
    cols0, w0 = cache.cols.copy(), cache.w.copy()
    conv2d_forward(x, w, b, stride=2, pad=1, layout=layout)
    conv2d_backward(dout, cache)
    for a, a0 in zip((x, w, b, dout), before, strict=True):
        np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(cache.cols, cols0)
    np.testing.assert_array_equal(cache.w, w0)


def test_non_contiguous_inputs(rng):
    x, w, b = _case(rng, np.float64, (2, 3, 8, 8), (4, 3, 3, 3))
    xs, ws = x[:, :, ::-1, :], np.asfortranarray(w)
    for layout in LAYOUTS:
        out, _ = conv2d_forward(xs, ws, b, layout=layout)
        assert_close(out, conv2d_naive(np.ascontiguousarray(xs), w, b, 1, 0))


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "b_shape", "kwargs", "name"),
    [
        ((2, 3, 8, 8), (4, 2, 3, 3), (4,), {}, "w"),
        ((2, 3, 8, 8), (4, 3, 3, 3), (3,), {}, "b"),
        ((2, 3, 8, 8), (4, 3, 3), (4,), {}, "w"),
        ((3, 8, 8), (4, 3, 3, 3), (4,), {}, "x"),
        ((2, 3, 4, 4), (4, 3, 5, 5), (4,), {}, "w"),
        ((2, 3, 4, 4), (4, 3, 7, 3), (4,), {"pad": 1}, "w"),
        ((2, 3, 8, 8), (4, 3, 3, 3), (4,), {"stride": 0}, "stride"),
        ((2, 3, 8, 8), (4, 3, 3, 3), (4,), {"pad": -1}, "pad"),
        ((2, 3, 8, 8), (4, 3, 3, 3), (4,), {"layout": "nhwc"}, "layout"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(x_shape, w_shape, b_shape, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        conv2d_forward(np.zeros(x_shape), np.zeros(w_shape), np.zeros(b_shape), **kwargs)


def test_bad_types_raise_type_error_naming_them(rng):
    x, w, b = _case(rng, np.float32)
    with pytest.raises(TypeError, match=r"^w\b"):
        conv2d_forward(x, w.astype(np.float64), b)
    with pytest.raises(TypeError, match=r"^b\b"):
        conv2d_forward(x, w, b.astype(np.float64))
    with pytest.raises(TypeError, match=r"^x\b"):
        conv2d_forward(x.astype(np.int32), w, b)
    with pytest.raises(TypeError, match=r"^stride\b"):
        conv2d_forward(x, w, b, stride=1.0)
    with pytest.raises(TypeError, match=r"^pad\b"):
        conv2d_forward(x, w, b, pad=True)


def test_bad_dout_raises(rng):
    x, w, b = _case(rng, np.float64)
    out, cache = conv2d_forward(x, w, b)
    with pytest.raises(ValueError, match=r"^dout\b"):
        conv2d_backward(out[:, :, 1:], cache)
    with pytest.raises(TypeError, match=r"^dout\b"):
        conv2d_backward(out.astype(np.float32), cache)
