"""csr_matvec (zero-skipping scatter) and its parallel variant against the NumPy twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.errors import NonFiniteError, SparseFormatError
from refdns.kernels.csr_matvec import csr_matvec, csr_matvec_parallel, csr_matvec_ref
from refdns.sparse import csr_from_dense
from tests.kernels.sparse_cases import csr64, pruned_matrices, sparse_vectors
from tests.strategies import float_arrays
from tests.tolerances import assert_close


@st.composite
def matvec_cases(draw, dtype=np.float32):
    m, d = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    w = draw(pruned_matrices(m, d, dtype=dtype))
    x = draw(sparse_vectors(d, dtype=dtype))
    b = draw(float_arrays((m,), dtype=dtype))
    return w, x, b, draw(st.booleans())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_matches_twin_and_dense(dtype, data):
    w, x, b, relu = data.draw(matvec_cases(dtype))
    t = csr64(w.T)  # W^T in CSR = W column-wise
    args = (t.indptr, t.indices, t.data, x)
    want = csr_matvec_ref(*args, n_out=w.shape[0], bias=b, relu=relu)
    y = csr_matvec(*args, n_out=w.shape[0], bias=b, relu=relu)
    assert y.dtype == dtype and y.shape == (w.shape[0],)
    assert_close(y, want, dtype=dtype)
    dense = w.astype(np.float64) @ x + b
    assert_close(y, np.maximum(dense, 0) if relu else dense, dtype=dtype)
    for chunks in (1, 3):
        yp = csr_matvec_parallel(*args, n_out=w.shape[0], bias=b, relu=relu, n_chunks=chunks)
        assert_close(yp, y, dtype=dtype)


def test_one_chunk_parallel_is_bit_identical_to_serial(rng):
    w = (rng.standard_normal((9, 12)) * (rng.random((9, 12)) < 0.3)).astype(np.float32)
    x = np.maximum(rng.standard_normal(12), 0).astype(np.float32)
    t = csr_from_dense(w.T)
    a = csr_matvec(t.indptr, t.indices, t.data, x, n_out=9)
    b = csr_matvec_parallel(t.indptr, t.indices, t.data, x, n_out=9, n_chunks=1)
    np.testing.assert_array_equal(a, b)


def test_fully_pruned_layer_gives_the_bias(rng):
    t = csr_from_dense(np.zeros((5, 3), np.float32))  # W^T of a 3 x 5 layer with nothing kept
    b = rng.standard_normal(3).astype(np.float32)
    for f in (csr_matvec, csr_matvec_parallel):
        np.testing.assert_array_equal(f(t.indptr, t.indices, t.data, np.ones(5, np.float32), n_out=3, bias=b), b)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_a_named_error_even_on_an_empty_column(bad):
    t = csr_from_dense(np.array([[0.0, 0.0], [1.0, 2.0]], np.float32))  # input 0 feeds nothing
    x = np.array([bad, 1.0], np.float32)
    for f in (csr_matvec, csr_matvec_parallel):
        with pytest.raises(NonFiniteError, match=r"x\[0\]"):
            f(t.indptr, t.indices, t.data, x, n_out=2)


def test_malformed_input_is_a_named_error():
    t = csr_from_dense(np.eye(3, dtype=np.float32))
    x = np.ones(3, np.float32)
    with pytest.raises(SparseFormatError, match="indptr has length"):
        csr_matvec(t.indptr, t.indices, t.data, np.ones(4, np.float32), n_out=3)  # x too long
    with pytest.raises(SparseFormatError, match="outside"):
        csr_matvec(t.indptr, t.indices, t.data, x, n_out=2)  # an output index >= n_out
    with pytest.raises(SparseFormatError, match="int32"):
        csr_matvec(t.indptr.astype(np.int64), t.indices, t.data, x, n_out=3)
    with pytest.raises(TypeError, match="float32"):
        csr_matvec(t.indptr, t.indices, t.data, x.astype(np.float64), n_out=3)
    with pytest.raises(ValueError, match="bias"):
        csr_matvec(t.indptr, t.indices, t.data, x, n_out=3, bias=np.ones(2, np.float32))
    with pytest.raises(NonFiniteError):
        csr_matvec(t.indptr, t.indices, t.data * np.float32(np.inf), x, n_out=3)
