"""Shared weights and the centroid gradient: the forward and backward of trained quantization.

Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
Huffman Coding", ICLR 2016, sec. 3. After weight sharing every kept weight of a layer is tied to one of the
layer's centroids C_k (its cluster index I_ij), and pruned weights stay exactly 0 (the mask is fixed):

    W_ij = C_{I_ij} if T_ij else 0

Fine-tuning trains the centroids, not the weights. By the chain rule the gradient of a centroid is the sum of
the gradients of the weights that share it, eq. (3):

    dL/dC_k = sum_{i,j} dL/dW_ij 1(I_ij = k)

where the sum runs over kept weights only (a pruned weight has no cluster). ``dL/dW`` is what the net's
backward returns for the effective weight, so the net engine is reused as it is.

Kept weights are listed in row-major (C) order of the weight array, the order of ``w[mask]``, everywhere in
this package: ``indices[n]`` is the cluster of the n-th kept weight in that order.
"""

from __future__ import annotations

import numpy as np

from refdns.compress._checks import int_vector
from refdns.errors import CompressError


def _check_tie(indices: np.ndarray, mask: np.ndarray, n_clusters: int, what: str) -> np.ndarray:
    """Validate a (indices, mask) pair against ``n_clusters``; returns the indices as an int64 array."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise CompressError(f"mask must be a bool array, got dtype {mask.dtype} ({what})")
    idx = int_vector(f"indices ({what})", indices)
    kept = int(np.count_nonzero(mask))
    if idx.size != kept:
        raise CompressError(f"indices has {idx.size} entries but the mask keeps {kept} weights ({what})")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n_clusters):
        raise CompressError(f"indices range over [{int(idx.min())}, {int(idx.max())}], outside the "
                            f"{n_clusters} clusters ({what})")
    return idx


def shared_weights(codebook: np.ndarray, indices: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The weight array the shared centroids stand for: ``W[mask] = codebook[indices]``, 0 elsewhere.

    Parameters
    ----------
    codebook : ndarray, shape (K,), float32 or float64
    indices : ndarray, shape (nnz,), int
        Cluster of each kept weight, in row-major order of ``mask``.
    mask : ndarray, bool, shape of the layer's weight
        nnz = ``mask.sum()``.

    Returns
    -------
    w : ndarray, shape of ``mask``, dtype of ``codebook``
    """
    codebook = np.asarray(codebook)
    if codebook.ndim != 1 or codebook.dtype not in (np.float32, np.float64):
        raise CompressError(f"codebook must be a 1-D float32/float64 array, got shape {codebook.shape} "
                            f"dtype {codebook.dtype}")
    idx = _check_tie(indices, mask, codebook.size, "shared_weights")
    w = np.zeros(np.shape(mask), dtype=codebook.dtype)
    w[mask] = codebook[idx]  # boolean assignment fills in row-major order, the order of ``indices``
    return w


def centroid_grad(dw: np.ndarray, indices: np.ndarray, mask: np.ndarray, n_clusters: int) -> np.ndarray:
    """dL/dC for every centroid, Deep Compression eq. (3).

    Parameters
    ----------
    dw : ndarray, shape of the layer's weight, float32 or float64
        dL/dW for the effective (shared) weight, as the net's backward returns it.
    indices : ndarray, shape (nnz,), int
        Cluster of each kept weight, in row-major order of ``mask``.
    mask : ndarray, bool, shape of ``dw``
    n_clusters : int
        K, the codebook size; clusters without members get gradient 0.

    Returns
    -------
    dc : ndarray, shape (K,), dtype of ``dw``
    """
    dw = np.asarray(dw)
    if dw.dtype not in (np.float32, np.float64):
        raise CompressError(f"dw must be float32 or float64, got {dw.dtype}")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 0:
        raise CompressError(f"n_clusters={n_clusters!r} must be a non-negative int")
    if np.shape(mask) != dw.shape:
        raise CompressError(f"mask has shape {np.shape(mask)} but dw has shape {dw.shape}")
    idx = _check_tie(indices, mask, int(n_clusters), "centroid_grad")
    # Eq. (3): dL/dC_k = sum over kept (i, j) with I_ij = k of dL/dW_ij. bincount sums in float64.
    dc = np.bincount(idx, weights=dw[mask].astype(np.float64), minlength=int(n_clusters))
    return dc.astype(dw.dtype)
