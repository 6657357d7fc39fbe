"""The tiled whole-MLP kernel and its parallel variant against the scipy twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.errors import NonFiniteError, SparseFormatError
from refdns.kernels.mlp_fused import mlp_forward_fused, pack_mlp
from refdns.kernels.mlp_tiled import (mlp_forward_tiled, mlp_forward_tiled_parallel, mlp_tiled_ref,
                                      pack_mlp_tiled, workspace)
from tests.kernels.sparse_cases import csr64, pruned_matrices
from tests.strategies import float_arrays
from tests.tolerances import assert_close


def _layers(ws, bs):
    out = []
    for w, b in zip(ws, bs):
        c = csr64(w)  # W in CSR (rows = outputs)
        out.append((c.indptr, c.indices, c.data, b))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_matches_twin_any_tile(dtype, data):
    dims = data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=4))
    ws = [data.draw(pruned_matrices(dims[i + 1], dims[i], dtype=dtype)) for i in range(len(dims) - 1)]
    bs = [data.draw(float_arrays((dims[i + 1],), dtype=dtype)) for i in range(len(dims) - 1)]
    n = data.draw(st.integers(1, 9))
    x = data.draw(float_arrays((n, dims[0]), dtype=dtype))
    x[np.abs(x) < 0.3] = 0
    layers = _layers(ws, bs)
    packed = pack_mlp_tiled(layers, n_in=dims[0])
    y = mlp_forward_tiled(packed, x)
    assert y.dtype == dtype and y.shape == (n, dims[-1])
    assert_close(y, mlp_tiled_ref(layers, x, n_in=dims[0]), dtype=dtype)
    tile = data.draw(st.integers(1, 4))  # several tiles, the last one partial
    np.testing.assert_array_equal(mlp_forward_tiled(packed, x, tile=tile), y)  # tiles do not change a sum
    np.testing.assert_array_equal(mlp_forward_tiled_parallel(packed, x, n_chunks=3), y)
    np.testing.assert_array_equal(mlp_forward_tiled(packed, x, scratch=workspace(packed, n, 2, tile=tile),
                                                    parallel=True), y)


def test_agrees_with_the_per_sample_kernel(rng):
    # The same net through both MLP kernels (W^T for the fused one): same logits up to float32 rounding.
    ws = [(rng.standard_normal((30, 50)) * (rng.random((30, 50)) < 0.1)).astype(np.float32),
          (rng.standard_normal((10, 30)) * (rng.random((10, 30)) < 0.3)).astype(np.float32)]
    bs = [rng.standard_normal(k).astype(np.float32) for k in (30, 10)]
    x = np.maximum(rng.standard_normal((300, 50)), 0).astype(np.float32)  # three tiles of 128, the last partial
    tiled = mlp_forward_tiled(pack_mlp_tiled(_layers(ws, bs), n_in=50), x)
    fused = mlp_forward_fused(pack_mlp([(csr64(w.T).indptr, csr64(w.T).indices, csr64(w.T).data, b)
                                        for w, b in zip(ws, bs)]), x)
    assert_close(tiled, fused, dtype=np.float32)


def test_fully_pruned_layers_pass_their_bias_on(rng):
    ws = [np.zeros((4, 6), np.float32), np.zeros((3, 4), np.float32), rng.standard_normal((2, 3)).astype(np.float32)]
    bs = [rng.standard_normal(k).astype(np.float32) for k in (4, 3, 2)]
    x = rng.standard_normal((2, 6)).astype(np.float32)
    y = mlp_forward_tiled(pack_mlp_tiled(_layers(ws, bs), n_in=6), x)
    want = ws[2].astype(np.float64) @ np.maximum(bs[1], 0) + bs[2]
    assert_close(y, np.tile(want, (2, 1)), dtype=np.float32)


@pytest.mark.filterwarnings("ignore:overflow encountered")  # NumPy scalars warn when the JIT is off
@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_non_finite_input_and_overflow_are_named_errors():
    big = [np.full((2, 2), 3e38, np.float32), np.eye(2, dtype=np.float32)]
    packed = pack_mlp_tiled(_layers(big, [np.zeros(2, np.float32)] * 2), n_in=2)
    x = np.zeros((5, 2), np.float32)
    x[3, 1] = np.nan  # in a column no weight reads: refused all the same (dense would give NaN)
    packed_one_col = pack_mlp_tiled(_layers([np.array([[1, 0]], np.float32)], [np.zeros(1, np.float32)]), n_in=2)
    with pytest.raises(NonFiniteError, match="sample 3"):
        mlp_forward_tiled(packed_one_col, x, tile=2)
    with pytest.raises(NonFiniteError, match="sample 3"):
        mlp_forward_tiled_parallel(packed, x, n_chunks=2)
    with pytest.raises(NonFiniteError, match="logits of sample 0 overflowed"):
        mlp_forward_tiled(packed, np.ones((3, 2), np.float32))


def test_bad_arguments_are_named_errors(rng):
    w = (rng.standard_normal((4, 3))).astype(np.float32)
    layers = _layers([w], [np.zeros(4, np.float32)])
    with pytest.raises(ValueError, match="no|at least one layer"):
        pack_mlp_tiled([], n_in=3)
    wide = _layers([np.ones((2, 6), np.float32)], [np.zeros(2, np.float32)])
    with pytest.raises(SparseFormatError):
        pack_mlp_tiled(layers + wide, n_in=3)  # layer 1 reads input 5, layer 0 gives 4
    packed = pack_mlp_tiled(layers, n_in=3)
    with pytest.raises(ValueError, match=r"expected \(N, 3\)"):
        mlp_forward_tiled(packed, np.ones((1, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        mlp_forward_tiled(packed, np.ones((1, 3), np.float64))
    with pytest.raises(ValueError, match="tile"):
        mlp_forward_tiled(packed, np.ones((1, 3), np.float32), tile=0)
    with pytest.raises(ValueError, match="scratch"):
        mlp_forward_tiled(packed, np.ones((1, 3), np.float32), scratch=np.empty((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="n_chunks"):
        mlp_forward_tiled(packed, np.ones((1, 3), np.float32), parallel=True, n_chunks=0)
    out = np.empty((2, 4), np.float32)
    assert mlp_forward_tiled(packed, np.ones((2, 3), np.float32), out=out) is out
    assert mlp_forward_tiled(packed, np.ones((0, 3), np.float32)).shape == (0, 4)
