"""Masked GEMM kernels against their NumPy twins (einsum with the densified W*T, float64)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from refdns.kernels.masked_gemm import (
    csr_gather,
    mask_csr,
    mask_csr_ref,
    masked_matmul,
    masked_matmul_ref,
    masked_matmul_t,
    masked_matmul_t_ref,
)

from tests.tolerances import assert_close


@st.composite
def masked_cases(draw, dtype):
    """(x, dy, w, mask): random shapes, densities 0 to 1, some rows forced empty (or all of them)."""
    n, m, d = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    density = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random((m, d)) < density
    mask[rng.random(m) < draw(st.floats(0.0, 0.5))] = False  # empty rows
    x = rng.uniform(-1, 1, (n, d)).astype(dtype)
    dy = rng.uniform(-1, 1, (n, m)).astype(dtype)
    w = rng.uniform(-1, 1, (m, d)).astype(dtype)
    return x, dy, w, mask


def test_csr_structure_lists_the_kept_entries_row_by_row():
    mask = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=bool)
    indptr, indices = mask_csr(mask)
    assert indptr.tolist() == [0, 2, 2, 4] and indices.tolist() == [1, 2, 0, 2]
    w = np.arange(9, dtype=np.float32).reshape(3, 3)
    assert csr_gather(w, indptr, indices).tolist() == [1, 2, 6, 8]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_kernels_match_their_twins(dtype, data):
    x, dy, w, mask = data.draw(masked_cases(dtype))
    indptr, indices = mask_csr(mask)
    for a, e in zip((indptr, indices), mask_csr_ref(mask), strict=True):
        assert a.dtype == e.dtype and np.array_equal(a, e)
    gathered = csr_gather(w, indptr, indices)
    y = masked_matmul_t(x, w, indptr, indices)
    dx = masked_matmul(dy, w, indptr, indices)
    assert y.dtype == dx.dtype == dtype and y.shape == (len(x), len(w)) and dx.shape == x.shape
    assert_close(y, masked_matmul_t_ref(x, w, indptr, indices), dtype=dtype)
    assert_close(dx, masked_matmul_ref(dy, w, indptr, indices), dtype=dtype)
    assert np.array_equal(masked_matmul_t(x, w, indptr, indices, data=gathered), y)  # same order of sums
    assert np.array_equal(masked_matmul(dy, w, indptr, indices, data=gathered), dx)
    # ... and both equal the dense product with W*T (what the dense path computes) to rounding.
    w_eff = (w * mask).astype(np.float64)
    assert_close(y, x.astype(np.float64) @ w_eff.T, dtype=dtype)
    assert_close(dx, dy.astype(np.float64) @ w_eff, dtype=dtype)


def test_all_pruned_layer_gives_zeros_and_ignores_pruned_values(rng):
    w = rng.normal(size=(4, 5)).astype(np.float32)
    indptr, indices = mask_csr(np.zeros((4, 5), bool))
    x = rng.normal(size=(3, 5)).astype(np.float32)
    assert not masked_matmul_t(x, w, indptr, indices).any()
    assert not masked_matmul(rng.normal(size=(3, 4)).astype(np.float32), w, indptr, indices).any()
    w[...] = np.nan  # values outside the structure are never read
    assert not masked_matmul_t(x, w, indptr, indices).any()


def test_bad_input_is_refused_by_name():
    w = np.zeros((4, 5), np.float32)
    indptr, indices = mask_csr(np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="x.shape"):
        masked_matmul_t(np.zeros((2, 4), np.float32), w, indptr, indices)
    with pytest.raises(TypeError, match="no silent promotion"):
        masked_matmul(np.zeros((2, 4)), w, indptr, indices)
    with pytest.raises(ValueError, match="mask_csr"):
        masked_matmul_t(np.zeros((2, 5), np.float32), w, indptr[:-1], indices)
    with pytest.raises(TypeError, match="bool"):
        mask_csr(np.ones((2, 2)))
