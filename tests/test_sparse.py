"""CSR export, storage accounting (Deep Compression's relative index), SparseNet and `refdns infer`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns import checkpoint
from refdns.cli import main
from refdns.errors import NonFiniteError, SparseFormatError
from refdns.nets import bias_key, forward, get_spec, weight_key
from refdns.run import TrainConfig, effective_params, new_run
from refdns.sparse import (
    CSRMatrix,
    SparseNet,
    csr_from_dense,
    export_csr,
    relative_index_entries,
    storage_report,
)
from tests.conftest import require_data
from tests.tolerances import assert_close


def pruned_state(name: str, rng: np.random.Generator, density: float, *, n_train: int = 64):
    """A run state with random weights and a random mask keeping about ``density`` of every tensor."""
    spec = get_spec(name)
    state = new_run(spec, n_train, TrainConfig(iterations=1), seed=int(rng.integers(2**31)))
    for k, w in state.params.items():
        state.params[k] = (rng.standard_normal(w.shape) * 0.3).astype(np.float32)
        state.masks[k] = rng.random(w.shape) < density
    return state


def test_csr_round_trip_and_transpose(rng):
    w = (rng.standard_normal((7, 9)) * (rng.random((7, 9)) < 0.3)).astype(np.float32)
    w[3] = 0  # an empty row
    c = csr_from_dense(w)
    assert c.indptr.dtype == c.indices.dtype == np.int32 and c.data.dtype == np.float32
    assert c.nnz == np.count_nonzero(w) and c.nbytes == 8 * c.nnz + 4 * 8
    np.testing.assert_array_equal(c.to_dense(), w)
    np.testing.assert_array_equal(c.transpose().to_dense(), w.T)
    empty = csr_from_dense(np.zeros((3, 4), np.float32))
    assert empty.nnz == 0 and empty.transpose().shape == (4, 3)


def test_csr_refuses_non_finite_and_non_2d():
    with pytest.raises(NonFiniteError, match=r"\(0, 1\)"):
        csr_from_dense(np.array([[0, np.nan]], np.float32))
    with pytest.raises(SparseFormatError, match="2-D"):
        csr_from_dense(np.ones(3, np.float32))


def _encode_by_hand(mask_flat: np.ndarray, bits: int) -> int:
    """Deep Compression Fig. 2, written as the sequential encoder: returns the number of stored entries.

    Zeros after the last non-zero are not encoded (the layer's size is known).
    """
    nz = np.flatnonzero(mask_flat)
    mask_flat = mask_flat[: nz[-1] + 1] if nz.size else mask_flat[:0]
    entries, run = 0, 0
    for keep in mask_flat:
        if keep:
            entries += 1
            run = 0
        else:
            run += 1
            if run == 2**bits:  # 2^k - 1 zeros were skipped already: this zero is stored as a filler
                entries += 1
                run = 0
    return entries


def test_relative_index_fillers_as_in_deep_compression_figure_2():
    # 3-bit indices (up to 7 skipped zeros): non-zeros at 1, 4 and 15 -> gaps 1, 2, 10 -> one filler.
    assert relative_index_entries(np.array([1, 4, 15]), 3) == (4, 1)
    assert relative_index_entries(np.array([8]), 3) == (2, 1)  # 8 zeros first: filler at 7, then gap 0
    assert relative_index_entries(np.array([7]), 3) == (1, 0)
    assert relative_index_entries(np.array([], dtype=np.int64), 3) == (0, 0)
    with pytest.raises(ValueError, match="bits"):
        relative_index_entries(np.array([1]), 0)


@given(mask=st.lists(st.booleans(), max_size=60), bits=st.integers(1, 5))
def test_relative_index_matches_a_sequential_encoder(mask, bits):
    m = np.array(mask, dtype=bool)
    entries, fillers = relative_index_entries(np.flatnonzero(m), bits)
    assert entries == _encode_by_hand(m, bits)
    assert fillers == entries - m.sum()


def test_storage_report_counts_bytes(rng):
    state = pruned_state("lenet-5", rng, 0.05)
    rows = storage_report(export_csr(state.spec, state.params, state.masks))
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "ip1", "ip2", "total"]
    for r, op in zip(rows, state.spec.layers):
        w = state.params[weight_key(op.name)] * state.masks[weight_key(op.name)]
        nnz = np.count_nonzero(w)
        n_b = op.b_shape[0]
        assert r["nnz"] == nnz and r["rel_index_bits"] == (8 if op.kind == "conv" else 5)
        assert r["dense_bytes"] == 4 * (w.size + n_b)
        assert r["csr_bytes"] == 8 * nnz + 4 * (op.w_shape[0] + 1) + 4 * n_b
        entries = nnz + r["rel_fillers"]
        assert r["rel_bytes"] == (entries * (32 + r["rel_index_bits"]) + 7) // 8 + 4 * n_b
        assert r["best_rel_bytes"] <= r["rel_bytes"]
        assert r["params_kept"] == nnz + state.masks[bias_key(op.name)].sum()
    total = rows[-1]
    assert total["dense_bytes"] == 4 * state.spec.n_params()
    assert total["param_ratio"] == pytest.approx(state.spec.n_params() / total["params_kept"])


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_sparse_net_from_checkpoint_matches_dense(name, rng, tmp_path):
    state = pruned_state(name, rng, 0.05)
    state.masks["ip2.weight"][:] = False  # an entirely pruned layer
    if name == "lenet-300-100":
        state.masks["ip1.weight"][:7] = False  # empty rows
    path = checkpoint.save(tmp_path / "p.h5", state, method="test")
    st = checkpoint.load(path).state
    net = SparseNet.from_params(st.spec, st.params, st.masks)
    x = rng.random((5, 1, 28, 28)).astype(np.float32)
    x[x < 0.6] = 0  # MNIST-like: mostly background
    want, _ = forward(state.spec, effective_params(state.params, state.masks), x)
    mlp_paths = [("fused", False), ("fused", True), ("tiled", False), ("tiled", True)]
    paths = [("layers", False), ("layers", True)] + (mlp_paths if net.is_mlp else [])
    for path_, par in paths:
        got = net.forward(x, path=path_, parallel=par)
        assert got.shape == (5, 10)
        assert_close(got, want, dtype=np.float32)
    assert_close(net.forward(x[:1]), want[:1], dtype=np.float32)


def test_sparse_net_runs_serial_kernels_unless_asked(rng, monkeypatch):
    import refdns.nets.ops
    import refdns.sparse

    seen = []

    def spy(kernel):
        def wrapper(*args, parallel=False, **kwargs):
            seen.append(parallel)
            return kernel(*args, parallel=parallel, **kwargs)

        return wrapper

    for module, name in ((refdns.nets.ops, "csr_matmul"), (refdns.nets.ops, "sparse_conv2d"),
                         (refdns.sparse, "mlp_forward_fused"), (refdns.sparse, "mlp_forward_tiled")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    x = rng.random((128, 1, 28, 28)).astype(np.float32)  # past the batch at which parallel used to start
    for name in ("lenet-300-100", "lenet-5"):
        state = pruned_state(name, rng, 0.05)
        net = SparseNet.from_params(state.spec, state.params, state.masks)
        paths = ("layers", "fused", "tiled", None) if net.is_mlp else ("layers", None)
        for path in paths:
            seen.clear()
            serial = net.forward(x, path=path)
            assert seen and not any(seen)
            seen.clear()
            np.testing.assert_array_equal(net.forward(x, path=path, parallel=True), serial)  # bit-identical
            assert seen and all(seen)


def test_sparse_net_refuses_bad_input(rng):
    state = pruned_state("lenet-300-100", rng, 0.05)
    net = SparseNet.from_params(state.spec, state.params, state.masks)
    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(ValueError, match="expected"):
        net.forward(np.zeros((2, 784), np.float32))
    with pytest.raises(TypeError, match="float32"):
        net.forward(x.astype(np.float64))
    x[1, 0, 3, 4] = np.inf
    for path in ("fused", "tiled", "layers"):
        with pytest.raises(NonFiniteError):
            net.forward(x, path=path)
    with pytest.raises(ValueError, match="path"):
        net.forward(x[:1] * 0, path="bogus")
    lenet5 = pruned_state("lenet-5", rng, 0.05)
    for path in ("fused", "tiled"):
        with pytest.raises(ValueError, match="needs an MLP"):
            SparseNet.from_params(lenet5.spec, lenet5.params, lenet5.masks).forward(
                np.zeros((1, 1, 28, 28), np.float32), path=path)
    bad_masks = dict(state.masks, **{"ip1.weight": state.masks["ip1.weight"][:, :10]})
    with pytest.raises(SparseFormatError, match="mask shapes"):
        export_csr(state.spec, state.params, bad_masks)
    layers = export_csr(state.spec, state.params, state.masks)
    with pytest.raises(SparseFormatError, match="do not match"):
        SparseNet(lenet5.spec, layers)
    c = layers[0].csr
    broken = CSRMatrix(c.indptr, c.indices.astype(np.int64), c.data, c.shape)
    with pytest.raises(SparseFormatError, match="int32"):
        SparseNet(state.spec, (type(layers[0])(**{**layers[0].__dict__, "csr": broken}), *layers[1:]))


def test_infer_cli_sparse_and_dense_agree(rng, tmp_path):
    d = require_data()
    state = pruned_state("lenet-300-100", rng, 0.03)
    path = checkpoint.save(tmp_path / "p.h5", state, method="test")
    out = {}
    for mode in ("dense", "sparse"):
        argv = ["infer", str(path), "--data-dir", str(d), "--json", str(tmp_path / f"{mode}.json")]
        assert main(argv + (["--sparse", "--threads", "1"] if mode == "sparse" else [])) == 0
        out[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    assert out["dense"]["threads"] == out["sparse"]["threads"] == 1  # the default, and the flag
    assert out["sparse"]["predictions_sha256"] == out["dense"]["predictions_sha256"]
    assert out["sparse"]["test_error"] == out["dense"]["test_error"]
    assert 0.0 <= out["dense"]["test_error"] <= 1.0 and out["dense"]["n_test"] == 10_000
    assert out["sparse"]["storage"][-1]["layer"] == "total"


def test_infer_cli_reports_a_damaged_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    assert main(["infer", str(bad), "--sparse"]) == 2
    assert "not a refdns checkpoint" in capsys.readouterr().err
