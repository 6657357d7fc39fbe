"""The sparse twin of the dense layer: same function and gradients as dense_forward on w * mask."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from refdns.kernels.masked_gemm import mask_csr

from refdns.layers import (
    SparseWeight,
    dense_backward,
    dense_forward,
    sparse_dense_backward,
    sparse_dense_forward,
)
from tests.gradcheck import assert_layer_gradients
from tests.strategies import dense_cases
from tests.tolerances import assert_close


def _sparse(w, mask):
    return SparseWeight(w, *mask_csr(mask))


@given(case=dense_cases(), seed=st.integers(0, 2**32 - 1), density=st.floats(0.0, 1.0))
def test_gradients_of_x_and_b_match_central_differences(case, seed, density):
    mask = np.random.default_rng(seed).random(case.w.shape) < density
    sw = _sparse(case.w, mask)
    # dw is dL/dw_eff at every entry, which a difference quotient through the sparse forward cannot see at
    # pruned entries; it is checked against the gradchecked dense layer below.
    assert_layer_gradients(lambda x, b: sparse_dense_forward(x, sw, b),
                           lambda d, c: sparse_dense_backward(d, c)[::2],
                           {"x": case.x, "b": case.b}, case.dout)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_equals_the_dense_layer_on_w_times_mask(dtype, data):
    case = data.draw(dense_cases(dtype=dtype))
    mask = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).random(case.w.shape) < data.draw(
        st.floats(0.0, 1.0))
    sw = _sparse(case.w, mask)
    np.testing.assert_array_equal(sw.toarray(), case.w * mask)
    out_s, cache_s = sparse_dense_forward(case.x, sw, case.b)
    out_d, cache_d = dense_forward(case.x, case.w * mask, case.b)
    assert out_s.dtype == dtype
    assert_close(out_s, out_d)
    for need_dx in (True, False):
        gs = sparse_dense_backward(case.dout, cache_s, need_dx=need_dx)
        gd = dense_backward(case.dout, cache_d, need_dx=need_dx)
        assert (gs[0] is None) == (not need_dx)
        for a, e in zip(gs, gd, strict=True):
            if e is not None:
                assert_close(a, e)  # dw: dL/dw_eff at every entry, pruned ones included


def test_bad_arguments_are_refused():
    sw = _sparse(np.ones((3, 4), np.float32), np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="b:"):
        sparse_dense_forward(np.ones((2, 4), np.float32), sw, np.ones(4, np.float32))
    _, cache = sparse_dense_forward(np.ones((2, 4), np.float32), sw, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="dout"):
        sparse_dense_backward(np.ones((2, 4), np.float32), cache)
