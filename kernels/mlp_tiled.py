"""A whole pruned MLP on a batch, tile by tile: every layer of a tile of samples before the next tile.

For batches beyond a few samples the per-sample kernel of :mod:`refdns.kernels.mlp_fused` (a scalar scatter
per weight and sample) loses to a product with the batch in the inner loop, as in
:mod:`refdns.kernels.csr_matmul`: each stored weight W_mj sweeps a contiguous run of samples,

    H^l[m, tile] = relu(b^l_m + sum_j W^l_mj H^(l-1)[j, tile])   (no ReLU after the last layer)

Layer by layer, each layer's output for the whole batch leaves the cache before the next layer reads it
(LeNet-300-100's 300 x 10,000 hidden activations are 12 MB), and each layer is one more call through the
Python wrappers. Here one kernel call runs every layer on a tile of ``tile`` samples while it is
cache-resident (the first layer's inputs, gathered and transposed from the sample-major images, only the
pixels W^1 reads: 447 of LeNet-300-100's 784 at DNS density), and writes the logits straight into the
sample-major output.

- :func:`mlp_forward_tiled` - serial, tile after tile; ``parallel=True`` runs the parallel kernel instead.
- :func:`mlp_forward_tiled_parallel` - tiles spread over ``prange`` chunks, each with its own buffers
  (tiles write disjoint samples: bit-identical to the serial kernel).
- :func:`mlp_tiled_ref` - the NumPy/scipy twin: ``csr_matrix @ H`` per layer, feature-major, float64.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from numba import get_num_threads, njit, prange

from refdns.errors import NonFiniteError
from refdns.kernels._check import FLOATS, bias_or_zeros, check_csr, check_dense, out_or_empty
from refdns.kernels.csr_matmul import _used

#: Samples per tile. LeNet-300-100 at batch 10,000 (process CPU time, loaded 2-core machine, 512 KB L2 per
#: core): 16.6 ms at 128, 16.1 at 256, 16.5 at 512 - flat; 256 keeps the gathered tile (447 x 256 x 4 B =
#: 458 KB) about the size of L2.
TILE = 256


class TiledMLP(NamedTuple):
    """Every layer of an MLP in row (output-major) CSR form, packed into five flat arrays (Numba's per-call
    dispatch cost grows with every array passed: a tuple of arrays per layer cost ~60 us a call, as much as
    the whole batch-64 product).

    ``meta`` = [L, dims[0..L], ptr_off[0..L-1], nz_off[0..L-1], bias_off[0..L-1], row_off[0..L]]: layer l maps
    dims[l] inputs to dims[l + 1] outputs; its row pointers are ptr[ptr_off[l] : ptr_off[l] + dims[l + 1] + 1]
    (relative to nz_off[l]), its weights idx/vals[nz_off[l] : ...], its bias vals[bias_off[l] : ...]; its
    input rows in the activation buffer start at row_off[l] (layer 0: the gathered pixels, whose column
    indices are stored as positions in ``cols0``), its outputs at row_off[l + 1].
    """

    meta: np.ndarray  # int64
    ptr: np.ndarray  # int32
    idx: np.ndarray  # int32
    vals: np.ndarray  # float32/float64: every layer's weights, then every layer's bias
    cols0: np.ndarray  # (U,) int64: the sorted inputs layer 0 reads (the gathered pixels)
    n_in: int  # D_0
    n_out: int  # M_L
    rows: int  # height of the activation buffer: gathered pixels plus every layer's outputs

    @property
    def n_layers(self) -> int:
        return int(self.meta[0])

    @property
    def dims(self) -> tuple:
        return tuple(int(d) for d in self.meta[1 : 2 + self.n_layers])


def pack_mlp_tiled(layers: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], *, n_in: int
                   ) -> TiledMLP:
    """Pack ``[(indptr, indices, data, bias), ...]`` (W^l in CSR, shape (M_l, D_l), input to output).

    Validates every layer (SparseFormatError, NonFiniteError) and that each layer reads as many inputs as the
    layer before gives (ValueError).
    """
    if len(layers) == 0:
        raise ValueError("pack_mlp_tiled needs at least one layer")
    dtype = layers[0][2].dtype if isinstance(layers[0][2], np.ndarray) else None
    if dtype not in FLOATS:
        raise TypeError(f"layer 0 values have dtype {dtype}: expected float32 or float64")
    dims = [int(n_in)]
    ptrs, idx, vals, biases, ptr_off, nz_off, bias_off = [], [], [], [], [], [], []
    n_ptr = nz = n_bias = 0
    for i, (indptr, indices, data, bias) in enumerate(layers):
        if not isinstance(bias, np.ndarray) or bias.ndim != 1 or len(bias) != len(indptr) - 1:
            raise ValueError(f"layer {i}: bias must be a 1-D array with one entry per row of W")
        if data.dtype != dtype:
            raise TypeError(f"layer {i} values have dtype {data.dtype}, layer 0 has {dtype}")
        check_csr(f"layer {i} W", indptr, indices, data, (len(indptr) - 1, dims[-1]))
        biases.append(bias_or_zeros(bias, len(bias), dtype, f"layer {i}"))
        ind = np.asarray(indices, dtype=np.int64)
        if i == 0:
            cols0, packed_rows = _used(ind, dims[-1])
            ind = packed_rows[ind]  # column j of W^1 -> its row among the gathered pixels
        ptr_off.append(n_ptr)
        nz_off.append(nz)
        bias_off.append(n_bias)
        ptrs.append(np.asarray(indptr, dtype=np.int32))
        idx.append(ind.astype(np.int32))
        vals.append(data)
        n_ptr += len(indptr)
        nz += len(data)
        n_bias += len(bias)
        dims.append(len(indptr) - 1)
    row_off = np.cumsum([0, len(cols0), *dims[1:]])
    vals_all = np.concatenate(vals + biases).astype(dtype)
    meta = np.array([len(layers), *dims, *ptr_off, *nz_off, *(nz + b for b in bias_off), *row_off], np.int64)
    return TiledMLP(meta, np.concatenate(ptrs).astype(np.int32), np.concatenate(idx).astype(np.int32), vals_all,
                    cols0.astype(np.int64), dims[0], dims[-1], int(row_off[-1]))


def workspace(packed: TiledMLP, n: int, n_chunks: int = 1, *, tile: int = TILE) -> np.ndarray:
    """Activation buffer ``(n_chunks, packed.rows, min(tile, N))``: the gathered inputs of layer 0, then each
    layer's outputs (the last: the logits tile). Kept by callers that run many batches
    (:class:`refdns.sparse.SparseNet`); any tile width works, the kernel takes it from the buffer."""
    return np.empty((n_chunks, packed.rows, max(1, min(int(tile), int(n)))), dtype=packed.vals.dtype)


@njit(cache=True)
def _gather_checked(x, t0, T, cols, buf):
    """buf[u, :T] = x[t0:t0 + T, cols[u]] (only the inputs W^1 reads, transposed), refusing NaN/Inf anywhere in
    the rows: returns -1, or the first block of 16 samples' start holding one.

    Blocks of 16 samples: each block's rows are first checked whole (v - v is 0 for finite v, NaN otherwise;
    an integer OR of the tests vectorises, where an early exit or a float sum without fastmath would not),
    which brings them into L1 for the transposing copy right after (each write run one cache line). Measured
    5.6 ms against 8.0 ms for a separate check and gather at batch 10,000.
    """
    D = np.uint64(x.shape[1])
    xf = x.reshape(x.size)
    bf = buf.reshape(buf.size)
    bw = np.uint64(buf.shape[1])
    U = cols.shape[0]
    for nb in range(0, T, 16):
        ne = min(nb + 16, T)
        bad = 0
        for n in range(nb, ne):
            base = np.uint64(t0 + n) * D
            for j in range(D):
                z = xf[base + j] - xf[base + j]
                bad |= 1 if z != z else 0
        if bad:
            for n in range(nb, ne):  # which sample
                base = np.uint64(t0 + n) * D
                for j in range(D):
                    z = xf[base + j] - xf[base + j]
                    if z != z:
                        return t0 + n
        for u in range(U):
            col = np.uint64(cols[u])
            dst = np.uint64(u) * bw
            for n in range(nb, ne):
                bf[dst + np.uint64(n)] = xf[np.uint64(t0 + n) * D + col]
    return -1


@njit(cache=True)
def _tile_rows(indptr, indices, data, x, bias, relu, out, T):
    """out[:, :T] = b + W x[:, :T] (then ReLU), W's column indices being rows of x.

    Eight weights of a row per sweep over the tile, with flat unsigned addressing (no wraparound select:
    the loops vectorise): one load and store of the output row per eight products. A short last group is
    padded with zero weights on a row already in cache. Measured for LeNet-300-100's ip1, per 10,000
    samples (CPU time, tile 256): 8.8 ms with four weights per sweep, 5.3 ms with eight. Unlike
    ``csr_matmul``'s tiles, no test for input rows that are zero across the tile: at 64+ samples hardly a row
    is, and the per-weight test cost more than it saved.
    """
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    uxw = np.uint64(x.shape[1])
    uow = np.uint64(out.shape[1])
    ut = np.uint64(T)
    zero = bias[0] * 0  # a zero of the values' dtype
    offs = np.zeros(8, dtype=np.uint64)
    vs = np.zeros(8, dtype=data.dtype)
    for m in range(indptr.shape[0] - 1):
        mo = np.uint64(m) * uow
        bm = bias[m]
        k = indptr[m]
        end = indptr[m + 1]
        first = True
        while k < end:
            for t in range(8):
                if k + t < end:
                    offs[t] = np.uint64(indices[k + t]) * uxw
                    vs[t] = data[k + t]
                else:
                    offs[t] = offs[0]
                    vs[t] = zero
            k += 8
            o0, o1, o2, o3, o4, o5, o6, o7 = offs[0], offs[1], offs[2], offs[3], offs[4], offs[5], offs[6], offs[7]
            v0, v1, v2, v3, v4, v5, v6, v7 = vs[0], vs[1], vs[2], vs[3], vs[4], vs[5], vs[6], vs[7]
            if first:
                for n in range(ut):
                    of[mo + n] = bm + ((v0 * xf[o0 + n] + v1 * xf[o1 + n] + v2 * xf[o2 + n] + v3 * xf[o3 + n])
                                       + (v4 * xf[o4 + n] + v5 * xf[o5 + n] + v6 * xf[o6 + n] + v7 * xf[o7 + n]))
                first = False
            else:
                for n in range(ut):
                    of[mo + n] += ((v0 * xf[o0 + n] + v1 * xf[o1 + n] + v2 * xf[o2 + n] + v3 * xf[o3 + n])
                                   + (v4 * xf[o4 + n] + v5 * xf[o5 + n] + v6 * xf[o6 + n] + v7 * xf[o7 + n]))
        if first:
            for n in range(ut):
                of[mo + n] = bm
        if relu:
            for n in range(ut):
                if of[mo + n] < 0.0:
                    of[mo + n] = 0.0


@njit(cache=True)
def _chunk(x, meta, ptr, idx, vals, cols0, out, acts, c, n_chunks):
    """Tiles c, c + n_chunks, ... in the buffer ``acts[c]``. Returns -1; or n >= 0, the first sample whose
    input holds a NaN/Inf; or -2 - n, the first sample whose logits overflowed."""
    L = meta[0]
    N = x.shape[0]
    buf = acts[c]
    tile = buf.shape[1]
    n_tiles = (N + tile - 1) // tile
    r_last = meta[2 + 5 * L]
    M_last = meta[1 + L]
    for t in range(c, n_tiles, n_chunks):
        t0 = t * tile
        T = min(tile, N - t0)
        bad = _gather_checked(x, t0, T, cols0, buf[: cols0.shape[0]])
        if bad >= 0:
            return bad
        for layer in range(L):
            M = meta[2 + layer]
            po = meta[2 + L + layer]
            zo = meta[2 + 2 * L + layer]
            bo = meta[2 + 3 * L + layer]
            r0 = meta[2 + 4 * L + layer]
            r1 = meta[2 + 4 * L + layer + 1]
            nnz = ptr[po + M] - ptr[po]
            _tile_rows(ptr[po : po + M + 1], idx[zo : zo + nnz], vals[zo : zo + nnz], buf[r0:r1], vals[bo : bo + M],
                       layer < L - 1, buf[r1 : r1 + M], T)
        last = buf[r_last : r_last + M_last]
        for n in range(T):  # the logits tile (M_L, T) into the sample-major output
            bad = 0
            for m in range(M_last):
                v = last[m, n]
                z = v - v
                bad |= 1 if z != z else 0
                out[t0 + n, m] = v
            if bad:
                return -2 - (t0 + n)
    return -1


@njit(cache=True)
def _tiled_kernel(x, meta, ptr, idx, vals, cols0, out, acts):
    return _chunk(x, meta, ptr, idx, vals, cols0, out, acts, 0, 1)


@njit(cache=True, parallel=True)
def _tiled_parallel_kernel(x, meta, ptr, idx, vals, cols0, out, acts):
    # Tiles are independent, so the result does not depend on the number of chunks (acts.shape[0]).
    n_chunks = acts.shape[0]
    status = np.full(n_chunks, -1, dtype=np.int64)
    for c in prange(n_chunks):
        status[c] = _chunk(x, meta, ptr, idx, vals, cols0, out, acts, c, n_chunks)
    for c in range(n_chunks):
        if status[c] != -1:
            return status[c]
    return -1


def mlp_forward_tiled(packed: TiledMLP, x: np.ndarray, *, out: np.ndarray | None = None, parallel: bool = False,
                      n_chunks: int | None = None, scratch: np.ndarray | None = None, tile: int = TILE) -> np.ndarray:
    """Logits of a pruned MLP, every layer run on a cache-resident tile of samples before the next tile.

    Parameters
    ----------
    packed : TiledMLP
        From :func:`pack_mlp_tiled`.
    x : ndarray, shape (N, D), dtype of the packed weights
        Flattened inputs, sample-major.
    out : ndarray, shape (N, M_L), dtype of the packed weights, C-contiguous, optional
        Written and returned; a new array when None.
    parallel : bool
        Spread the tiles over Numba tasks (tiles write disjoint samples: bit-identical to the serial kernel).
        Off by default: on two cores it did not beat the serial kernel (validate/results/bench_sparse.md).
    n_chunks : int, optional
        Parallel chunks when no ``scratch`` is given (default: the Numba thread count).
    scratch : ndarray, optional
        A :func:`workspace` kept by the caller; its first axis is the number of chunks.
    tile : int
        Samples per tile when no ``scratch`` is given.

    Returns
    -------
    logits : ndarray, shape (N, M_L)

    Raises
    ------
    NonFiniteError
        NaN/Inf in ``x`` (names the first such sample) or logits that overflowed.
    """
    if not isinstance(packed, TiledMLP):
        raise TypeError(f"packed: expected a TiledMLP from pack_mlp_tiled, got {type(packed).__name__}")
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile={tile!r} must be an int >= 1")
    dtype = packed.vals.dtype
    check_dense("x", x, 2, dtype)
    if x.shape[1] != packed.n_in:
        raise ValueError(f"x has shape {x.shape}, expected (N, {packed.n_in})")
    x = np.ascontiguousarray(x)
    out = out_or_empty(out, (x.shape[0], packed.n_out), dtype, "mlp_forward_tiled")
    if x.shape[0] == 0:
        return out
    if scratch is None:
        chunks = 1
        if parallel:
            chunks = get_num_threads() if n_chunks is None else n_chunks
            if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or chunks < 1:
                raise ValueError(f"n_chunks={n_chunks!r} must be an int >= 1")
        scratch = workspace(packed, x.shape[0], int(chunks), tile=tile)
    else:
        check_dense("scratch", scratch, 3, dtype)
        if (scratch.shape[1] != packed.rows or scratch.shape[0] < 1 or scratch.shape[2] < 1
                or not scratch.flags.c_contiguous):
            raise ValueError(f"scratch has shape {scratch.shape}; use workspace(packed, N, n_chunks)")
    p = packed
    kernel = _tiled_parallel_kernel if parallel else _tiled_kernel
    code = kernel(x, p.meta, p.ptr, p.idx, p.vals, p.cols0, out, scratch if parallel else scratch[:1])
    if code >= 0:
        raise NonFiniteError(f"x holds NaN or Inf (sample {code}); refdns refuses non-finite activations "
                             "(sparse and dense products disagree on 0 * inf)", where=f"sample {code}")
    if code < -1:
        raise NonFiniteError(f"the logits of sample {-2 - code} overflowed to NaN or Inf", where="logits")
    return out


def mlp_forward_tiled_parallel(packed: TiledMLP, x: np.ndarray, *, n_chunks: int | None = None) -> np.ndarray:
    """:func:`mlp_forward_tiled` with the tiles spread over ``n_chunks`` Numba tasks (bit-identical)."""
    return mlp_forward_tiled(packed, x, parallel=True, n_chunks=n_chunks)


def mlp_tiled_ref(layers, x: np.ndarray, *, n_in: int) -> np.ndarray:
    """scipy twin in float64: ``H = relu(W H + b)`` per layer on feature-major H, from W's CSR arrays."""
    import scipy.sparse as sp

    h = np.asarray(x, dtype=np.float64).T  # (D, N)
    d = n_in
    for i, (indptr, indices, data, bias) in enumerate(layers):
        w = sp.csr_matrix((np.asarray(data, np.float64), indices, indptr), shape=(len(indptr) - 1, d))
        h = np.asarray(w @ h) + np.asarray(bias, dtype=np.float64)[:, None]
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
        d = len(indptr) - 1
    return h.T
