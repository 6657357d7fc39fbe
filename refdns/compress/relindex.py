"""The relative sparse index of Deep Compression, as a symbol stream with filler entries.

Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
Huffman Coding", ICLR 2016, sec. 2 and Fig. 2: "we store the index difference instead of the absolute
position, and encode this difference in 8 bits for conv layer and 5 bits for fc layer. When we need an index
difference larger than the bound, we [use] the zero padding solution shown in Figure 2: in case when the
difference exceeds 8, the largest 3-bit (as an example) unsigned number, we add a filler zero."

The counting rule is :func:`refdns.sparse.relative_index_entries` (imported, not repeated; the tests check
this stream against it): with k-bit indices each kept weight carries the number of zeros skipped before it
(0 .. 2^k - 1, in the layer's row-major order); a run of z zeros first takes ``z // 2^k`` fillers, each
standing after 2^k - 1 skipped zeros and itself taking one position (2^k positions in all).

In the paper a filler is a stored weight of value 0. Here it is its own symbol, ``2^k``, in the position
stream (alphabet 0 .. 2^k), so the reader can tell fillers from kept weights and rebuild the mask exactly,
and the cluster-index stream needs no slot for them. Both streams are Huffman coded, so the extra symbol
costs no fixed width. (The fixed-width byte counts of :mod:`refdns.compress.report` still charge each
filler a weight slot, as the paper does.)
"""

from __future__ import annotations

import numpy as np

from refdns.compress._checks import int_vector
from refdns.errors import CompressError
from refdns.sparse import HAN_INDEX_BITS, relative_index_entries

__all__ = ["HAN_INDEX_BITS", "filler", "positions_from_stream", "relative_index_entries",
           "relative_index_stream"]


def filler(index_bits: int) -> int:
    """The filler symbol of k-bit relative indices: 2^k (one past the largest gap)."""
    return 1 << int(index_bits)


def _check_index_bits(index_bits: object) -> int:
    if isinstance(index_bits, bool) or not isinstance(index_bits, (int, np.integer)) \
            or not 1 <= index_bits <= 16:
        raise CompressError(f"index_bits={index_bits!r} must be an int in [1, 16]")
    return int(index_bits)


def relative_index_stream(flat_positions: np.ndarray, index_bits: int) -> np.ndarray:
    """The relative-index symbols of a layer's kept positions, fillers included.

    Parameters
    ----------
    flat_positions : ndarray, shape (nnz,), int
        Strictly increasing positions of the kept weights in the layer's row-major (flattened) order.
    index_bits : int in [1, 16]

    Returns
    -------
    symbols : ndarray, shape (entries,), int64
        ``entries = nnz + fillers`` as :func:`refdns.sparse.relative_index_entries` counts them; a kept
        weight's symbol is the zeros skipped before it (0 .. 2^k - 1), a filler's is :func:`filler` (2^k).
    """
    k = _check_index_bits(index_bits)
    pos = int_vector("flat_positions", flat_positions)
    if pos.size == 0:
        return np.zeros(0, dtype=np.int64)
    if int(pos[0]) < 0 or (np.diff(pos) <= 0).any():
        raise CompressError("flat_positions must be non-negative and strictly increasing")
    gaps = np.diff(pos, prepend=-1) - 1  # zeros skipped before each kept weight
    n_fill = gaps >> k  # a filler per 2^k positions: 2^k - 1 zeros, then the filler itself
    rest = gaps & ((1 << k) - 1)  # zeros still skipped after the fillers: 0 .. 2^k - 1
    ends = np.cumsum(n_fill + 1) - 1  # each kept weight's slot, after its fillers
    symbols = np.full(int(ends[-1]) + 1, filler(k), dtype=np.int64)
    symbols[ends] = rest
    return symbols


def positions_from_stream(symbols: np.ndarray, index_bits: int, size: int) -> np.ndarray:
    """Inverse of :func:`relative_index_stream`: the kept positions of a layer of ``size`` weights.

    Raises
    ------
    CompressError
        A symbol outside 0 .. 2^k, a stream that ends with a filler (the writer never emits one), or a
        position at or past ``size``.
    """
    k = _check_index_bits(index_bits)
    s = np.asarray(symbols, dtype=np.int64)
    if s.ndim != 1:
        raise CompressError(f"symbols must be 1-D, got shape {s.shape}")
    if s.size == 0:
        return np.zeros(0, dtype=np.int64)
    fill = filler(k)
    if int(s.min()) < 0 or int(s.max()) > fill:
        raise CompressError(f"relative indices must lie in [0, {fill}], got [{int(s.min())}, {int(s.max())}]")
    if int(s[-1]) == fill:
        raise CompressError("the relative-index stream ends with a filler")
    step = np.where(s == fill, 1 << k, s + 1)  # positions each entry advances by
    pos = np.cumsum(step) - 1
    pos = pos[s != fill]
    if int(pos[-1]) >= size:
        raise CompressError(f"a relative index points at position {int(pos[-1])} of a {size}-weight layer")
    return pos
