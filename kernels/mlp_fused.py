"""A whole pruned MLP (dense -> ReLU -> ... -> dense) in one kernel call, sample by sample.

At batch 1 the cost of a pruned LeNet-300-100 is not arithmetic (a few thousand multiply-adds) but overhead:
three Python-level calls, three output allocations and three validations. This kernel runs every layer of
one sample in one compiled loop over two ping-pong buffers, each layer skipping zero activations as in
:mod:`refdns.kernels.csr_matvec` (W given column-wise, as the CSR arrays of W^T):

    h^0 = x,   h^l = relu(W^l h^(l-1) + b^l)  (no ReLU after the last layer),   logits = h^L

All layers are packed once into flat arrays (:func:`pack_mlp`), so any depth fits one signature.

- :func:`mlp_forward_fused` - serial, one sample after another (the batch-1 path).
- :func:`mlp_forward_fused_parallel` - the batch cut into fixed contiguous chunks, one per ``prange``
  iteration with its own buffers; each sample is computed exactly as in the serial kernel (bit-identical).
- :func:`mlp_forward_ref` - the NumPy twin: dense float64 matrices from the CSR arrays, ``x @ W^T``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from numba import njit, prange

from refdns.errors import NonFiniteError
from refdns.kernels._check import FLOATS, bias_or_zeros, check_csr, check_dense


class PackedMLP(NamedTuple):
    """Every layer of an MLP in flat arrays. Layer l maps dims[l] inputs to dims[l + 1] outputs."""

    dims: np.ndarray  # (L + 1,) int64
    ptr_off: np.ndarray  # (L,) int64: where layer l's column pointers start in ptr
    ptr: np.ndarray  # (sum_l (dims[l] + 1),) int64, absolute positions into indices/data
    indices: np.ndarray  # (nnz,) int32: output unit of each stored weight
    data: np.ndarray  # (nnz,) float32/float64
    bias: np.ndarray  # (sum_l dims[l + 1],)
    bias_off: np.ndarray  # (L,) int64


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
    nz = 0
    n_ptr = 0
    n_bias = 0
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
    return PackedMLP(np.array(dims, np.int64), np.array(ptr_off, np.int64), np.concatenate(ptrs),
                     np.concatenate(idx).astype(np.int32), np.concatenate(vals).astype(dtype),
                     np.concatenate(biases), np.array(bias_off, np.int64))


@njit(cache=True)
def _sample(x, dims, ptr_off, ptr, indices, data, bias, bias_off, a, b, out):
    """One sample through every layer; return -1, or the layer whose input held a NaN/Inf (L: the output)."""
    L = dims.shape[0] - 1
    for j in range(dims[0]):
        a[j] = x[j]
    for layer in range(L):
        D = dims[layer]
        M = dims[layer + 1]
        bo = bias_off[layer]
        for i in range(M):
            b[i] = bias[bo + i]
        p0 = ptr_off[layer]
        for j in range(D):
            xj = a[j]
            if xj == 0.0:
                continue
            if not np.isfinite(xj):
                return layer
            for k in range(ptr[p0 + j], ptr[p0 + j + 1]):
                b[indices[k]] += data[k] * xj
        if layer < L - 1:
            for i in range(M):
                if b[i] < 0.0:
                    b[i] = 0.0
        a, b = b, a
    for i in range(dims[L]):
        if not np.isfinite(a[i]):
            return L
        out[i] = a[i]
    return -1


@njit(cache=True)
def _fused_kernel(x, dims, ptr_off, ptr, indices, data, bias, bias_off, out):
    width = dims.max()
    a = np.empty(width, dtype=data.dtype)
    b = np.empty(width, dtype=data.dtype)
    for n in range(x.shape[0]):
        bad = _sample(x[n], dims, ptr_off, ptr, indices, data, bias, bias_off, a, b, out[n])
        if bad >= 0:
            return n * (dims.shape[0]) + bad
    return -1


@njit(cache=True, parallel=True)
def _fused_parallel_kernel(x, dims, ptr_off, ptr, indices, data, bias, bias_off, n_chunks, out):
    width = dims.max()
    N = x.shape[0]
    status = np.full(n_chunks, -1, dtype=np.int64)
    for c in prange(n_chunks):
        a = np.empty(width, dtype=data.dtype)
        b = np.empty(width, dtype=data.dtype)
        for n in range(c * N // n_chunks, (c + 1) * N // n_chunks):
            bad = _sample(x[n], dims, ptr_off, ptr, indices, data, bias, bias_off, a, b, out[n])
            if bad >= 0:
                status[c] = n * (dims.shape[0]) + bad
                break
    for c in range(n_chunks):
        if status[c] >= 0:
            return status[c]
    return -1


def _prepare(packed: PackedMLP, x):
    if not isinstance(packed, PackedMLP):
        raise TypeError(f"packed: expected a PackedMLP from pack_mlp, got {type(packed).__name__}")
    check_dense("x", x, 2, packed.data.dtype)
    if x.shape[1] != packed.dims[0]:
        raise ValueError(f"x has shape {x.shape}, expected (N, {packed.dims[0]})")
    return np.ascontiguousarray(x), np.empty((x.shape[0], int(packed.dims[-1])), dtype=packed.data.dtype)


def _raise_bad(code: int, n_layers: int) -> None:
    if code >= 0:
        n, layer = divmod(int(code), n_layers + 1)
        where = "the output" if layer == n_layers else f"the input of layer {layer}"
        raise NonFiniteError(f"sample {n}: NaN or Inf in {where}; refdns refuses non-finite activations "
                             "(sparse and dense products disagree on 0 * inf)", where=f"sample {n}, layer {layer}")


def mlp_forward_fused(packed: PackedMLP, x: np.ndarray) -> np.ndarray:
    """Logits of a pruned MLP, one compiled pass per sample.

    Parameters
    ----------
    packed : PackedMLP
        From :func:`pack_mlp`.
    x : ndarray, shape (N, D), dtype of the packed weights
        Flattened inputs, sample-major.

    Returns
    -------
    logits : ndarray, shape (N, M_L)

    Raises
    ------
    NonFiniteError
        A NaN/Inf input, or an activation that overflowed (names the sample and layer).
    """
    x, out = _prepare(packed, x)
    _raise_bad(_fused_kernel(x, *packed[:6], packed.bias_off, out), len(packed.bias_off))
    return out


def mlp_forward_fused_parallel(packed: PackedMLP, x: np.ndarray, *, n_chunks: int = 16) -> np.ndarray:
    """:func:`mlp_forward_fused` with the batch cut into ``n_chunks`` contiguous chunks run in parallel."""
    if isinstance(n_chunks, bool) or not isinstance(n_chunks, (int, np.integer)) or n_chunks < 1:
        raise ValueError(f"n_chunks={n_chunks!r} must be an int >= 1")
    x, out = _prepare(packed, x)
    chunks = max(1, min(int(n_chunks), x.shape[0]))
    _raise_bad(_fused_parallel_kernel(x, *packed[:6], packed.bias_off, chunks, out), len(packed.bias_off))
    return out


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
