"""Canonical Huffman coding against a reference decoder, and the relative index with fillers."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refdns.compress.huffman import (
    MAX_CODE_BITS,
    TABLE_BITS,
    canonical_codes,
    check_lengths,
    code_lengths,
    huffman_decode,
    huffman_encode,
)
from refdns.compress.relindex import filler, positions_from_stream, relative_index_stream
from refdns.errors import CompressError
from refdns.sparse import relative_index_entries


def reference_decode(data: bytes, n_bits: int, lengths: np.ndarray) -> list[int]:
    """Bit by bit through a {bit string: symbol} dictionary built from the codes as strings."""
    codes = canonical_codes(lengths)
    table = {format(int(codes[s]), f"0{int(n)}b"): s for s, n in enumerate(lengths) if n}
    bits = "".join(format(b, "08b") for b in data)[:n_bits]
    out, cur = [], ""
    for b in bits:
        cur += b
        if cur in table:
            out.append(table[cur])
            cur = ""
    assert cur == "", "stream ended inside a code"
    return out


def huffman_cost(freqs: np.ndarray) -> int:
    """Optimal total bits, independently: the sum of the weights of all merged nodes."""
    heap = [int(f) for f in freqs if f > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


@st.composite
def streams(draw, max_alphabet: int = 40, max_len: int = 300):
    """An alphabet size and a stream over a skewed subset of it (some symbols absent)."""
    alphabet = draw(st.integers(1, max_alphabet))
    weights = draw(hnp.arrays(np.float64, alphabet, elements=st.floats(0, 1)))
    n = draw(st.integers(0, max_len))
    seed = draw(st.integers(0, 2**32 - 1))
    p = weights**3 + 1e-12
    symbols = np.random.default_rng(seed).choice(alphabet, size=n, p=p / p.sum())
    return alphabet, symbols


@given(streams())
def test_round_trip_against_reference_decode(case):
    alphabet, symbols = case
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    data, n_bits = huffman_encode(symbols, lengths)
    assert len(data) == (n_bits + 7) // 8
    decoded = huffman_decode(data, n_bits, lengths, symbols.size)
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, symbols)
    assert reference_decode(data, n_bits, lengths) == symbols.tolist()


@given(streams())
def test_code_lengths_are_optimal_and_complete(case):
    alphabet, symbols = case
    freqs = np.bincount(symbols, minlength=alphabet)
    lengths = code_lengths(freqs)
    assert np.array_equal(lengths > 0, freqs > 0)
    assert int(np.sum(freqs * lengths.astype(np.int64))) == (huffman_cost(freqs) if symbols.size else 0)
    present = lengths[lengths > 0].astype(np.int64)
    if present.size >= 2:  # Huffman codes are complete: Kraft's sum is exactly 1
        assert sum(2.0 ** -present) == 1.0


def test_canonical_codes_follow_length_then_symbol():
    lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4], dtype=np.uint8)  # RFC 1951 sec. 3.2.2's example
    expected = [0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111]
    assert canonical_codes(lengths).tolist() == expected


def test_empty_stream():
    lengths = code_lengths(np.zeros(5, dtype=np.int64))
    assert not lengths.any()
    assert huffman_encode(np.zeros(0, dtype=np.int64), lengths) == (b"", 0)
    assert huffman_decode(b"", 0, lengths, 0).shape == (0,)
    assert code_lengths(np.zeros(0, dtype=np.int64)).shape == (0,)


def test_single_symbol_stream_takes_one_bit_per_symbol():
    symbols = np.full(11, 3)
    lengths = code_lengths(np.bincount(symbols, minlength=6))
    assert lengths.tolist() == [0, 0, 0, 1, 0, 0]
    data, n_bits = huffman_encode(symbols, lengths)
    assert (data, n_bits) == (b"\x00\x00", 11)
    np.testing.assert_array_equal(huffman_decode(data, n_bits, lengths, 11), symbols)


def test_codes_longer_than_the_lookup_table():
    """Fibonacci frequencies give a maximally deep tree: codes up to 24 bits, past the 16-bit table."""
    fib = [1, 1]
    while len(fib) < 25:
        fib.append(fib[-1] + fib[-2])
    freqs = np.array(fib, dtype=np.int64)
    lengths = code_lengths(freqs)
    assert int(lengths.max()) == 24 > TABLE_BITS
    symbols = np.random.default_rng(5).permutation(np.repeat(np.arange(freqs.size), np.minimum(freqs, 30)))
    data, n_bits = huffman_encode(symbols, lengths)
    np.testing.assert_array_equal(huffman_decode(data, n_bits, lengths, symbols.size), symbols)
    assert reference_decode(data, n_bits, lengths) == symbols.tolist()


@given(streams(max_len=200))
def test_decoding_in_small_blocks_of_lookups(case):
    """The table lookups are computed per block of bit positions; a block boundary inside a code is fine."""
    import refdns.compress.huffman as huffman

    alphabet, symbols = case
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    data, n_bits = huffman_encode(symbols, lengths)
    saved = huffman.WINDOW_BLOCK
    huffman.WINDOW_BLOCK = 3
    try:
        np.testing.assert_array_equal(huffman_decode(data, n_bits, lengths, symbols.size), symbols)
    finally:
        huffman.WINDOW_BLOCK = saved


def test_encoding_a_symbol_without_a_code_is_refused():
    lengths = np.array([1, 1, 0], dtype=np.uint8)
    with pytest.raises(CompressError, match="no code"):
        huffman_encode(np.array([0, 2]), lengths)
    with pytest.raises(CompressError, match="outside"):
        huffman_encode(np.array([3]), lengths)


def test_bad_length_tables_are_refused():
    with pytest.raises(CompressError, match="Kraft"):
        check_lengths(np.array([1, 1, 1]))
    with pytest.raises(CompressError, match="lie in"):
        check_lengths(np.array([MAX_CODE_BITS + 1, 1]))


@given(streams(max_len=60), st.data())
def test_damaged_streams_are_refused_or_decode_within_bounds(case, data):
    """Truncated or bit-flipped streams never hang: they raise CompressError or decode to n symbols."""
    alphabet, symbols = case
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    raw, n_bits = huffman_encode(symbols, lengths)
    if n_bits == 0:
        return
    with pytest.raises(CompressError):
        huffman_decode(raw[:-1], n_bits, lengths, symbols.size)  # too few bytes
    with pytest.raises(CompressError):
        huffman_decode(raw, n_bits, lengths, symbols.size + 1)  # more symbols than there are
    if n_bits > 1:
        with pytest.raises(CompressError):  # stream stated one bit shorter: ends inside a code or early
            huffman_decode(raw[: (n_bits + 6) // 8], n_bits - 1, lengths, symbols.size)
    flip = data.draw(st.integers(0, n_bits - 1))
    damaged = bytearray(raw)
    damaged[flip // 8] ^= 0x80 >> (flip % 8)
    try:
        out = huffman_decode(bytes(damaged), n_bits, lengths, symbols.size)
    except CompressError:
        return
    assert out.shape == symbols.shape and out.min() >= 0 and out.max() < alphabet


def test_non_zero_padding_is_refused():
    lengths = np.array([1, 1], dtype=np.uint8)
    data, n_bits = huffman_encode(np.array([1, 0, 1]), lengths)
    assert n_bits == 3
    with pytest.raises(CompressError, match="padding"):
        huffman_decode(bytes([data[0] | 1]), n_bits, lengths, 3)


@given(st.integers(1, 10), st.data())
def test_relative_index_stream_matches_sparse_counts_and_round_trips(bits, data):
    size = data.draw(st.integers(1, 3000))
    density = data.draw(st.sampled_from([0.0, 0.001, 0.01, 0.2, 1.0]))
    seed = data.draw(st.integers(0, 2**32 - 1))
    pos = np.flatnonzero(np.random.default_rng(seed).random(size) < density)
    stream = relative_index_stream(pos, bits)
    entries, fillers = relative_index_entries(pos, bits)
    assert stream.size == entries and int(np.sum(stream == filler(bits))) == fillers
    assert stream.size == 0 or (stream.max() <= filler(bits) and stream[-1] != filler(bits))
    np.testing.assert_array_equal(positions_from_stream(stream, bits, size), pos)


def test_relative_index_with_a_filler_by_hand():
    """3-bit indices as in Deep Compression Fig. 2: positions 1, 4 and 15; the gap of 10 needs a filler."""
    stream = relative_index_stream(np.array([1, 4, 15]), 3)
    # zeros skipped: 1, 2, then 10 = a filler (7 zeros + itself) and 2 more
    assert stream.tolist() == [1, 2, filler(3), 2]
    assert relative_index_entries(np.array([1, 4, 15]), 3) == (4, 1)
    # a gap of exactly 2^k - 1 = 7 zeros fits; 8 does not
    assert relative_index_stream(np.array([7]), 3).tolist() == [7]
    assert relative_index_stream(np.array([8]), 3).tolist() == [filler(3), 0]


def test_bad_relative_index_streams_are_refused():
    with pytest.raises(CompressError, match="ends with a filler"):
        positions_from_stream(np.array([0, 8]), 3, 100)
    assert positions_from_stream(np.array([8, 3]), 3, 12).tolist() == [11]
    with pytest.raises(CompressError, match="position 11"):
        positions_from_stream(np.array([8, 3]), 3, 11)
    with pytest.raises(CompressError, match="lie in"):
        positions_from_stream(np.array([9]), 3, 100)
    with pytest.raises(CompressError, match="increasing"):
        relative_index_stream(np.array([3, 3]), 3)
    with pytest.raises(CompressError, match="index_bits"):
        relative_index_stream(np.array([3]), 17)
