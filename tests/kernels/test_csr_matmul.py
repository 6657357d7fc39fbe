"""csr_matmul (feature-major sparse x dense) and its parallel variant against the scipy twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.errors import NonFiniteError, SparseFormatError
from refdns.kernels import csr_matmul as mm
from refdns.kernels.csr_matmul import csr_matmul, csr_matmul_parallel, csr_matmul_ref
from refdns.sparse import csr_from_dense
from tests.kernels.sparse_cases import csr64, pruned_matrices
from tests.strategies import float_arrays
from tests.tolerances import assert_close


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_matches_twin_both_layouts(dtype, data):
    m, d, n = (data.draw(st.integers(1, 6)) for _ in range(3))
    w = data.draw(pruned_matrices(m, d, dtype=dtype))
    x = data.draw(float_arrays((d, n), dtype=dtype))
    x[data.draw(st.integers(0, d - 1))] = 0  # a unit dead for the whole batch
    b = data.draw(float_arrays((m,), dtype=dtype))
    relu = data.draw(st.booleans())
    c = csr64(w)
    args = (c.indptr, c.indices, c.data)
    want = csr_matmul_ref(*args, x, n_in=d, bias=b, relu=relu)
    y = csr_matmul(*args, x, n_in=d, bias=b, relu=relu)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_close(y, want, dtype=dtype)
    ys = csr_matmul(*args, np.ascontiguousarray(x.T), n_in=d, bias=b, relu=relu, x_layout="sample")
    np.testing.assert_array_equal(ys, y)
    np.testing.assert_array_equal(csr_matmul_parallel(*args, x, n_in=d, bias=b, relu=relu, n_chunks=2), y)


@pytest.mark.parametrize("layout", ["feature", "sample"])
def test_several_tiles_parallel_is_bit_identical(rng, layout):
    n = mm.TILE + 37  # two tiles, the second partial
    w = (rng.standard_normal((3, 5)) * (rng.random((3, 5)) < 0.6)).astype(np.float32)
    x = np.maximum(rng.standard_normal((5, n)), 0).astype(np.float32)
    x[:, : mm.TILE] *= np.array([0, 1, 1, 0, 1], np.float32)[:, None]  # units dead in the first tile only
    xin = x if layout == "feature" else np.ascontiguousarray(x.T)
    c = csr_from_dense(w)
    y = csr_matmul(c.indptr, c.indices, c.data, xin, n_in=5, relu=True, x_layout=layout)
    assert_close(y, csr_matmul_ref(c.indptr, c.indices, c.data, x, n_in=5, relu=True), dtype=np.float32)
    for chunks in (1, 2, 3):
        yp = csr_matmul_parallel(c.indptr, c.indices, c.data, xin, n_in=5, relu=True, x_layout=layout,
                                 n_chunks=chunks)
        np.testing.assert_array_equal(yp, y)


def test_fully_pruned_layer_and_empty_rows(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    b = np.array([1.0, -2.0], np.float32)
    c = csr_from_dense(np.zeros((2, 4), np.float32))
    np.testing.assert_array_equal(csr_matmul(c.indptr, c.indices, c.data, x, n_in=4, bias=b), np.repeat(b[:, None], 3, 1))
    np.testing.assert_array_equal(csr_matmul(c.indptr, c.indices, c.data, x, n_in=4, bias=b, relu=True),
                                  np.array([[1, 1, 1], [0, 0, 0]], np.float32))
    empty = csr_matmul(c.indptr, c.indices, c.data, np.zeros((4, 0), np.float32), n_in=4)
    assert empty.shape == (2, 0)


def test_bad_input_is_a_named_error():
    c = csr_from_dense(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="feature-major"):
        csr_matmul(c.indptr, c.indices, c.data, np.ones((4, 2), np.float32), n_in=3)
    with pytest.raises(ValueError, match="sample-major"):
        csr_matmul(c.indptr, c.indices, c.data, np.ones((3, 2), np.float32), n_in=3, x_layout="sample")
    with pytest.raises(SparseFormatError, match="outside"):
        csr_matmul(c.indptr, c.indices, c.data, np.ones((2, 2), np.float32), n_in=2)
    x = np.ones((3, 2), np.float32)
    x[1, 1] = np.nan
    for f in (csr_matmul, csr_matmul_parallel):
        with pytest.raises(NonFiniteError, match=r"\(1, 1\)"):
            f(c.indptr, c.indices, c.data, x, n_in=3)


def test_preallocated_out_and_scratch_are_used_and_checked(rng):
    w = (rng.standard_normal((3, 5)) * (rng.random((3, 5)) < 0.6)).astype(np.float32)
    x = rng.standard_normal((7, 5)).astype(np.float32)  # sample-major
    c = csr_from_dense(w)
    args = (c.indptr, c.indices, c.data, x)
    want = csr_matmul(*args, n_in=5, x_layout="sample")
    out = np.empty((3, 7), np.float32)
    scratch = mm.workspace(5, 7, 2)
    for parallel in (False, True):
        got = csr_matmul(*args, n_in=5, x_layout="sample", out=out, scratch=scratch, parallel=parallel)
        assert got is out
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="out has shape"):
        csr_matmul(*args, n_in=5, x_layout="sample", out=np.empty((7, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        csr_matmul(*args, n_in=5, x_layout="sample", out=np.empty((3, 7)))
    with pytest.raises(ValueError, match="C-contiguous"):
        csr_matmul(*args, n_in=5, x_layout="sample", out=np.empty((7, 3), np.float32).T)
    with pytest.raises(ValueError, match="scratch has shape"):
        csr_matmul(*args, n_in=5, x_layout="sample", scratch=mm.workspace(4, 7))


def test_unchecked_weights_still_get_the_cheap_checks():
    c = csr_from_dense(np.eye(3, dtype=np.float32))
    x = np.ones((3, 2), np.float32)
    data = c.data.copy()
    data[1] = np.nan  # a content error: only the full check scans for it
    with pytest.raises(NonFiniteError):
        csr_matmul(c.indptr, c.indices, data, x, n_in=3)
    assert np.isnan(csr_matmul(c.indptr, c.indices, data, x, n_in=3, check_weights=False)[1]).all()
    with pytest.raises(SparseFormatError, match="int32"):  # a structure error: always checked
        csr_matmul(c.indptr.astype(np.int64), c.indices, c.data, x, n_in=3, check_weights=False)
