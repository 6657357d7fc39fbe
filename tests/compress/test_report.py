"""Bytes per Deep Compression stage on magnitude-pruned random LeNets, against sparse.py and the file."""

from __future__ import annotations

import numpy as np
import pytest

from refdns.compress import compression_report, format_report, quantize_net, write_rdc
from refdns.nets import get_spec, init_params
from refdns.sparse import export_csr, storage_report

# Han et al. 2015 Tables 2-3: per-layer densities of their pruned LeNets.
DENSITIES = {
    "lenet-300-100": {"ip1": 0.08, "ip2": 0.09, "ip3": 0.26},
    "lenet-5": {"conv1": 0.66, "conv2": 0.12, "ip1": 0.08, "ip2": 0.19},
}


def magnitude_pruned(name, rng):
    """Laplace weights (heavy tails like a trained net's), each layer pruned by magnitude to Han's density."""
    spec = get_spec(name)
    params = init_params(spec, rng=rng)
    masks = {}
    for op in spec.layers:
        w = (rng.laplace(size=op.w_shape) * np.sqrt(1.0 / op.fan_in)).astype(np.float32)
        params[f"{op.name}.weight"] = w
        params[f"{op.name}.bias"] = (rng.standard_normal(op.b_shape) * 0.01).astype(np.float32)
        masks[f"{op.name}.weight"] = np.abs(w) >= np.quantile(np.abs(w), 1 - DENSITIES[name][op.name])
        masks[f"{op.name}.bias"] = np.ones(op.b_shape, dtype=bool)
    return spec, params, masks


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_report_counts_agree_with_sparse_and_with_the_file(name, rng, tmp_path):
    spec, params, masks = magnitude_pruned(name, rng)
    layers = quantize_net(spec, params, masks, max_iter=50)
    rows = compression_report(layers, net_name=name)
    assert [r["layer"] for r in rows] == [*spec.layer_names, "total"]
    by_layer = {r["layer"]: r for r in rows}
    # P: the same relative-index bytes as refdns.sparse counts them
    for s in storage_report(export_csr(spec, params, masks)):
        assert by_layer[s["layer"]]["pruned_bytes"] == s["rel_bytes"]
        assert by_layer[s["layer"]]["dense_bytes"] == s["dense_bytes"]
        assert by_layer[s["layer"]]["fillers"] == s["rel_fillers"]
    # .rdc: the total is the file's size
    path = write_rdc(tmp_path / "net.rdc", name, layers)
    total = rows[-1]
    assert total["rdc_bytes"] == path.stat().st_size
    assert total["rdc_bytes"] - sum(r["rdc_bytes"] for r in rows[:-1]) == 20 + 2 + len(name) + 4 + 32
    for r in rows:
        assert r["dense_bytes"] > r["pruned_bytes"] > r["quantized_bytes"] > r["huffman_bytes"]
        assert r["huffman_bytes"] <= r["rdc_bytes"] or r["layer"] == "total"
        assert r["weight_bits_h"] <= r["bits"]  # Huffman is never longer than a fixed-width index
        assert r["ratio_huffman"] == r["dense_bytes"] / r["huffman_bytes"]
    assert total["dense_bytes"] == 4 * spec.n_params()
    assert total["ratio_huffman"] > total["ratio_quantized"] > total["ratio_pruned"] > 1


def test_report_by_hand():
    """One 2x8 layer, 3 kept weights at 0, 1 and 15, 1-bit clusters, 2-bit relative indices."""
    from refdns.compress import QuantizedLayer

    mask = np.zeros((2, 8), dtype=bool)
    mask.flat[[0, 1, 15]] = True
    layer = QuantizedLayer("ip1", "dense", 1, np.array([-1.0, 1.0], dtype=np.float32),
                           np.array([0, 1, 1], dtype=np.int32), mask, np.zeros(2, dtype=np.float32),
                           np.ones(2, dtype=bool))
    (r, total) = compression_report([layer], index_bits={"ip1": 2})
    # gaps 0, 0, 13 -> 13 = 3 fillers (4 positions each) + 1: entries 0, 0, F, F, F, 1
    assert (r["entries"], r["fillers"]) == (6, 3)
    assert r["dense_bytes"] == 4 * 18
    assert r["pruned_bytes"] == (6 * 34 + 7) // 8 + 8
    assert r["quantized_bytes"] == (6 * 3 + 7) // 8 + 8 + 8
    # index stream: 3 symbols x 1 bit; positions: F x3 (1 bit), 0 x2 (2 bits), 1 (2 bits) -> 9 bits
    assert (r["index_huffman_bits"], r["pos_huffman_bits"]) == (3, 9)
    assert r["huffman_bytes"] == 1 + 2 + 8 + 8
    assert total["rdc_bytes"] == r["rdc_bytes"] + 20 + 2 + 4 + 32


def test_markdown_has_the_papers_columns_and_a_row_per_layer(rng):
    spec, params, masks = magnitude_pruned("lenet-300-100", rng)
    rows = compression_report(quantize_net(spec, params, masks, max_iter=20))
    text = format_report(rows, title="LeNet-300-100")
    assert text.startswith("**LeNet-300-100**")
    for col in ("weight bits (P+Q+H)", "index bits (P+Q)", "compress rate (P+Q+H)", "dense / P+Q+H"):
        assert col in text
    table_rows = [line for line in text.splitlines() if line.startswith("| ip") or line.startswith("| total")]
    assert len(table_rows) == 2 * len(rows)
