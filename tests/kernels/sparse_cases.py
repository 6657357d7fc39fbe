"""Hypothesis strategies for pruned (sparse) matrices, shared by the sparse kernel tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refdns.sparse import CSRMatrix, csr_from_dense
from tests.strategies import float_arrays


@st.composite
def pruned_matrices(draw: st.DrawFn, rows: int, cols: int, *, dtype=np.float32) -> np.ndarray:
    """A (rows, cols) matrix with a random keep-mask: fully pruned layers, empty rows and columns included."""
    w = draw(float_arrays((rows, cols), dtype=dtype))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    keep = draw(hnp.arrays(np.bool_, (rows, cols), elements=st.booleans(), fill=st.nothing()))
    keep &= draw(hnp.arrays(np.float64, (rows, cols), elements=st.floats(0, 1), fill=st.nothing())) < density
    return (w * keep).astype(dtype)


def csr64(w: np.ndarray) -> CSRMatrix:
    """CSR of ``w`` keeping its dtype (csr_from_dense stores float32; the kernels also take float64)."""
    c = csr_from_dense(w.astype(np.float32))
    rows = np.repeat(np.arange(w.shape[0]), np.diff(c.indptr))
    return CSRMatrix(c.indptr, c.indices, w[rows, c.indices], c.shape)

