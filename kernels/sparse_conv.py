"""Sparse direct convolution (cross-correlation, as Caffe) for pruned conv layers, NCHW.

The filter bank W (F, C, KH, KW) is stored as a CSR matrix of shape (F, C*KH*KW): row f lists filter f's
surviving taps, each column index ``c*KH*KW + kh*KW + kw``. Instead of im2col (which copies every input
pixel KH*KW times whatever the weights are), every surviving tap adds one shifted input plane:

    out[n, f] = b_f + sum_{(c, kh, kw) in row f} W[f, c, kh, kw] * x_pad[n, c, kh + s*i, kw + s*j]

(at stride 1 computed as one contiguous run per tap on a plane as wide as the input, see ``_plane_wide``),
so the work is nnz * OH * OW per image instead of F * C * KH * KW * OH * OW (at the DNS densities of LeNet-5,
14.2% of conv1 and 3.1% of conv2, that is 7x and 32x fewer multiply-adds).

A max-pool that follows the convolution (LeNet-5: 2x2, stride 2) can be fused (``pool=2``): each plane is
pooled while it is still in cache, and the unpooled maps never reach memory.

- :func:`sparse_conv2d` - serial over (image, filter) pairs; ``parallel=True`` runs the parallel kernel
  instead.
- :func:`sparse_conv2d_parallel` - (image, filter) pairs spread over threads with ``prange``; each writes
  its own output plane, so the result is bit-identical to the serial one.
- :func:`sparse_conv2d_ref` - the NumPy twin: densify the filters, ``sliding_window_view`` + ``einsum``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from refdns.kernels._check import bias_or_zeros, check_csr, check_dense, check_finite, out_or_empty


@njit(cache=True)
def _plane(indptr, indices, data, xn, bias, stride, KH, KW, f, o):
    """Output plane ``o`` (OH, OW) of filter f for one image ``xn`` (C, H, W); any stride."""
    OH, OW = o.shape
    o[:, :] = bias[f]
    KK = KH * KW
    for k in range(indptr[f], indptr[f + 1]):
        idx = indices[k]
        c = idx // KK
        r = idx - c * KK
        kh = r // KW
        kw = r - kh * KW
        v = data[k]
        xc = xn[c]
        for i in range(OH):
            src = xc[kh + stride * i]
            dst = o[i]
            for j in range(OW):
                dst[j] += v * src[kw + stride * j]


@njit(cache=True)
def _plane_wide(indptr, indices, data, xn, bias, KH, KW, OH, OW, f, wide):
    """Filter f on one image ``xn`` (C, H, W) at stride 1, as a "wide" plane: ``wide[i * W + j]`` is output
    (i, j) for j < OW (columns OW..W-1 hold junk that is never read).

    With the output rows W apart, as the input rows are, tap (c, kh, kw) adds one contiguous run of the
    flat input, ``wide[p] += w * x[c, kh, kw + p]`` for p < (OH - 1) W + OW (the last input element it
    reads is x[c, H - 1, W - 1]): one long vectorisable loop per tap instead of OH loops of OW = 8 (conv2)
    or 24 (conv1). Four taps per sweep, padded with zero weights, and flat unsigned addressing, as in
    :mod:`refdns.kernels.csr_matmul` (LeNet-5 conv2 at batch 64: measured below in bench_sparse).
    """
    H = xn.shape[1]
    W = xn.shape[2]
    xf = xn.reshape(xn.size)
    uhw = np.uint64(H * W)
    uw = np.uint64(W)
    L = np.uint64((OH - 1) * W + OW)
    KK = KH * KW
    bf = bias[f]
    zero = bf * 0
    k = indptr[f]
    end = indptr[f + 1]
    if k == end:
        for p in range(L):
            wide[p] = bf
        return
    first = True
    while k < end:
        offs0 = np.uint64(0)
        o0 = o1 = o2 = o3 = offs0
        v0 = v1 = v2 = v3 = zero
        for t in range(4):
            if k + t < end:
                idx = indices[k + t]
                c = idx // KK
                r = idx - c * KK
                kh = r // KW
                off = np.uint64(c) * uhw + np.uint64(kh) * uw + np.uint64(r - kh * KW)
                v = data[k + t]
            else:  # padding: weight 0 on the group's first run
                off = o0
                v = zero
            if t == 0:
                o0, v0 = off, v
            elif t == 1:
                o1, v1 = off, v
            elif t == 2:
                o2, v2 = off, v
            else:
                o3, v3 = off, v
        k += 4
        if first:
            for p in range(L):
                wide[p] = bf + (v0 * xf[o0 + p] + v1 * xf[o1 + p] + v2 * xf[o2 + p] + v3 * xf[o3 + p])
            first = False
        else:
            for p in range(L):
                wide[p] += v0 * xf[o0 + p] + v1 * xf[o1 + p] + v2 * xf[o2 + p] + v3 * xf[o3 + p]


@njit(cache=True)
def _pool_plane(o, pool, dst):
    """dst[i, j] = max of the pool x pool block (i, j) of o (floor: a partial edge block is dropped)."""
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            m = o[i * pool, j * pool]
            for a in range(pool):
                for b in range(pool):
                    v = o[i * pool + a, j * pool + b]
                    if v > m:
                        m = v
            dst[i, j] = m


@njit(cache=True)
def _one(indptr, indices, data, x, bias, stride, KH, KW, pool, OH, OW, out, scratch, wide, nf):
    F = out.shape[1]
    n = nf // F
    f = nf - n * F
    if stride == 1:
        _plane_wide(indptr, indices, data, x[n], bias, KH, KW, OH, OW, f, wide)
        W = x.shape[3]
        o = wide.reshape(OH, W)[:, :OW]  # (OH, OW) view of the wide plane
        if pool == 1:
            out[n, f] = o
        else:
            _pool_plane(o, pool, out[n, f])
    elif pool == 1:
        _plane(indptr, indices, data, x[n], bias, stride, KH, KW, f, out[n, f])
    else:
        _plane(indptr, indices, data, x[n], bias, stride, KH, KW, f, scratch)
        _pool_plane(scratch, pool, out[n, f])


@njit(cache=True)
def _conv_kernel(indptr, indices, data, x, bias, stride, KH, KW, pool, OH, OW, out):
    scratch = np.empty((OH, OW), dtype=out.dtype)
    wide = np.empty(OH * x.shape[3], dtype=out.dtype)
    for nf in range(out.shape[0] * out.shape[1]):
        _one(indptr, indices, data, x, bias, stride, KH, KW, pool, OH, OW, out, scratch, wide, nf)


@njit(cache=True, parallel=True)
def _conv_parallel_kernel(indptr, indices, data, x, bias, stride, KH, KW, pool, OH, OW, out):
    for nf in prange(out.shape[0] * out.shape[1]):
        scratch = np.empty((OH, OW), dtype=out.dtype)  # ~2 KB per plane, private to the iteration
        wide = np.empty(OH * x.shape[3], dtype=out.dtype)
        _one(indptr, indices, data, x, bias, stride, KH, KW, pool, OH, OW, out, scratch, wide, nf)


def _prepare(indptr, indices, data, x, w_shape, bias, stride, pad, pool, check_inputs, check_weights, out):
    dtype = data.dtype if isinstance(data, np.ndarray) else np.dtype(np.float32)
    if len(w_shape) != 4 or any(int(s) < 1 for s in w_shape):
        raise ValueError(f"w_shape={tuple(w_shape)}: expected (F, C, KH, KW), all >= 1")
    F, C, KH, KW = (int(s) for s in w_shape)
    for name, v, lo in (("stride", stride, 1), ("pad", pad, 0), ("pool", pool, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}={v!r}: expected an int >= {lo}")
    check_dense("x", x, 4, dtype)
    if x.shape[1] != C:
        raise ValueError(f"x has shape {x.shape}: {x.shape[1]} channels, but the filters expect C={C}")
    check_csr("W", indptr, indices, data, (F, C * KH * KW), contents=check_weights)
    if check_inputs:
        check_finite("x", x)
    b = bias_or_zeros(bias, F, dtype, "sparse_conv2d", contents=check_weights)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else np.ascontiguousarray(x)
    H, W = xp.shape[2], xp.shape[3]
    if H < KH or W < KW:
        raise ValueError(f"x has shape {x.shape}: padded input {H}x{W} is smaller than the {KH}x{KW} kernel")
    OH, OW = (H - KH) // stride + 1, (W - KW) // stride + 1
    if OH < pool or OW < pool:
        raise ValueError(f"pool={pool} is larger than the {OH}x{OW} convolution output")
    out = out_or_empty(out, (x.shape[0], F, OH // pool, OW // pool), dtype, "sparse_conv2d")
    return xp, b, out, KH, KW, OH, OW


def sparse_conv2d(indptr, indices, data, x, *, w_shape, bias=None, stride: int = 1, pad: int = 0,
                  pool: int = 1, check_inputs: bool = True, check_weights: bool = True,
                  out: np.ndarray | None = None, parallel: bool = False) -> np.ndarray:
    """Cross-correlation of ``x`` with a CSR filter bank, plus bias, then optionally max-pooling.

    Parameters
    ----------
    indptr : ndarray, shape (F + 1,), int32
    indices : ndarray, shape (nnz,), int32
        Flattened tap index ``c*KH*KW + kh*KW + kw`` of each stored weight.
    data : ndarray, shape (nnz,), float32 or float64
    x : ndarray, shape (N, C, H, W), dtype of ``data``
    w_shape : tuple (F, C, KH, KW)
    bias : ndarray, shape (F,), optional
    stride, pad : int
    pool : int
        1: no pooling. p > 1: a fused p x p max-pool with stride p (floor, as :func:`refdns.layers.maxpool_forward`),
        so each conv plane is pooled while it is still in cache (LeNet-5: conv, then pool 2x2/2).
    check_inputs : bool
        Refuse NaN/Inf in ``x`` (NonFiniteError).
    check_weights : bool
        Scan W and ``bias`` (tap range, finiteness). False runs only the O(1) checks, for callers that ran
        :func:`refdns.kernels.check_csr` once on the arrays they pass every call.
    out : ndarray, shape (N, F, OH // pool, OW // pool), dtype of ``data``, C-contiguous, optional
        Written and returned; a new array when None.
    parallel : bool
        Spread the (image, filter) planes over Numba threads (each writes its own plane: bit-identical to
        the serial result). Off by default: on two cores it never beat the serial kernel.

    Returns
    -------
    out : ndarray, shape (N, F, OH // pool, OW // pool), dtype of ``data``; OH = (H + 2 pad - KH) // stride + 1
    """
    xp, b, out, KH, KW, OH, OW = _prepare(indptr, indices, data, x, w_shape, bias, stride, pad, pool,
                                          check_inputs, check_weights, out)
    kernel = _conv_parallel_kernel if parallel else _conv_kernel
    kernel(indptr, indices, data, xp, b, int(stride), KH, KW, int(pool), OH, OW, out)
    return out


def sparse_conv2d_parallel(indptr, indices, data, x, *, w_shape, bias=None, stride: int = 1, pad: int = 0,
                           pool: int = 1, check_inputs: bool = True) -> np.ndarray:
    """:func:`sparse_conv2d` with (image, filter) planes spread over Numba threads (bit-identical result)."""
    return sparse_conv2d(indptr, indices, data, x, w_shape=w_shape, bias=bias, stride=stride, pad=pad,
                         pool=pool, check_inputs=check_inputs, parallel=True)


def sparse_conv2d_ref(indptr, indices, data, x, *, w_shape, bias=None, stride: int = 1, pad: int = 0,
                      pool: int = 1) -> np.ndarray:
    """NumPy twin in float64: dense filters from the CSR arrays, windows and one einsum, block max by reshape."""
    F, C, KH, KW = w_shape
    w = np.zeros((F, C * KH * KW))
    rows = np.repeat(np.arange(F), np.diff(indptr))
    np.add.at(w, (rows, indices), np.asarray(data, dtype=np.float64))
    xp = np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (KH, KW), axis=(2, 3))[:, :, ::stride, ::stride]
    out = np.einsum("nchwij,fcij->nfhw", win, w.reshape(F, C, KH, KW))  # (N, F, OH, OW)
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    if pool > 1:
        n, f, oh, ow = out.shape
        ph, pw = oh // pool, ow // pool
        out = out[:, :, : ph * pool, : pw * pool].reshape(n, f, ph, pool, pw, pool).max(axis=(3, 5))
    return out
