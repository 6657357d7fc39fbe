"""Pruned checkpoints as sparse matrices: CSR export, storage accounting, and a sparse forward pass.

A pruned layer keeps ``w_eff = w * mask``. :func:`export_csr` stores each layer's effective weight in CSR form
(float32 values, int32 column indices, int32 row pointers; conv filter banks as (F, C*KH*KW) matrices) and
its effective bias densely. :func:`storage_report` counts the bytes of three encodings per layer and for the
whole net:

- dense: every weight and bias as float32;
- CSR: ``nnz * (4 + 4) + (rows + 1) * 4`` bytes for the weight, plus the dense bias;
- relative index, Han, Mao & Dally, "Deep Compression" (ICLR 2016), sec. 2: "we store the index difference
  instead of the absolute position, and encode this difference in 8 bits for conv layer and 5 bits for fc
  layer. When we need an index difference larger than the bound, we [use] the zero padding solution shown in
  Figure 2 ... we add a filler zero". Here each stored entry carries a ``k``-bit count of the zeros skipped
  before it in the layer's row-major weight order (0 .. 2^k - 1); a longer run of zeros is broken by a filler
  entry (a stored 0.0) after every 2^k - 1 zeros. Values stay float32 (pruning only: Deep Compression's
  quantization and Huffman stages are not part of refdns).

:class:`SparseNet` runs a net's forward pass on the CSR layers with the kernels of :mod:`refdns.kernels`:
the fused whole-MLP kernel for networks of dense layers, the sparse direct convolution for conv layers, the
feature-major sparse x dense product for dense layers behind convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from refdns.errors import NonFiniteError, SparseFormatError
from refdns.kernels import check_csr
from refdns.kernels.csr_matmul import TILE, workspace
from refdns.kernels.mlp_fused import mlp_forward_fused, pack_mlp
from refdns.kernels.mlp_tiled import TILE as MLP_TILE
from refdns.kernels.mlp_tiled import mlp_forward_tiled, pack_mlp_tiled
from refdns.kernels.mlp_tiled import workspace as mlp_workspace
from refdns.nets.ops import OPS, SparseAct, bias_key, weight_key
from refdns.nets.sequential import NetSpec, check_params

#: Relative-index widths of Deep Compression sec. 2.
HAN_INDEX_BITS = {"conv": 8, "dense": 5}


@dataclass(frozen=True)
class CSRMatrix:
    """A float32 CSR matrix with int32 indices. Row r's entries are ``data[indptr[r]:indptr[r + 1]]``."""

    indptr: np.ndarray  # (rows + 1,) int32
    indices: np.ndarray  # (nnz,) int32, sorted within each row
    data: np.ndarray  # (nnz,) float32, no stored zeros
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(len(self.data))

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes)

    def to_dense(self) -> np.ndarray:
        """ndarray, shape ``self.shape``, float32."""
        out = np.zeros(self.shape, dtype=self.data.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices] = self.data
        return out

    def transpose(self) -> CSRMatrix:
        """CSR of the transpose (= CSC of ``self``): row j lists the rows of ``self`` that column j feeds."""
        rows = np.repeat(np.arange(self.shape[0], dtype=np.int32), np.diff(self.indptr))
        order = np.lexsort((rows, self.indices))  # by column, then row
        counts = np.bincount(self.indices, minlength=self.shape[1])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        return CSRMatrix(indptr, rows[order], self.data[order], (self.shape[1], self.shape[0]))


def csr_from_dense(w: np.ndarray, *, name: str = "w") -> CSRMatrix:
    """CSR of a 2-D float32 array, keeping only its non-zero entries.

    Raises
    ------
    NonFiniteError
        ``w`` holds NaN or Inf.
    SparseFormatError
        ``w`` is not 2-D or has more entries than int32 indices can address.
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise SparseFormatError(f"{name} has shape {w.shape}: CSR export needs a 2-D matrix")
    if w.size >= 2**31:
        raise SparseFormatError(f"{name} has {w.size} entries: too many for int32 CSR indices")
    if not np.isfinite(w).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(w))[0])
        raise NonFiniteError(f"{name} holds NaN or Inf (first at {bad}); cannot export it", where=name)
    rows, cols = np.nonzero(w)  # row-major order: sorted by row, then column
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=w.shape[0]))]).astype(np.int32)
    return CSRMatrix(indptr, cols.astype(np.int32), w[rows, cols].astype(np.float32), (w.shape[0], w.shape[1]))


@dataclass(frozen=True)
class SparseLayer:
    """One exported layer: effective weight as CSR (outputs x fan-in), effective bias dense."""

    name: str
    kind: str  # "dense" or "conv"
    w_shape: tuple[int, ...]  # (M, D) or (F, C, KH, KW)
    csr: CSRMatrix
    bias: np.ndarray  # (M,) or (F,) float32
    bias_kept: int  # unmasked bias entries
    stride: int = 1
    pad: int = 0


def export_csr(spec: NetSpec, params: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None
               ) -> tuple[SparseLayer, ...]:
    """Every parametric layer of ``spec`` as a :class:`SparseLayer` holding ``w * mask`` and ``b * mask``.

    Parameters
    ----------
    spec : NetSpec
    params : dict of ndarray
        ``"<layer>.weight"`` / ``"<layer>.bias"`` in Caffe layouts.
    masks : dict of ndarray (bool), optional
        Same keys and shapes; missing means all ones (a dense checkpoint exports its non-zero weights).
    """
    check_params(spec, params)
    out = []
    for op in spec.layers:
        wk, bk = weight_key(op.name), bias_key(op.name)
        w = np.asarray(params[wk], dtype=np.float32)
        b = np.asarray(params[bk], dtype=np.float32)
        if masks is not None:
            mw, mb = masks[wk], masks[bk]
            if mw.shape != w.shape or mb.shape != b.shape:
                raise SparseFormatError(f"{op.name}: mask shapes {mw.shape}/{mb.shape} differ from the "
                                        f"parameter shapes {w.shape}/{b.shape}")
            w = w * mw
            b = b * mb
            bias_kept = int(np.count_nonzero(mb))
        else:
            bias_kept = b.size
        if not np.isfinite(b).all():
            raise NonFiniteError(f"{bk} holds NaN or Inf; cannot export it", where=bk)
        csr = csr_from_dense(w.reshape(w.shape[0], -1), name=wk)
        out.append(SparseLayer(op.name, op.kind, tuple(w.shape), csr, np.ascontiguousarray(b), bias_kept,
                               op.stride, op.pad))
    return tuple(out)


def relative_index_entries(flat_positions: np.ndarray, bits: int) -> tuple[int, int]:
    """(stored entries, filler zeros) of Deep Compression's relative-index encoding.

    Parameters
    ----------
    flat_positions : ndarray, shape (nnz,), int
        Sorted positions of the non-zero weights in the layer's row-major (flattened) order.
    bits : int
        Width k of each relative index; it counts 0 .. 2^k - 1 skipped zeros.

    A run of z zeros before a non-zero needs ``z // 2^k`` fillers: each filler stands after 2^k - 1 skipped
    zeros and itself takes one position. Zeros after the last non-zero need no entries (the layer's size is
    known).
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 32:
        raise ValueError(f"bits={bits!r} must be an int in [1, 32]")
    pos = np.asarray(flat_positions, dtype=np.int64)
    if pos.size == 0:
        return 0, 0
    gaps = np.diff(pos, prepend=-1) - 1  # zeros skipped before each non-zero
    fillers = int(np.sum(gaps // (1 << int(bits))))
    return int(pos.size) + fillers, fillers


def _layer_storage(layer: SparseLayer, bits: int) -> dict[str, Any]:
    n_w = int(np.prod(layer.w_shape))
    n_b = int(layer.bias.size)
    rows = np.repeat(np.arange(layer.csr.shape[0], dtype=np.int64), np.diff(layer.csr.indptr))
    flat = rows * layer.csr.shape[1] + layer.csr.indices
    entries, fillers = relative_index_entries(flat, bits)
    best = min(range(1, 17), key=lambda k: relative_index_entries(flat, k)[0] * (32 + k))
    best_entries, _ = relative_index_entries(flat, best)
    bias_bytes = 4 * n_b
    dense_bytes = 4 * (n_w + n_b)
    csr_bytes = layer.csr.nbytes + bias_bytes
    rel_bytes = (entries * (32 + bits) + 7) // 8 + bias_bytes
    best_bytes = (best_entries * (32 + best) + 7) // 8 + bias_bytes
    kept = layer.csr.nnz + layer.bias_kept
    return {
        "layer": layer.name, "kind": layer.kind, "weights": n_w, "nnz": layer.csr.nnz,
        "density": layer.csr.nnz / n_w, "params": n_w + n_b, "params_kept": kept,
        "dense_bytes": dense_bytes, "csr_bytes": csr_bytes, "rel_index_bits": bits,
        "rel_fillers": fillers, "rel_bytes": rel_bytes, "best_index_bits": best, "best_rel_bytes": best_bytes,
        "csr_ratio": dense_bytes / csr_bytes, "rel_ratio": dense_bytes / rel_bytes,
    }


def storage_report(layers: tuple[SparseLayer, ...], *, index_bits: dict[str, int] | None = None
                   ) -> list[dict[str, Any]]:
    """Per-layer rows and a final ``"total"`` row of dense, CSR and relative-index bytes.

    ``index_bits`` maps layer kind to relative-index width (default :data:`HAN_INDEX_BITS`: 8 conv, 5 fc);
    each row also gives the width that minimises that layer's bytes (``best_index_bits``, searched over
    1..16). ``param_ratio`` is the papers' compression figure: parameters / kept parameters (biases count,
    as in the DNS paper's Table 1).
    """
    bits = dict(HAN_INDEX_BITS, **(index_bits or {}))
    rows = [_layer_storage(layer, bits[layer.kind]) for layer in layers]
    total: dict[str, Any] = {"layer": "total", "kind": ""}
    for key in ("weights", "nnz", "params", "params_kept", "dense_bytes", "csr_bytes", "rel_fillers",
                "rel_bytes", "best_rel_bytes"):
        total[key] = int(sum(r[key] for r in rows))
    total["density"] = total["nnz"] / total["weights"]
    total["csr_ratio"] = total["dense_bytes"] / total["csr_bytes"]
    total["rel_ratio"] = total["dense_bytes"] / total["rel_bytes"]
    for r in (*rows, total):
        r["param_ratio"] = r["params"] / max(r["params_kept"], 1)
        r["best_rel_ratio"] = r["dense_bytes"] / r["best_rel_bytes"]
    return rows + [total]


def format_storage(rows: list[dict[str, Any]]) -> str:
    """The storage report as a markdown table."""
    lines = [
        "| layer | weights | kept | density | dense B | CSR B | rel-index B (bits, fillers) | best bits: B "
        "| params / kept | dense / CSR | dense / rel |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bits = f"{r['rel_index_bits']}" if "rel_index_bits" in r else "8 conv / 5 fc"
        best = f"{r['best_index_bits']}: {r['best_rel_bytes']:,}" if "best_index_bits" in r else \
            f"{r['best_rel_bytes']:,}"
        lines.append(
            f"| {r['layer']} | {r['weights']:,} | {r['nnz']:,} | {100 * r['density']:.2f}% | {r['dense_bytes']:,} "
            f"| {r['csr_bytes']:,} | {r['rel_bytes']:,} ({bits}, {r['rel_fillers']:,}) | {best} "
            f"| {r['param_ratio']:.1f}x | {r['csr_ratio']:.1f}x | {r['rel_ratio']:.1f}x |"
        )
    return "\n".join(lines)


def _is_mlp(spec: NetSpec) -> bool:
    """flatten, then dense layers with a ReLU between consecutive ones and none after the last: the ops the
    fused MLP kernel runs (each op's ``mlp_role`` in the op table)."""
    roles = [OPS[op.kind].mlp_role for op in spec.ops]
    return roles == ["input"] + ["affine", "relu"] * ((len(roles) - 1) // 2) + ["affine"]


class SparseNet:
    """A pruned net's forward pass on CSR layers.

    Every layer is validated once here (CSR structure, finiteness); the forward pass then calls the public
    kernel wrappers of :mod:`refdns.kernels` with ``check_weights=False``, so they re-check only shapes and
    dtypes per call.

    Paths (``path`` of :meth:`forward`):

    - ``"fused"`` (MLPs only): :func:`refdns.kernels.mlp_fused.mlp_forward_fused` - every layer of a sample
      in one kernel call, zero activations skipped. The default at batch 1.
    - ``"tiled"`` (MLPs only): :func:`refdns.kernels.mlp_tiled.mlp_forward_tiled` - every layer of a tile of
      samples in one kernel call, the batch in the inner loop. The default for MLPs at batches > 1.
    - ``"layers"``: op by op, each op's ``sparse_forward`` from the op table :data:`refdns.nets.ops.OPS` -
      :func:`~refdns.kernels.sparse_conv.sparse_conv2d` for conv (with the following max-pool fused in when
      its size equals its stride; otherwise the max-pool of :mod:`refdns.layers`),
      :func:`~refdns.kernels.csr_matmul.csr_matmul` with feature-major activations for dense layers (ReLU
      fused into the product). The default for other nets at batches > 1.

    The kernels run serially unless ``parallel=True`` is passed to :meth:`forward`: their Numba-parallel
    variants give bit-identical results but never beat the serial ones on the two-core machine refdns was
    measured on, so they are used only when asked for (threads: Numba's default, i.e. the core count).
    Nothing in these paths calls BLAS, so Numba threads never meet BLAS threads here.
    """

    def __init__(self, spec: NetSpec, layers: tuple[SparseLayer, ...]):
        if tuple(layer.name for layer in layers) != spec.layer_names:
            raise SparseFormatError(f"layers {[la.name for la in layers]} do not match {spec.name}'s "
                                    f"{list(spec.layer_names)}")
        for la, op in zip(layers, spec.layers):
            if la.w_shape != op.w_shape:
                raise SparseFormatError(f"{la.name}: weight shape {la.w_shape}, {spec.name} needs {op.w_shape}")
            check_csr(la.name, la.csr.indptr, la.csr.indices, la.csr.data, la.csr.shape)
        self.spec = spec
        self.layers = {la.name: la for la in layers}
        self.is_mlp = _is_mlp(spec)
        self._buffers: dict[tuple, np.ndarray] = {}
        self.packed = self.tiled = None
        if self.is_mlp:
            t = [la.csr.transpose() for la in layers]
            self.packed = pack_mlp([(c.indptr, c.indices, c.data, la.bias) for c, la in zip(t, layers)])
            self.tiled = pack_mlp_tiled([(la.csr.indptr, la.csr.indices, la.csr.data, la.bias) for la in layers],
                                        n_in=int(np.prod(spec.input_shape)))

    @classmethod
    def from_params(cls, spec: NetSpec, params: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None
                    ) -> SparseNet:
        """Export ``w * mask`` of every layer (:func:`export_csr`) and build the net on it."""
        return cls(spec, export_csr(spec, params, masks))

    def storage(self, **kw) -> list[dict[str, Any]]:
        """:func:`storage_report` of this net's layers."""
        return storage_report(tuple(self.layers[n] for n in self.spec.layer_names), **kw)

    def forward(self, x: np.ndarray, *, path: str | None = None, parallel: bool = False) -> np.ndarray:
        """Logits of a batch.

        Parameters
        ----------
        x : ndarray, shape (N, C, H, W), float32
        path : "fused", "tiled", "layers" or None (MLPs: fused at batch 1, else tiled; other nets: layers)
        parallel : bool
            Run the kernels' Numba-parallel variants (bit-identical results). Serial by default: the parallel
            ones never beat serial on two cores.

        Returns
        -------
        logits : ndarray, shape (N, n_classes), float32

        Raises
        ------
        NonFiniteError
            NaN/Inf in ``x`` or in the logits (overflow).
        """
        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise TypeError(f"x must be a float32 ndarray, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 4 or x.shape[1:] != self.spec.input_shape:
            raise ValueError(f"x has shape {x.shape}, expected (N, {', '.join(map(str, self.spec.input_shape))})")
        n = x.shape[0]
        if path is None:
            path = ("fused" if n == 1 else "tiled") if self.is_mlp else "layers"
        if path in ("fused", "tiled") and not self.is_mlp:
            raise ValueError(f"path={path!r} needs an MLP; {self.spec.name} has other ops")
        if path == "fused":
            return mlp_forward_fused(self.packed, x.reshape(n, -1), parallel=bool(parallel))
        if path == "tiled":
            chunks = numba.get_num_threads() if parallel else 1
            key = ("tiled", min(n, MLP_TILE), chunks)
            buf = self._buffers.get(key)
            if buf is None:
                self._buffers[key] = buf = mlp_workspace(self.tiled, n, chunks)
            return mlp_forward_tiled(self.tiled, x.reshape(n, -1), parallel=bool(parallel), scratch=buf)
        if path != "layers":
            raise ValueError(f"path={path!r} must be 'fused', 'tiled', 'layers' or None")
        if not np.isfinite(x).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
            raise NonFiniteError(f"x holds NaN or Inf (first at {bad})", where="x")
        out = self._layers(x, bool(parallel))
        if not np.isfinite(out).all():
            raise NonFiniteError("the logits overflowed to NaN or Inf", where="logits")
        return out

    def _layers(self, x: np.ndarray, parallel: bool) -> np.ndarray:
        run = _Run(self, parallel)
        ops = self.spec.ops
        act = SparseAct(x)
        i = 0
        while i < len(ops):
            nxt = ops[i + 1] if i + 1 < len(ops) else None
            act, fused = OPS[ops[i].kind].sparse_forward(ops[i], act, nxt, run)
            i += 1 + fused
        return np.ascontiguousarray(act.h.T)  # (N, n_classes) from the last product's (n_classes, N)

    def _workspace(self, n_in: int, n: int, chunks: int, sample_major: bool) -> np.ndarray:
        """A kept scratch buffer for csr_matmul (allocating ~0.8 MB per call costs as much as a batch-64 product)."""
        key = (n_in, min(n, TILE), chunks, sample_major)  # every batch of >= TILE samples shares one
        buf = self._buffers.get(key)
        if buf is None:
            self._buffers[key] = buf = workspace(n_in, n, chunks, sample_major=sample_major)
        return buf

    def predict(self, x: np.ndarray, *, batch_size: int = 1000, **kw) -> np.ndarray:
        """Top-1 class of every image, in batches; shape (N,), int64."""
        out = np.empty(len(x), dtype=np.int64)
        for s in range(0, len(x), batch_size):
            out[s : s + batch_size] = self.forward(x[s : s + batch_size], **kw).argmax(axis=1)
        return out


class _Run:
    """One forward pass of a :class:`SparseNet`, as the ops' ``sparse_forward`` see it
    (:class:`refdns.nets.ops.SparseRun`)."""

    def __init__(self, net: SparseNet, parallel: bool):
        self.net = net
        self.parallel = parallel
        self.chunks = numba.get_num_threads() if parallel else 1

    def layer(self, name: str) -> SparseLayer:
        return self.net.layers[name]

    def workspace(self, n_in: int, n: int, sample_major: bool) -> np.ndarray:
        return self.net._workspace(n_in, n, self.chunks, sample_major)
