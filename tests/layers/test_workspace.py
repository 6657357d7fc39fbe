"""Layers given a Workspace compute the same bits as without one, and reuse its buffers on the next call."""

import numpy as np
import pytest

from refdns.layers import (
    Workspace,
    conv2d_backward,
    conv2d_forward,
    dense_backward,
    dense_forward,
    maxpool_backward,
    maxpool_forward,
    relu_backward,
    relu_forward,
)


def _conv(x, w, b, ws, layout):
    out, cache = conv2d_forward(x, w, b, stride=2, pad=1, layout=layout, ws=ws)
    return (out, *conv2d_backward(out * 0.5 - 1, cache, ws=ws))


def _pool(x, ws, size, stride):
    out, cache = maxpool_forward(x, size=size, stride=stride, ws=ws)
    return out, cache.col_win, cache.row_win, cache.arg, maxpool_backward(out * 0.5 - 1, cache, ws=ws)


@pytest.mark.parametrize("layout", ["batch_first", "batch_last"])
def test_conv_with_a_workspace_is_bit_identical_and_reuses_its_buffers(layout, rng):
    x = rng.standard_normal((3, 2, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    ws = Workspace()
    first = _conv(x, w, b, ws, layout)
    held = ws.nbytes()
    for got, want in zip(first, _conv(x, w, b, None, layout)):
        np.testing.assert_array_equal(got, want)
    again = _conv(x, w, b, ws, layout)
    assert all(a is c for a, c in zip(first, again))  # the same buffers, overwritten
    assert ws.nbytes() == held


@pytest.mark.parametrize(("size", "stride"), [(2, 2), (3, 2), (2, 1), (3, 3)])
def test_pool_with_a_workspace_is_bit_identical(size, stride, rng):
    x = rng.integers(-3, 3, size=(2, 3, 7, 8)).astype(np.float32)  # ties included
    ws = Workspace()
    _pool(x + 10, ws, size, stride)  # leave other values in the buffers first
    for got, want in zip(_pool(x, ws, size, stride), _pool(x, None, size, stride)):
        np.testing.assert_array_equal(got, want)


def _mlp(x, w, b, ws):
    out, cache = dense_forward(x, w, b, ws=ws and ws.child("dense"))
    h, rcache = relu_forward(out, ws=ws and ws.child("relu"))
    dh = relu_backward(h - 0.3, rcache, ws=ws and ws.child("relu"))
    return (out, h, dh, *dense_backward(dh, cache, ws=ws and ws.child("dense")))


def test_dense_and_relu_with_a_workspace_are_bit_identical(rng):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    w = rng.standard_normal((4, 7)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    ws = Workspace()
    _mlp(x + 1, w, b, ws)
    for got, want in zip(_mlp(x, w, b, ws), _mlp(x, w, b, None)):
        np.testing.assert_array_equal(got, want)
