"""Bytes per Deep Compression stage, per layer and in total, in the paper's Table form.

Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
Huffman Coding", ICLR 2016, Tables 2-5: per layer "#Weights, Weights% (P), Weight bits (P+Q), Weight bits
(P+Q+H), Index bits (P+Q), Index bits (P+Q+H), Compress rate (P+Q), Compress rate (P+Q+H)". Per layer with
n weights, b biases, nnz kept weights, K centroids, ``bits``-bit cluster indices and k-bit relative indices
(``entries`` = nnz + fillers, counted by :func:`refdns.sparse.relative_index_entries`):

- ``dense_bytes``      = 4 (n + b)                                  every weight and bias float32;
- ``pruned_bytes``     = ceil(entries (32 + k) / 8) + 4 b           P: float32 value + k-bit relative index
  per entry (fillers included), the same count as :func:`refdns.sparse.storage_report`'s ``rel_bytes``;
- ``quantized_bytes``  = ceil(entries (bits + k) / 8) + 4 K + 4 b   P+Q: a ``bits``-bit cluster index instead
  of the value (a filler still takes one, as the paper's zero does), plus the float32 codebook;
- ``huffman_bytes``    = ceil(H_idx / 8) + ceil(H_pos / 8) + 4 K + 4 b   P+Q+H: the two Huffman streams of
  the ``.rdc`` file (H_idx bits of cluster indices of kept weights, H_pos bits of relative indices with
  fillers as their own symbol), plus codebook and bias;
- ``rdc_bytes``        = the layer's bytes in the ``.rdc`` file: the above plus its name, shape, counts,
  Huffman code-length tables and the packed bias mask; the total row's ``rdc_bytes`` is the file size
  (header and checksum included).

Biases stay float32 at every stage (the paper quantises weights only). Ratios are dense / stage (the
paper's "compression rate" is the inverse, in %; :func:`format_report` shows both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from refdns.compress.quantize import QuantizedLayer
from refdns.compress.rdc import encode_net

STAGES = ("pruned", "quantized", "huffman", "rdc")


def _ceil8(bits: int) -> int:
    return (bits + 7) // 8


def compression_report(layers: Sequence[QuantizedLayer], *, index_bits: dict[str, int] | None = None,
                       net_name: str = "") -> list[dict[str, Any]]:
    """Per-layer rows and a final ``"total"`` row of bytes per stage (see the module docstring).

    Parameters
    ----------
    layers : sequence of QuantizedLayer
    index_bits : dict {layer: int}, optional
        Relative-index widths, as for :func:`refdns.compress.rdc.write_rdc` (default 8 conv, 5 fc).
    net_name : str
        Only changes the total ``rdc_bytes`` by its length, as it would in the file.

    Returns
    -------
    rows : list of dict
        Keys: layer, kind, weights, kept, density, biases, clusters, bits, index_bits, entries, fillers,
        {dense,pruned,quantized,huffman,rdc}_bytes, weight_bits_h (mean Huffman bits per kept weight),
        index_bits_h (mean Huffman bits per entry), ratio_{pruned,quantized,huffman,rdc} (dense / stage).
    """
    data, encoded = encode_net(net_name, layers, index_bits=index_bits)
    rows: list[dict[str, Any]] = []
    for e in encoded:
        n_w = math.prod(e.shape)
        n_b = int(e.bias.size)
        k_cb = int(e.codebook.size)
        bias_bytes = 4 * n_b
        rows.append({
            "layer": e.name, "kind": e.kind, "weights": n_w, "kept": e.n_kept, "density": e.n_kept / n_w,
            "biases": n_b, "clusters": k_cb, "bits": e.bits, "index_bits": e.index_bits,
            "entries": e.n_entries, "fillers": e.n_fillers,
            "dense_bytes": 4 * (n_w + n_b),
            "pruned_bytes": _ceil8(e.n_entries * (32 + e.index_bits)) + bias_bytes,
            "quantized_bytes": _ceil8(e.n_entries * (e.bits + e.index_bits)) + 4 * k_cb + bias_bytes,
            "huffman_bytes": _ceil8(e.index_nbits) + _ceil8(e.pos_nbits) + 4 * k_cb + bias_bytes,
            "rdc_bytes": len(e.block()) + 2 + len(e.name.encode("utf-8")),
            "index_huffman_bits": e.index_nbits, "pos_huffman_bits": e.pos_nbits,
            "weight_bits_h": e.index_nbits / e.n_kept if e.n_kept else 0.0,
            "index_bits_h": e.pos_nbits / e.n_entries if e.n_entries else 0.0,
        })
    total: dict[str, Any] = {"layer": "total", "kind": ""}
    for key in ("weights", "kept", "biases", "clusters", "entries", "fillers", "dense_bytes", "pruned_bytes",
                "quantized_bytes", "huffman_bytes", "index_huffman_bits", "pos_huffman_bits"):
        total[key] = int(sum(r[key] for r in rows))
    total["rdc_bytes"] = len(data)
    total["density"] = total["kept"] / total["weights"]
    # Widths of the total row: averages weighted by what they are widths of.
    total["bits"] = sum(r["bits"] * r["entries"] for r in rows) / max(total["entries"], 1)
    total["index_bits"] = sum(r["index_bits"] * r["entries"] for r in rows) / max(total["entries"], 1)
    total["weight_bits_h"] = total["index_huffman_bits"] / max(total["kept"], 1)
    total["index_bits_h"] = total["pos_huffman_bits"] / max(total["entries"], 1)
    for r in (*rows, total):
        for stage in STAGES:
            r[f"ratio_{stage}"] = r["dense_bytes"] / r[f"{stage}_bytes"]
    return rows + [total]


def _bits(v: float | int) -> str:
    return str(v) if isinstance(v, int) else f"{v:.1f}"


def format_report(rows: list[dict[str, Any]], *, title: str | None = None) -> str:
    """The report as markdown: the paper's Table columns, then bytes per stage and ratios."""
    lines = [f"**{title}**", ""] if title else []
    lines += [
        "| layer | #weights | weights % (P) | weight bits (P+Q) | weight bits (P+Q+H) | index bits (P+Q) "
        "| index bits (P+Q+H) | compress rate (P+Q) | compress rate (P+Q+H) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['weights']:,} | {100 * r['density']:.1f}% | {_bits(r['bits'])} "
            f"| {r['weight_bits_h']:.1f} | {_bits(r['index_bits'])} | {r['index_bits_h']:.1f} "
            f"| {100 / r['ratio_quantized']:.2f}% | {100 / r['ratio_huffman']:.2f}% |")
    lines += [
        "",
        "| layer | dense B | pruned B (P) | quantised B (P+Q) | Huffman B (P+Q+H) | .rdc B | fillers "
        "| dense / P | dense / P+Q | dense / P+Q+H | dense / .rdc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['dense_bytes']:,} | {r['pruned_bytes']:,} | {r['quantized_bytes']:,} "
            f"| {r['huffman_bytes']:,} | {r['rdc_bytes']:,} | {r['fillers']:,} | {r['ratio_pruned']:.1f}x "
            f"| {r['ratio_quantized']:.1f}x | {r['ratio_huffman']:.1f}x | {r['ratio_rdc']:.1f}x |")
    return "\n".join(lines) + "\n"
