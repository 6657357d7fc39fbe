"""Batched sparse x dense product ``Y = W X + b`` with feature-major activations.

W is CSR (M, D); activations are stored feature-major, X (D, N) and Y (M, N): one row per unit, the batch
along it. Each stored weight W_mj then touches two contiguous rows,

    Y[m, :] += W_mj * X[j, :]

which the compiler vectorises, and the net can stay feature-major from the first layer to the logits
(one transpose in, one out). The batch is cut into column tiles of ``TILE`` so that the tile of X a row
reads (D x TILE floats, 784 x 256 x 4 B = 0.8 MB for LeNet-300-100's ip1) stays in a core's L2 cache.

- :func:`csr_matmul` - serial, tile after tile; ``parallel=True`` runs the parallel kernel instead.
- :func:`csr_matmul_parallel` - tiles spread over threads with ``prange`` (tiles write disjoint columns, so
  no races and a result identical to the serial one).
- :func:`csr_matmul_ref` - the NumPy/scipy twin: ``scipy.sparse.csr_matrix @ X`` in float64.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from refdns.kernels._check import bias_or_zeros, check_csr, check_dense, check_finite, out_or_empty

TILE = 256


@njit(cache=True)
def _tile(indptr, indices, data, rows, scan, x, xo, bias, relu, out, oo, T, live):
    """Columns [xo, xo + T) of x (R, *) into columns [oo, oo + T) of out (M, *).

    Input j of W is row ``rows[j]`` of x (the identity for feature-major input; the packed position of j
    among the inputs W reads for a gathered tile). ``live[r]`` records whether x row r has any non-zero in
    this tile (only the rows in ``scan``, the ones W reads, are looked at): a unit that is zero for every
    sample of the tile (a ReLU unit dead for all of them) is skipped, the batched form of skipping zero
    activations.

    Both arrays are addressed flat with unsigned offsets: Numba then emits no negative-index wraparound
    select in the inner loops and LLVM vectorises them (measured 80 -> 38 us of process CPU time for
    LeNet-300-100's ip1 at batch 64).
    """
    XW = x.shape[1]
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    uxw = np.uint64(XW)
    un = np.uint64(out.shape[1])
    ut = np.uint64(T)
    uxo = np.uint64(xo)
    uoo = np.uint64(oo)
    for r in scan:
        base = np.uint64(r) * uxw + uxo
        flag = False
        for n in range(ut):
            if xf[base + n] != 0.0:
                flag = True
                break
        live[r] = flag
    M = indptr.shape[0] - 1
    offs = np.zeros(4, dtype=np.uint64)
    vs = np.zeros(4, dtype=data.dtype)  # padding weights stay exactly 0
    for m in range(M):
        mo = np.uint64(m) * un + uoo
        bm = bias[m]
        first = True
        k = indptr[m]
        end = indptr[m + 1]
        while True:
            # Up to four live weights of row m per sweep over the tile: one load and store of the output row
            # per four products (the sweep is load/store bound, not FMA bound). A short group is padded with
            # zero weights on an input row already in cache, so every sweep is the same 4-wide loop; bias
            # and ReLU ride on the first and last sweep.
            cnt = 0
            while k < end and cnt < 4:
                r = rows[indices[k]]
                if live[r]:
                    offs[cnt] = np.uint64(r) * uxw + uxo
                    vs[cnt] = data[k]
                    cnt += 1
                k += 1
            if cnt == 0:
                if first:  # no live weight in the row: bias (and ReLU) only
                    bv = max(bm, 0.0) if relu else bm
                    for n in range(ut):
                        of[mo + n] = bv
                elif relu:  # the row's last weights were dead: the ReLU sweep is still to do
                    for n in range(ut):
                        if of[mo + n] < 0.0:
                            of[mo + n] = 0.0
                break
            for c in range(cnt, 4):
                offs[c] = offs[0]
                vs[c] = 0.0
            o0, o1, o2, o3 = offs[0], offs[1], offs[2], offs[3]
            v0, v1, v2, v3 = vs[0], vs[1], vs[2], vs[3]
            if first:
                for n in range(ut):
                    of[mo + n] = bm + (v0 * xf[o0 + n] + v1 * xf[o1 + n] + v2 * xf[o2 + n] + v3 * xf[o3 + n])
            else:
                for n in range(ut):
                    of[mo + n] += v0 * xf[o0 + n] + v1 * xf[o1 + n] + v2 * xf[o2 + n] + v3 * xf[o3 + n]
            first = False
            if k >= end:
                if relu:
                    for n in range(ut):
                        if of[mo + n] < 0.0:
                            of[mo + n] = 0.0
                break


@njit(cache=True)
def _gather(x, t0, T, cols, buf):
    """buf[u, :T] = x[t0:t0 + T, cols[u]]: only the inputs W reads, transposed in blocks of 16 samples (each
    write run is one cache line; the 16 source rows stay in L1). Flat unsigned addressing, as in _tile."""
    D = np.uint64(x.shape[1])
    xf = x.reshape(x.size)
    bf = buf.reshape(buf.size)
    bw = np.uint64(buf.shape[1])
    U = cols.shape[0]
    for nb in range(0, T, 16):
        ne = min(nb + 16, T)
        for u in range(U):
            col = np.uint64(cols[u])
            dst = np.uint64(u) * bw
            for n in range(nb, ne):
                bf[dst + np.uint64(n)] = xf[np.uint64(t0 + n) * D + col]


@njit(cache=True)
def _used(indices, D):
    """(cols, rows): the sorted distinct columns W reads, and each column's position among them (-1: unused)."""
    seen = np.zeros(D, dtype=np.bool_)
    for j in indices:
        seen[j] = True
    cols = np.flatnonzero(seen)
    rows = np.full(D, -1, dtype=np.int64)
    for u in range(cols.shape[0]):
        rows[cols[u]] = u
    return cols, rows


@njit(cache=True)
def _chunk(indptr, indices, data, x, sample_major, cols, rows, bias, relu, out, c, n_chunks, buf):
    """Tiles c, c + n_chunks, c + 2 n_chunks, ...; ``buf`` (D, >= min(TILE, N)) is this chunk's scratch."""
    N = out.shape[1]
    live = np.zeros(buf.shape[0] if sample_major else x.shape[0], dtype=np.bool_)
    n_tiles = (N + TILE - 1) // TILE
    if sample_major:
        scan = np.arange(cols.shape[0])
    for t in range(c, n_tiles, n_chunks):
        t0 = t * TILE
        T = min(TILE, N - t0)
        if sample_major:
            _gather(x, t0, T, cols, buf)
            _tile(indptr, indices, data, rows, scan, buf, 0, bias, relu, out, t0, T, live)
        else:
            _tile(indptr, indices, data, rows, cols, x, t0, bias, relu, out, t0, T, live)


@njit(cache=True)
def _matmul_kernel(indptr, indices, data, x, sample_major, bias, relu, buf, out):
    D = x.shape[1] if sample_major else x.shape[0]
    cols, rows = _used(indices, D)
    if not sample_major:
        rows = np.arange(D)
    _chunk(indptr, indices, data, x, sample_major, cols, rows, bias, relu, out, 0, 1, buf[0])


@njit(cache=True, parallel=True)
def _matmul_parallel_kernel(indptr, indices, data, x, sample_major, bias, relu, buf, out):
    # Tiles are independent, so the result does not depend on the number of chunks (buf.shape[0]).
    D = x.shape[1] if sample_major else x.shape[0]
    cols, rows = _used(indices, D)
    if not sample_major:
        rows = np.arange(D)
    n_chunks = buf.shape[0]
    for c in prange(n_chunks):
        _chunk(indptr, indices, data, x, sample_major, cols, rows, bias, relu, out, c, n_chunks, buf[c])


def workspace(n_in: int, n: int, n_chunks: int = 1, dtype=np.float32, *, sample_major: bool = True) -> np.ndarray:
    """Scratch for the kernels: (n_chunks, D, min(TILE, N)) for sample-major input, a dummy otherwise.

    Callers that run many batches (:class:`refdns.sparse.SparseNet`) keep one and pass it on: allocating
    ~0.8 MB per call costs page faults comparable to the product itself at batch 64.
    """
    if not sample_major:
        return np.empty((n_chunks, 1, 1), dtype=dtype)
    return np.empty((n_chunks, n_in, max(1, min(TILE, n))), dtype=dtype)


_LAYOUTS = ("feature", "sample")


def _prepare(indptr, indices, data, x, n_in, bias, check_inputs, check_weights, x_layout, out):
    dtype = data.dtype if isinstance(data, np.ndarray) else np.dtype(np.float32)
    if x_layout not in _LAYOUTS:
        raise ValueError(f"x_layout={x_layout!r} must be one of {_LAYOUTS}")
    check_dense("x", x, 2, dtype)
    axis = 0 if x_layout == "feature" else 1
    if x.shape[axis] != n_in:
        want = f"({n_in}, N)" if axis == 0 else f"(N, {n_in})"
        raise ValueError(f"x has shape {x.shape}: {x_layout}-major activations need shape {want}")
    check_csr("W", indptr, indices, data, (len(indptr) - 1, n_in), contents=check_weights)
    if check_inputs:
        check_finite("x", x)
    b = bias_or_zeros(bias, len(indptr) - 1, dtype, "csr_matmul", contents=check_weights)
    out = out_or_empty(out, (len(indptr) - 1, x.shape[1 - axis]), dtype, "csr_matmul")
    return np.ascontiguousarray(x), b, out


def _check_scratch(scratch, n_in: int, n: int, dtype: np.dtype, sample_major: bool) -> None:
    check_dense("scratch", scratch, 3, dtype)
    too_small = sample_major and (scratch.shape[1] != n_in or scratch.shape[2] < min(TILE, n))
    if scratch.shape[0] < 1 or too_small:
        raise ValueError(f"scratch has shape {scratch.shape}; use workspace({n_in}, {n}, n_chunks, "
                         f"sample_major={sample_major})")


def csr_matmul(indptr, indices, data, x, *, n_in: int, bias=None, relu: bool = False,
               x_layout: str = "feature", check_inputs: bool = True, check_weights: bool = True,
               out: np.ndarray | None = None, scratch: np.ndarray | None = None, parallel: bool = False,
               n_chunks: int | None = None) -> np.ndarray:
    """``Y = W X + b[:, None]`` (then ReLU if ``relu``) for CSR W; Y comes out feature-major.

    Parameters
    ----------
    indptr : ndarray, shape (M + 1,), int32
    indices : ndarray, shape (nnz,), int32
    data : ndarray, shape (nnz,), float32 or float64
        W in CSR form, shape (M, n_in).
    x : ndarray, shape (D, N) (``x_layout="feature"``) or (N, D) (``"sample"``), dtype of ``data``
        Activations. Sample-major input (a network's images, or a flattened conv output) is transposed tile
        by tile inside the kernel, which is several times faster than a whole-array ``x.T`` copy.
    n_in : int
        D, the number of columns of W.
    bias : ndarray, shape (M,), optional
    relu : bool
    x_layout : "feature" or "sample"
    check_inputs : bool
        Refuse NaN/Inf in ``x`` (NonFiniteError). Callers that checked already may skip the pass.
    check_weights : bool
        Scan W and ``bias`` (column range, finiteness). False runs only the O(1) checks, for callers that
        ran :func:`refdns.kernels.check_csr` once on the arrays they pass every call.
    out : ndarray, shape (M, N), dtype of ``data``, C-contiguous, optional
        Written and returned; a new array when None.
    scratch : ndarray, optional
        A :func:`workspace` kept by the caller across calls (allocating one per call costs page faults
        comparable to the product at batch 64); its first axis is the number of parallel chunks.
    parallel : bool
        Spread the column tiles over Numba threads (``prange``; tiles write disjoint columns, so the result
        is bit-identical to the serial one). Off by default: on two cores it never beat the serial kernel.
    n_chunks : int, optional
        Parallel chunks when no ``scratch`` is given (default: the Numba thread count).

    Returns
    -------
    y : ndarray, shape (M, N), dtype of ``data``
    """
    x, b, out = _prepare(indptr, indices, data, x, n_in, bias, check_inputs, check_weights, x_layout, out)
    sm = x_layout == "sample"
    if scratch is None:
        chunks = 1
        if parallel:
            chunks = get_num_threads() if n_chunks is None else n_chunks
            if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or chunks < 1:
                raise ValueError(f"n_chunks={n_chunks!r} must be an int >= 1")
        scratch = workspace(n_in, out.shape[1], int(chunks), data.dtype, sample_major=sm)
    else:
        _check_scratch(scratch, n_in, out.shape[1], data.dtype, sm)
    kernel = _matmul_parallel_kernel if parallel else _matmul_kernel
    kernel(indptr, indices, data, x, sm, b, bool(relu), scratch, out)
    return out


def csr_matmul_parallel(indptr, indices, data, x, *, n_in: int, bias=None, relu: bool = False,
                        x_layout: str = "feature", check_inputs: bool = True, n_chunks: int | None = None
                        ) -> np.ndarray:
    """:func:`csr_matmul` with the column tiles spread over ``n_chunks`` Numba tasks (default: the Numba
    thread count). Tiles are independent, so the result is bit-identical to the serial one."""
    return csr_matmul(indptr, indices, data, x, n_in=n_in, bias=bias, relu=relu, x_layout=x_layout,
                      check_inputs=check_inputs, parallel=True, n_chunks=n_chunks)


def csr_matmul_ref(indptr, indices, data, x, *, n_in: int, bias=None, relu: bool = False,
                   x_layout: str = "feature") -> np.ndarray:
    """scipy twin of :func:`csr_matmul`, in float64."""
    import scipy.sparse as sp

    w = sp.csr_matrix((np.asarray(data, np.float64), indices, indptr), shape=(len(indptr) - 1, n_in))
    xf = np.asarray(x, dtype=np.float64)
    y = np.asarray(w @ (xf if x_layout == "feature" else xf.T))
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)[:, None]
    return np.maximum(y, 0.0) if relu else y
