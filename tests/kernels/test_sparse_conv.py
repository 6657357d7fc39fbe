"""sparse_conv2d and its parallel variant against the NumPy twin and the dense im2col layer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.errors import NonFiniteError, SparseFormatError
from refdns.kernels.sparse_conv import sparse_conv2d, sparse_conv2d_parallel, sparse_conv2d_ref
from refdns.layers import conv2d_forward, maxpool_forward
from refdns.sparse import csr_from_dense
from tests.kernels.sparse_cases import csr64, pruned_matrices
from tests.strategies import conv_geometries, float_arrays
from tests.tolerances import assert_close


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_matches_twin_and_dense_conv(dtype, data):
    x_shape, w_shape, stride, pad = data.draw(conv_geometries())
    F, C, KH, KW = w_shape
    w2 = data.draw(pruned_matrices(F, C * KH * KW, dtype=dtype))
    x = data.draw(float_arrays(x_shape, dtype=dtype))
    b = data.draw(float_arrays((F,), dtype=dtype))
    c = csr64(w2)
    args = (c.indptr, c.indices, c.data, x)
    out = sparse_conv2d(*args, w_shape=w_shape, bias=b, stride=stride, pad=pad)
    assert out.dtype == dtype
    assert_close(out, sparse_conv2d_ref(*args, w_shape=w_shape, bias=b, stride=stride, pad=pad), dtype=dtype)
    dense, _ = conv2d_forward(x, w2.reshape(w_shape), b, stride=stride, pad=pad)
    assert_close(out, dense, dtype=dtype)
    np.testing.assert_array_equal(sparse_conv2d_parallel(*args, w_shape=w_shape, bias=b, stride=stride, pad=pad), out)
    pool = data.draw(st.integers(2, 3))
    if min(out.shape[2:]) >= pool:
        pooled = sparse_conv2d(*args, w_shape=w_shape, bias=b, stride=stride, pad=pad, pool=pool)
        want, _ = maxpool_forward(out, size=pool, stride=pool)
        np.testing.assert_array_equal(pooled, want)  # max picks one of the same values: exact
        assert_close(pooled, sparse_conv2d_ref(*args, w_shape=w_shape, bias=b, stride=stride, pad=pad, pool=pool),
                     dtype=dtype)
        np.testing.assert_array_equal(
            sparse_conv2d_parallel(*args, w_shape=w_shape, bias=b, stride=stride, pad=pad, pool=pool), pooled)


def test_lenet5_conv2_shape_fully_pruned_filter_gives_its_bias(rng):
    w = (rng.standard_normal((4, 3 * 25)) * (rng.random((4, 75)) < 0.1)).astype(np.float32)
    w[2] = 0  # filter 2 entirely pruned
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    c = csr_from_dense(w)
    out = sparse_conv2d(c.indptr, c.indices, c.data, x, w_shape=(4, 3, 5, 5), bias=b)
    assert out.shape == (2, 4, 8, 8)
    np.testing.assert_array_equal(out[:, 2], np.full((2, 8, 8), b[2], np.float32))
    assert_close(out, sparse_conv2d_ref(c.indptr, c.indices, c.data, x, w_shape=(4, 3, 5, 5), bias=b),
                 dtype=np.float32)


def test_bad_input_is_a_named_error():
    c = csr_from_dense(np.ones((2, 3 * 9), np.float32))
    x = np.ones((1, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match="channels"):
        sparse_conv2d(c.indptr, c.indices, c.data, np.ones((1, 2, 5, 5), np.float32), w_shape=(2, 3, 3, 3))
    with pytest.raises(ValueError, match="smaller than"):
        sparse_conv2d(c.indptr, c.indices, c.data, np.ones((1, 3, 2, 5), np.float32), w_shape=(2, 3, 3, 3))
    with pytest.raises(ValueError, match="stride"):
        sparse_conv2d(c.indptr, c.indices, c.data, x, w_shape=(2, 3, 3, 3), stride=0)
    with pytest.raises(ValueError, match="pool=4 is larger"):
        sparse_conv2d(c.indptr, c.indices, c.data, x, w_shape=(2, 3, 3, 3), pool=4)
    x[0, 1, 2, 3] = np.inf
    with pytest.raises(NonFiniteError):
        sparse_conv2d_parallel(c.indptr, c.indices, c.data, x, w_shape=(2, 3, 3, 3))


def test_preallocated_out_parallel_and_unchecked_weights(rng):
    w = (rng.standard_normal((4, 2 * 9)) * (rng.random((4, 18)) < 0.5)).astype(np.float32)
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    c = csr_from_dense(w)
    args = (c.indptr, c.indices, c.data, x)
    want = sparse_conv2d(*args, w_shape=(4, 2, 3, 3), pool=2)
    out = np.empty((2, 4, 3, 3), np.float32)
    for parallel in (False, True):
        got = sparse_conv2d(*args, w_shape=(4, 2, 3, 3), pool=2, out=out, parallel=parallel,
                            check_weights=False)
        assert got is out
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="out has shape"):
        sparse_conv2d(*args, w_shape=(4, 2, 3, 3), out=out)  # the unpooled output is 6x6
    with pytest.raises(SparseFormatError, match="indptr has length"):
        sparse_conv2d(c.indptr[:-1], c.indices, c.data, x, w_shape=(4, 2, 3, 3), check_weights=False)
