"""A whole pruned MLP (dense -> ReLU -> ... -> dense) in one kernel call, sample by sample.

At batch 1 the cost of a pruned LeNet-300-100 is not arithmetic (a few thousand multiply-adds) but overhead:
three Python-level calls, three output allocations and three validations. This kernel runs every layer of
one sample in one compiled loop over two ping-pong buffers, each layer skipping zero activations (W given
column-wise, as the CSR arrays of W^T, so a zero input's whole column is never read; the dataflow of EIE,
Han et al., ISCA 2016, sec. III):

    h^0 = x,   h^l = relu(W^l h^(l-1) + b^l)  (no ReLU after the last layer),   logits = h^L

All layers are packed once into flat arrays (:func:`pack_mlp`), so any depth fits one signature.

- :func:`mlp_forward_fused` - serial, one sample after another (the batch-1 path); ``parallel=True`` runs
  the parallel kernel instead.
- :func:`mlp_forward_fused_parallel` - the batch cut into fixed contiguous chunks, one per ``prange``
  iteration with its own buffers; each sample is computed exactly as in the serial kernel (bit-identical).
- :func:`mlp_forward_ref` - the NumPy twin: dense float64 matrices from the CSR arrays, ``x @ W^T``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from numba import njit, prange

from refdns.errors import NonFiniteError
from refdns.kernels._check import FLOATS, bias_or_zeros, check_csr, check_dense, out_or_empty


class PackedMLP(NamedTuple):
    """Every layer of an MLP in four flat arrays (few arguments: Numba's per-call dispatch cost grows with
    each array passed, and at batch 1 that cost is comparable to the arithmetic).

    ``meta`` = [L, dims[0..L], ptr_off[0..L-1], bias_off[0..L-1]]: layer l maps dims[l] inputs to dims[l + 1]
    outputs; its column pointers start at ptr[ptr_off[l]], its bias at vals[nnz + bias_off[l]]. Indices are
    stored unsigned: an unsigned index spares Numba the negative-index wraparound test on every scatter
    (measured 5.3 -> 3.3 us for a 3%-dense LeNet-300-100 sample).
    """

    meta: np.ndarray  # (1 + (L + 1) + 2 L,) int64
    ptr: np.ndarray  # (sum_l (dims[l] + 1),) uint32, absolute positions into indices/vals
    indices: np.ndarray  # (nnz,) uint32: output unit of each stored weight
    vals: np.ndarray  # (nnz + sum_l dims[l + 1],) float32/float64: weights, then every layer's bias
    nnz: int

    @property
    def n_layers(self) -> int:
        return int(self.meta[0])

    @property
    def dims(self) -> np.ndarray:
        return self.meta[1 : 2 + self.n_layers]


def pack_mlp(layers: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> PackedMLP:
    """Pack ``[(wt_indptr, wt_indices, wt_data, bias), ...]`` (W^T in CSR form per layer, input to output).

    Validates every layer (SparseFormatError, NonFiniteError) and that each layer's input width equals the
    previous layer's output width (ValueError).
    """
    if len(layers) == 0:
        raise ValueError("pack_mlp needs at least one layer")
    dtype = layers[0][2].dtype if isinstance(layers[0][2], np.ndarray) else None
    if dtype not in FLOATS:
        raise TypeError(f"layer 0 values have dtype {dtype}: expected float32 or float64")
    dims = [len(layers[0][0]) - 1]
    ptrs, idx, vals, biases, ptr_off, bias_off = [], [], [], [], [], []
    nz = n_ptr = n_bias = 0
    for i, (indptr, indices, data, bias) in enumerate(layers):
        if not isinstance(bias, np.ndarray) or bias.ndim != 1:
            raise ValueError(f"layer {i}: bias must be a 1-D array (its length is the layer's output width)")
        d_in, d_out = len(indptr) - 1, len(bias)
        if d_in != dims[-1]:
            raise ValueError(f"layer {i} takes {d_in} inputs but the layer before gives {dims[-1]}")
        if data.dtype != dtype:
            raise TypeError(f"layer {i} values have dtype {data.dtype}, layer 0 has {dtype}")
        check_csr(f"layer {i} W^T", indptr, indices, data, (d_in, d_out))
        biases.append(bias_or_zeros(bias, d_out, dtype, f"layer {i}"))
        ptr_off.append(n_ptr)
        bias_off.append(n_bias)
        ptrs.append(indptr.astype(np.int64) + nz)
        idx.append(indices)
        vals.append(data)
        nz += len(data)
        n_ptr += d_in + 1
        n_bias += d_out
        dims.append(d_out)
    if nz >= 2**32:
        raise ValueError(f"{nz} stored weights: too many for the packed uint32 pointers")
    meta = np.array([len(layers), *dims, *ptr_off, *bias_off], dtype=np.int64)
    return PackedMLP(meta, np.concatenate(ptrs).astype(np.uint32), np.concatenate(idx).astype(np.uint32),
                     np.concatenate(vals + biases).astype(dtype), nz)


@njit(cache=True)
def _sample(x, meta, ptr, indices, vals, nnz, a, b, out):
    """One sample through every layer; return -1, or the layer whose input held a NaN/Inf (L: the output)."""
    L = meta[0]
    for j in range(meta[1]):
        a[j] = x[j]
    for layer in range(L):
        D = meta[1 + layer]
        M = meta[2 + layer]
        p0 = meta[2 + L + layer]
        bo = nnz + meta[2 + 2 * L + layer]
        for i in range(M):
            b[i] = vals[bo + i]
        for j in range(D):
            xj = a[j]
            if xj == 0.0:  # a zero activation: its column is never read
                continue
            if not np.isfinite(xj):
                return layer
            for k in range(ptr[p0 + j], ptr[p0 + j + 1]):
                b[indices[k]] += vals[k] * xj
        if layer < L - 1:
            for i in range(M):
                if b[i] < 0.0:
                    b[i] = 0.0
        a, b = b, a
    for i in range(meta[1 + L]):
        if not np.isfinite(a[i]):
            return L
        out[i] = a[i]
    return -1


@njit(cache=True)
def _fused_kernel(x, meta, ptr, indices, vals, nnz, out):
    L = meta[0]
    width = meta[1 : 2 + L].max()
    a = np.empty(width, dtype=vals.dtype)
    b = np.empty(width, dtype=vals.dtype)
    for n in range(x.shape[0]):
        bad = _sample(x[n], meta, ptr, indices, vals, nnz, a, b, out[n])
        if bad >= 0:
            return n * (L + 1) + bad
    return -1


@njit(cache=True, parallel=True)
def _fused_parallel_kernel(x, meta, ptr, indices, vals, nnz, n_chunks, out):
    L = meta[0]
    width = meta[1 : 2 + L].max()
    N = x.shape[0]
    status = np.full(n_chunks, -1, dtype=np.int64)
    for c in prange(n_chunks):
        a = np.empty(width, dtype=vals.dtype)
        b = np.empty(width, dtype=vals.dtype)
        for n in range(c * N // n_chunks, (c + 1) * N // n_chunks):
            bad = _sample(x[n], meta, ptr, indices, vals, nnz, a, b, out[n])
            if bad >= 0:
                status[c] = n * (L + 1) + bad
                break
    for c in range(n_chunks):
        if status[c] >= 0:
            return status[c]
    return -1


def _prepare(packed: PackedMLP, x, out):
    if not isinstance(packed, PackedMLP):
        raise TypeError(f"packed: expected a PackedMLP from pack_mlp, got {type(packed).__name__}")
    check_dense("x", x, 2, packed.vals.dtype)
    if x.shape[1] != packed.meta[1]:
        raise ValueError(f"x has shape {x.shape}, expected (N, {packed.meta[1]})")
    n_out = int(packed.meta[1 + packed.meta[0]])
    out = out_or_empty(out, (x.shape[0], n_out), packed.vals.dtype, "mlp_forward_fused")
    return np.ascontiguousarray(x), out


def _raise_bad(code: int, n_layers: int) -> None:
    if code >= 0:
        n, layer = divmod(int(code), n_layers + 1)
        where = "the output" if layer == n_layers else f"the input of layer {layer}"
        raise NonFiniteError(f"sample {n}: NaN or Inf in {where}; refdns refuses non-finite activations "
                             "(sparse and dense products disagree on 0 * inf)", where=f"sample {n}, layer {layer}")


def mlp_forward_fused(packed: PackedMLP, x: np.ndarray, *, out: np.ndarray | None = None,
                      parallel: bool = False, n_chunks: int = 16) -> np.ndarray:
    """Logits of a pruned MLP, one compiled pass per sample.

    The checks here are O(1) (types, shapes, dtypes): :func:`pack_mlp` validated the weights, and the kernel
    itself reports non-finite activations, so the wrapper costs little even at batch 1.

    Parameters
    ----------
    packed : PackedMLP
        From :func:`pack_mlp`.
    x : ndarray, shape (N, D), dtype of the packed weights
        Flattened inputs, sample-major.
    out : ndarray, shape (N, M_L), dtype of the packed weights, C-contiguous, optional
        Written and returned; a new array when None.
    parallel : bool
        Cut the batch into ``n_chunks`` contiguous chunks run in parallel (each sample computed exactly as
        in the serial kernel: bit-identical). Off by default: on two cores it never beat the serial kernel.
    n_chunks : int
        Parallel chunks (capped at N).

    Returns
    -------
    logits : ndarray, shape (N, M_L)

    Raises
    ------
    NonFiniteError
        A NaN/Inf input, or an activation that overflowed (names the sample and layer).
    """
    bad_chunks = isinstance(n_chunks, bool) or not isinstance(n_chunks, (int, np.integer)) or n_chunks < 1
    if parallel and bad_chunks:
        raise ValueError(f"n_chunks={n_chunks!r} must be an int >= 1")
    x, out = _prepare(packed, x, out)
    p = packed
    if parallel:
        chunks = max(1, min(int(n_chunks), x.shape[0]))
        code = _fused_parallel_kernel(x, p.meta, p.ptr, p.indices, p.vals, p.nnz, chunks, out)
    else:
        code = _fused_kernel(x, p.meta, p.ptr, p.indices, p.vals, p.nnz, out)
    _raise_bad(code, p.n_layers)
    return out


def mlp_forward_fused_parallel(packed: PackedMLP, x: np.ndarray, *, n_chunks: int = 16) -> np.ndarray:
    """:func:`mlp_forward_fused` with the batch cut into ``n_chunks`` contiguous chunks run in parallel."""
    return mlp_forward_fused(packed, x, parallel=True, n_chunks=n_chunks)


def mlp_forward_ref(layers, x: np.ndarray) -> np.ndarray:
    """NumPy twin in float64: each W^T densified from its CSR arrays, ``h = relu(h @ W^T + b)``."""
    h = np.asarray(x, dtype=np.float64)
    for i, (indptr, indices, data, bias) in enumerate(layers):
        wt = np.zeros((len(indptr) - 1, len(bias)))
        rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        np.add.at(wt, (rows, indices), np.asarray(data, dtype=np.float64))
        h = h @ wt + np.asarray(bias, dtype=np.float64)
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h
