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

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from refdns.errors import NonFiniteError, SparseFormatError
from refdns.nets.sequential import NetSpec

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
    from refdns.nets.sequential import check_params

    check_params(spec, params)
    out = []
    for op in spec.layers:
        w = np.asarray(params[f"{op.name}.weight"], dtype=np.float32)
        b = np.asarray(params[f"{op.name}.bias"], dtype=np.float32)
        if masks is not None:
            mw, mb = masks[f"{op.name}.weight"], masks[f"{op.name}.bias"]
            if mw.shape != w.shape or mb.shape != b.shape:
                raise SparseFormatError(f"{op.name}: mask shapes {mw.shape}/{mb.shape} differ from the "
                                        f"parameter shapes {w.shape}/{b.shape}")
            w = w * mw
            b = b * mb
            bias_kept = int(np.count_nonzero(mb))
        else:
            bias_kept = b.size
        if not np.isfinite(b).all():
            raise NonFiniteError(f"{op.name}.bias holds NaN or Inf; cannot export it", where=f"{op.name}.bias")
        csr = csr_from_dense(w.reshape(w.shape[0], -1), name=f"{op.name}.weight")
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
    """flatten, then dense layers with a ReLU between consecutive ones and none after the last."""
    kinds = [op.kind for op in spec.ops]
    if not kinds or kinds[0] != "flatten" or kinds[-1] != "dense":
        return False
    body = kinds[1:]
    return all(k == ("dense" if i % 2 == 0 else "relu") for i, k in enumerate(body))


class SparseNet:
    """A pruned net's forward pass on CSR layers.

    Every layer is validated once here (CSR structure, finiteness); the forward pass then calls the compiled
    kernels of :mod:`refdns.kernels` directly, without re-validating per call.

    Paths (``path`` of :meth:`forward`):

    - ``"fused"`` (MLPs only): :func:`refdns.kernels.mlp_fused.mlp_forward_fused` - every layer of a sample
      in one kernel call, zero activations skipped. The default at batch 1.
    - ``"layers"``: layer by layer - :func:`~refdns.kernels.sparse_conv.sparse_conv2d` for conv (with the
      following max-pool fused in when its size equals its stride; otherwise the max-pool of :mod:`refdns.layers`), :func:`~refdns.kernels.csr_matmul.csr_matmul` with feature-major
      activations for dense layers (ReLU fused into the product). The default for batches > 1.

    ``parallel=None`` uses the Numba-parallel kernels from batch ``PARALLEL_FROM`` on (threads: Numba's
    default, i.e. the core count); True/False force it. Nothing in these paths calls BLAS, so Numba threads
    never meet BLAS threads here.
    """

    PARALLEL_FROM = 64
    TRANSPOSE_UP_TO = 256

    def __init__(self, spec: NetSpec, layers: tuple[SparseLayer, ...]):
        from refdns.kernels._check import check_csr
        from refdns.kernels.mlp_fused import pack_mlp

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
        self.packed = None
        if self.is_mlp:
            t = [la.csr.transpose() for la in layers]
            self.packed = pack_mlp([(c.indptr, c.indices, c.data, la.bias) for c, la in zip(t, layers)])

    @classmethod
    def from_params(cls, spec: NetSpec, params: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None = None
                    ) -> SparseNet:
        return cls(spec, export_csr(spec, params, masks))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> SparseNet:
        """Load a checkpoint (any method) and export ``w * mask`` of every layer."""
        from refdns import checkpoint

        st = checkpoint.load(path).state
        return cls.from_params(st.spec, st.params, st.masks)

    def storage(self, **kw) -> list[dict[str, Any]]:
        """:func:`storage_report` of this net's layers."""
        return storage_report(tuple(self.layers[n] for n in self.spec.layer_names), **kw)

    def forward(self, x: np.ndarray, *, path: str | None = None, parallel: bool | None = None) -> np.ndarray:
        """Logits of a batch.

        Parameters
        ----------
        x : ndarray, shape (N, C, H, W), float32
        path : "fused", "layers" or None (fused at batch 1 for MLPs, else layers)
        parallel : bool or None (from batch ``PARALLEL_FROM`` on)

        Returns
        -------
        logits : ndarray, shape (N, n_classes), float32

        Raises
        ------
        NonFiniteError
            NaN/Inf in ``x`` or in the logits (overflow).
        """
        from refdns.kernels import mlp_fused

        if not isinstance(x, np.ndarray) or x.dtype != np.float32:
            raise TypeError(f"x must be a float32 ndarray, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 4 or x.shape[1:] != self.spec.input_shape:
            raise ValueError(f"x has shape {x.shape}, expected (N, {', '.join(map(str, self.spec.input_shape))})")
        n = x.shape[0]
        if parallel is None:
            parallel = n >= self.PARALLEL_FROM
        if path is None:
            path = "fused" if self.is_mlp and n == 1 else "layers"
        if path == "fused":
            if not self.is_mlp:
                raise ValueError(f"path='fused' needs an MLP; {self.spec.name} has other ops")
            if parallel:
                return mlp_fused.mlp_forward_fused_parallel(self.packed, x.reshape(n, -1))
            # The batch-1 path: x is checked above and the layers at construction, so call the kernel
            # directly (the wrapper's re-validation costs a quarter of a ~5 us call).
            p = self.packed
            out = np.empty((n, self.spec.n_classes), dtype=np.float32)
            code = mlp_fused._fused_kernel(np.ascontiguousarray(x.reshape(n, -1)), p.meta, p.ptr, p.indices,
                                           p.vals, p.nnz, out)
            mlp_fused._raise_bad(code, p.n_layers)
            return out
        if path != "layers":
            raise ValueError(f"path={path!r} must be 'fused', 'layers' or None")
        if not np.isfinite(x).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
            raise NonFiniteError(f"x holds NaN or Inf (first at {bad})", where="x")
        out = self._layers(x, parallel)
        if not np.isfinite(out).all():
            raise NonFiniteError("the logits overflowed to NaN or Inf", where="logits")
        return out

    def _layers(self, x: np.ndarray, parallel: bool) -> np.ndarray:
        import numba

        from refdns.kernels import csr_matmul, sparse_conv
        from refdns.layers import maxpool_forward

        conv = sparse_conv._conv_parallel_kernel if parallel else sparse_conv._conv_kernel
        matmul = csr_matmul._matmul_parallel_kernel if parallel else csr_matmul._matmul_kernel
        ops = self.spec.ops
        h = x
        sample_major = False
        i = 0
        while i < len(ops):
            op = ops[i]
            if op.kind == "conv":
                la = self.layers[op.name]
                F, _, KH, KW = la.w_shape
                nxt = ops[i + 1] if i + 1 < len(ops) else None
                pool = nxt.size if nxt is not None and nxt.kind == "pool" and nxt.size == nxt.stride else 1
                xp = np.pad(h, ((0, 0), (0, 0), (op.pad, op.pad), (op.pad, op.pad))) if op.pad else h
                OH, OW = (xp.shape[2] - KH) // op.stride + 1, (xp.shape[3] - KW) // op.stride + 1
                out = np.empty((h.shape[0], F, OH // pool, OW // pool), dtype=np.float32)
                conv(la.csr.indptr, la.csr.indices, la.csr.data, np.ascontiguousarray(xp), la.bias, op.stride,
                     KH, KW, pool, OH, OW, out)
                h = out
                i += pool > 1  # the max-pool ran inside the convolution
            elif op.kind == "pool":
                h, _ = maxpool_forward(h, size=op.size, stride=op.stride)
            elif op.kind == "flatten":
                h = h.reshape(h.shape[0], -1)  # (N, D); the next product reads it sample-major
                sample_major = True
            elif op.kind == "dense":
                la = self.layers[op.name]
                if h.ndim != 2:
                    raise ValueError(f"{self.spec.name}: dense layer {op.name} before a flatten")
                relu = i + 1 < len(ops) and ops[i + 1].kind == "relu"
                n = h.shape[0] if sample_major else h.shape[1]
                out = np.empty((la.w_shape[0], n), dtype=np.float32)  # (M, N) feature-major from here on
                if sample_major and n <= self.TRANSPOSE_UP_TO:
                    # Small batches: NumPy's blocked transpose beats the kernel's tile gather (measured
                    # 16 us against 35 us at 64 x 784); large ones gather tile by tile, cache-resident.
                    h = np.ascontiguousarray(h.T)
                    sample_major = False
                h = np.ascontiguousarray(h)
                buf = self._workspace(la.w_shape[1], n, numba.get_num_threads() if parallel else 1, sample_major)
                matmul(la.csr.indptr, la.csr.indices, la.csr.data, h, sample_major, la.bias, relu, buf, out)
                h = out
                sample_major = False
                i += relu  # the ReLU ran inside the product
            elif op.kind == "relu":
                h = np.maximum(h, 0)
            i += 1
        return np.ascontiguousarray(h.T)

    def _workspace(self, n_in: int, n: int, chunks: int, sample_major: bool) -> np.ndarray:
        """A kept scratch buffer for csr_matmul (allocating ~0.8 MB per call costs as much as a batch-64 product)."""
        from refdns.kernels.csr_matmul import TILE, workspace

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
