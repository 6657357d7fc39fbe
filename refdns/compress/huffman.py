"""Canonical Huffman coding of symbol streams (cluster indices, relative sparse indices).

Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
Huffman Coding", ICLR 2016, sec. 4: "A Huffman code is an optimal prefix code commonly used for lossless data
compression. It uses variable-length codewords to encode source symbols. ... Both [the quantized weights
and the sparse matrix index] distributions are biased ... Huffman coding these non-uniformly distributed
values saves 20% - 30% of network storage."

A code is described by its code lengths alone (canonical Huffman, as in DEFLATE, RFC 1951 sec. 3.2.2):

- :func:`code_lengths` builds Huffman's tree with a heap over the symbol frequencies (ties broken by symbol,
  then by creation order, so the lengths are deterministic) and returns each symbol's depth; a symbol that
  does not occur gets length 0 (no code), and a stream with one distinct symbol gets a 1-bit code;
- :func:`canonical_codes` numbers the codes in order of (length, symbol): ``code_{n+1} = (code_n + 1) <<
  (len_{n+1} - len_n)``, starting from 0;
- :func:`huffman_encode` writes the codes most significant bit first, packed big-endian into bytes, the
  last byte padded with zero bits; :func:`huffman_decode` reads them back with a lookup table on the next
  up to 16 bits (a bit-by-bit canonical decode for longer codes) and refuses any stream that does not decode
  to exactly the stated number of symbols in exactly the stated number of bits.

Code lengths are capped at :data:`MAX_CODE_BITS` = 64: a Huffman code that deep needs more than F(66) ~
2.7e13 symbols (each depth level at least a Fibonacci factor more), far beyond any layer.
"""

from __future__ import annotations

import heapq

import numpy as np

from refdns.compress._checks import int_vector
from refdns.errors import CompressError

#: Longest code the coder produces and the decoder accepts.
MAX_CODE_BITS = 64

#: Codes up to this length decode through a lookup table of 2^TABLE_BITS entries.
TABLE_BITS = 16

#: Bit positions whose table lookups are computed at once while decoding.
WINDOW_BLOCK = 1 << 20


def code_lengths(freqs: np.ndarray) -> np.ndarray:
    """Huffman code length of every symbol from its frequency.

    Parameters
    ----------
    freqs : ndarray, shape (S,), non-negative int
        Occurrences of symbol s = 0 .. S-1.

    Returns
    -------
    lengths : ndarray, shape (S,), uint8
        0 for absent symbols; 1 for the only symbol of a one-symbol stream.
    """
    f = int_vector("freqs", freqs)
    if f.size and int(f.min()) < 0:
        raise CompressError("freqs must be non-negative")
    lengths = np.zeros(f.size, dtype=np.uint8)
    present = np.flatnonzero(f)
    if present.size == 0:
        return lengths
    if present.size == 1:
        lengths[present[0]] = 1
        return lengths
    # Node ids: leaves 0 .. m-1 (present symbols in order), internal nodes from m up; a parent's id is
    # always larger than its children's, so depths fill in one backward sweep.
    m = present.size
    heap = [(int(f[s]), node) for node, s in enumerate(present)]
    heapq.heapify(heap)
    parent = np.zeros(2 * m - 1, dtype=np.int64)
    next_id = m
    while len(heap) > 1:
        fa, a = heapq.heappop(heap)
        fb, b = heapq.heappop(heap)
        parent[a] = parent[b] = next_id
        heapq.heappush(heap, (fa + fb, next_id))
        next_id += 1
    depth = np.zeros(2 * m - 1, dtype=np.int64)
    for node in range(2 * m - 3, -1, -1):  # the root (2m - 2) has depth 0
        depth[node] = depth[parent[node]] + 1
    if int(depth[:m].max()) > MAX_CODE_BITS:
        raise CompressError(f"a Huffman code is {int(depth[:m].max())} bits long, over {MAX_CODE_BITS}")
    lengths[present] = depth[:m]
    return lengths


def check_lengths(lengths: np.ndarray) -> np.ndarray:
    """Validate a code-length table (decoder side); returns it as an int64 array.

    Lengths must lie in [0, :data:`MAX_CODE_BITS`] and satisfy Kraft's inequality
    ``sum 2^-len <= 1`` (the lengths of a prefix code); a damaged table is refused here.
    """
    lens = int_vector("code lengths", lengths)
    if lens.size and (int(lens.min()) < 0 or int(lens.max()) > MAX_CODE_BITS):
        raise CompressError(f"code lengths must lie in [0, {MAX_CODE_BITS}], got [{int(lens.min())}, "
                            f"{int(lens.max())}]")
    counts = np.bincount(lens, minlength=MAX_CODE_BITS + 1)
    # Kraft in exact integers: sum_l count_l 2^(64 - l) <= 2^64.
    kraft = sum(int(counts[n]) << (MAX_CODE_BITS - n) for n in range(1, MAX_CODE_BITS + 1))
    if kraft > 1 << MAX_CODE_BITS:
        raise CompressError("code lengths violate Kraft's inequality: they are not a prefix code")
    return lens


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of every symbol (0 where its length is 0).

    Returns
    -------
    codes : ndarray, shape (S,), uint64
        Symbol s is written as the low ``lengths[s]`` bits of ``codes[s]``, most significant first.
    """
    lens = check_lengths(lengths)
    codes = np.zeros(lens.size, dtype=np.uint64)
    present = np.flatnonzero(lens)
    order = present[np.argsort(lens[present], kind="stable")]  # by (length, symbol)
    code = 0
    prev = 0
    for s in order.tolist():
        n = int(lens[s])
        code <<= n - prev
        codes[s] = code
        code += 1
        prev = n
    return codes


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Encode a symbol stream with the canonical code of ``lengths``.

    Parameters
    ----------
    symbols : ndarray, shape (n,), int
        Every symbol must have a code (``lengths[s] > 0``).
    lengths : ndarray, shape (S,), int
        From :func:`code_lengths`.

    Returns
    -------
    data : bytes
        ``ceil(n_bits / 8)`` bytes, codes packed most significant bit first, zero-padded.
    n_bits : int
    """
    lens = check_lengths(lengths)
    codes = canonical_codes(lens)
    sym = int_vector("symbols", symbols)
    if sym.size == 0:
        return b"", 0
    if int(sym.min()) < 0 or int(sym.max()) >= lens.size:
        raise CompressError(f"symbols range over [{int(sym.min())}, {int(sym.max())}], outside the alphabet "
                            f"of {lens.size}")
    sym_len = lens[sym]  # (n,)
    if not sym_len.all():
        raise CompressError(f"symbol {int(sym[np.argmin(sym_len)])} has no code (length 0)")
    n_bits = int(sym_len.sum())
    # Bit t of the stream is bit (len - 1 - j) of the code of the symbol it belongs to, j = t - its start.
    owner = np.repeat(np.arange(sym.size), sym_len)  # (n_bits,)
    starts = np.cumsum(sym_len) - sym_len
    shift = (sym_len[owner] - 1 - (np.arange(n_bits) - starts[owner])).astype(np.uint64)
    bits = ((codes[sym][owner] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tobytes(), n_bits


def _decode_tables(lens: np.ndarray, codes: np.ndarray, table_bits: int):
    """Lookup table on ``table_bits`` bits: symbol and length of the code that prefixes each bit pattern."""
    sym_tab = np.full(1 << table_bits, -1, dtype=np.int32)
    len_tab = np.zeros(1 << table_bits, dtype=np.int8)
    for s in np.flatnonzero((lens > 0) & (lens <= table_bits)).tolist():
        span = table_bits - int(lens[s])
        lo = int(codes[s]) << span
        sym_tab[lo : lo + (1 << span)] = s
        len_tab[lo : lo + (1 << span)] = lens[s]
    return sym_tab, len_tab


def huffman_decode(data: bytes, n_bits: int, lengths: np.ndarray, n_symbols: int) -> np.ndarray:
    """Decode ``n_symbols`` symbols from exactly ``n_bits`` bits of ``data``.

    Parameters
    ----------
    data : bytes
        Exactly ``ceil(n_bits / 8)`` bytes; the padding bits of the last byte must be 0.
    n_bits : int
    lengths : ndarray, shape (S,), int
        The code-length table the stream was encoded with.
    n_symbols : int

    Returns
    -------
    symbols : ndarray, shape (n_symbols,), int64

    Raises
    ------
    CompressError
        Any inconsistency: a bad length table, a byte count that does not match ``n_bits``, a bit pattern
        that is no code, a stream that ends early or has bits left over, non-zero padding.
    """
    lens = check_lengths(lengths)
    for name, v in (("n_bits", n_bits), ("n_symbols", n_symbols)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise CompressError(f"{name}={v!r} must be a non-negative int")
    n_bits, n_symbols = int(n_bits), int(n_symbols)
    if len(data) != (n_bits + 7) // 8:
        raise CompressError(f"a stream of {n_bits} bits takes {(n_bits + 7) // 8} bytes, got {len(data)}")
    max_len = int(lens.max()) if lens.size else 0
    if n_symbols == 0 or max_len == 0:
        if n_symbols or n_bits:
            raise CompressError(f"{n_symbols} symbols in {n_bits} bits with {np.count_nonzero(lens)} codes")
        return np.zeros(0, dtype=np.int64)
    # Every code is at least one bit long: this bounds the output by the input before allocating.
    if n_symbols > n_bits:
        raise CompressError(f"{n_symbols} symbols cannot fit in {n_bits} bits")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits[n_bits:].any():
        raise CompressError("the padding bits after the stream are not zero")
    codes = canonical_codes(lens)
    t = min(max_len, TABLE_BITS)
    sym_tab, len_tab = _decode_tables(lens, codes, t)
    padded = np.concatenate([bits[:n_bits], np.zeros(t, dtype=np.uint8)])
    out = np.empty(n_symbols, dtype=np.int64)
    lo = hi = 0
    win_sym = win_len = np.zeros(0, dtype=np.int32)
    p = 0
    for i in range(n_symbols):
        if p >= n_bits:
            raise CompressError(f"the stream ends after {i} of {n_symbols} symbols")
        if p >= hi:  # the lookups of the next block of bit positions (memory stays O(block))
            lo, hi = p, min(p + WINDOW_BLOCK, n_bits)
            win_sym, win_len = _window_lookup(padded, lo, hi, t, sym_tab, len_tab)
        n = int(win_len[p - lo])
        if n:
            out[i] = win_sym[p - lo]
        else:
            out[i], n = _decode_long(padded, p, n_bits, lens, codes, t, max_len)
        p += n
        if p > n_bits:
            raise CompressError(f"symbol {i} runs past the end of the {n_bits}-bit stream")
    if p != n_bits:
        raise CompressError(f"{n_bits - p} bits are left over after {n_symbols} symbols")
    return out


def _window_lookup(padded: np.ndarray, lo: int, hi: int, t: int, sym_tab: np.ndarray, len_tab: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Table lookups for bit positions lo .. hi-1: the symbol and length of the code starting at each."""
    window = np.zeros(hi - lo, dtype=np.int32)  # the t bits starting at each position, as an integer
    for j in range(t):
        window |= padded[lo + j : hi + j].astype(np.int32) << (t - 1 - j)
    return sym_tab[window], len_tab[window]  # symbol -1 / length 0: a longer code, or no code


def _decode_long(bits: np.ndarray, p: int, n_bits: int, lens: np.ndarray, codes: np.ndarray,
                 start: int, max_len: int) -> tuple[int, int]:
    """Bit-by-bit canonical decode of a code longer than the table: (symbol, length), or CompressError."""
    code = 0
    for n in range(1, max_len + 1):
        if p + n > n_bits:
            raise CompressError(f"a code starting at bit {p} runs past the end of the {n_bits}-bit stream")
        code = (code << 1) | int(bits[p + n - 1])
        if n > start:
            hit = np.flatnonzero((lens == n) & (codes == np.uint64(code)))
            if hit.size:
                return int(hit[0]), n
    raise CompressError(f"the bits at position {p} are no code of this table")
