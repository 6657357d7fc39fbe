"""The fused whole-MLP kernel and its parallel variant against the NumPy twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.errors import NonFiniteError
from refdns.kernels.mlp_fused import mlp_forward_fused, mlp_forward_fused_parallel, mlp_forward_ref, pack_mlp
from refdns.sparse import csr_from_dense
from tests.kernels.sparse_cases import csr64, pruned_matrices
from tests.strategies import float_arrays
from tests.tolerances import assert_close


def _layers(ws, bs):
    out = []
    for w, b in zip(ws, bs):
        t = csr64(w.T)  # W^T in CSR
        out.append((t.indptr, t.indices, t.data, b))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_matches_twin(dtype, data):
    dims = data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    ws = [data.draw(pruned_matrices(dims[i + 1], dims[i], dtype=dtype)) for i in range(len(dims) - 1)]
    bs = [data.draw(float_arrays((dims[i + 1],), dtype=dtype)) for i in range(len(dims) - 1)]
    n = data.draw(st.integers(1, 4))
    x = data.draw(float_arrays((n, dims[0]), dtype=dtype))
    x[np.abs(x) < 0.3] = 0
    layers = _layers(ws, bs)
    packed = pack_mlp(layers)
    y = mlp_forward_fused(packed, x)
    assert y.dtype == dtype and y.shape == (n, dims[-1])
    assert_close(y, mlp_forward_ref(layers, x), dtype=dtype)
    np.testing.assert_array_equal(mlp_forward_fused_parallel(packed, x, n_chunks=3), y)


def test_fully_pruned_middle_layer_passes_its_bias_on(rng):
    ws = [rng.standard_normal((4, 6)).astype(np.float32), np.zeros((3, 4), np.float32),
          rng.standard_normal((2, 3)).astype(np.float32)]
    bs = [rng.standard_normal(k).astype(np.float32) for k in (4, 3, 2)]
    x = rng.standard_normal((2, 6)).astype(np.float32)
    y = mlp_forward_fused(pack_mlp(_layers(ws, bs)), x)
    want = ws[2].astype(np.float64) @ np.maximum(bs[1], 0) + bs[2]
    assert_close(y, np.tile(want, (2, 1)), dtype=np.float32)


@pytest.mark.filterwarnings("ignore:overflow encountered")  # NumPy scalars warn when the JIT is off
def test_non_finite_input_and_overflow_are_named_errors():
    big = [(np.full((2, 2), 3e38, np.float32)), np.eye(2, dtype=np.float32)]
    packed = pack_mlp(_layers(big, [np.zeros(2, np.float32)] * 2))
    with pytest.raises(NonFiniteError, match="sample 1: NaN or Inf in the input of layer 0"):
        mlp_forward_fused(packed, np.array([[0, 0], [np.nan, 0]], np.float32))
    with pytest.raises(NonFiniteError, match="layer 1"):  # 3e38 * 2 + 3e38 * 2 overflows in layer 0
        mlp_forward_fused_parallel(packed, np.ones((3, 2), np.float32))


def test_mismatched_shapes_are_named_errors():
    a = csr_from_dense(np.ones((3, 4), np.float32))  # W^T: 3 inputs -> 4 outputs
    with pytest.raises(ValueError, match="layer 1 takes 3 inputs but the layer before gives 4"):
        pack_mlp([(a.indptr, a.indices, a.data, np.zeros(4, np.float32))] * 2)
    packed = pack_mlp([(a.indptr, a.indices, a.data, np.zeros(4, np.float32))])
    with pytest.raises(ValueError, match=r"expected \(N, 3\)"):
        mlp_forward_fused(packed, np.ones((1, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        mlp_forward_fused(packed, np.ones((1, 3), np.float64))


def test_preallocated_out_and_parallel_flag(rng):
    ws = [rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)]
    bs = [rng.standard_normal(k).astype(np.float32) for k in (4, 2)]
    packed = pack_mlp(_layers(ws, bs))
    x = rng.standard_normal((5, 6)).astype(np.float32)
    want = mlp_forward_fused(packed, x)
    out = np.empty((5, 2), np.float32)
    for parallel in (False, True):
        got = mlp_forward_fused(packed, x, out=out, parallel=parallel)
        assert got is out
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="out has shape"):
        mlp_forward_fused(packed, x, out=np.empty((2, 5), np.float32))
    with pytest.raises(ValueError, match="n_chunks"):
        mlp_forward_fused(packed, x, parallel=True, n_chunks=0)
