"""The ``.rdc`` compressed-net file: shared weights, Huffman-coded streams, a SHA-256 checksum.

Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
Huffman Coding", ICLR 2016, Fig. 1: pruning ("same accuracy, 9x-13x reduction") -> quantization ("same
accuracy, 27x-31x reduction") -> Huffman encoding ("same accuracy, 35x-49x reduction"). A layer is stored as
its codebook (float32 centroids), the Huffman-coded cluster index of every kept weight (sec. 3-4), and the
Huffman-coded relative sparse index of its kept positions with filler entries (sec. 2, Fig. 2); the bias
raw. The byte layout is in data/SCHEMA.md ("Compressed nets").

Reading checks the magic, version, stated length and SHA-256 before it parses a byte of the payload, and
bounds every count by the bytes left before it allocates, so a truncated or damaged file is refused with
:class:`~refdns.errors.RdcError`, never a hang, a huge allocation or a wrong net. Decompression gives the
quantised weights bit for bit (``codebook[indices]`` placed at the kept positions, 0 elsewhere).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refdns.atomic import write_bytes
from refdns.compress.huffman import code_lengths, huffman_decode, huffman_encode
from refdns.compress.quantize import KINDS, QuantizedLayer, dequantize_net
from refdns.compress.relindex import HAN_INDEX_BITS, filler, positions_from_stream, relative_index_stream
from refdns.errors import CompressError, ConfigError, RdcError

MAGIC = b"\x89RDC\r\n\x1a\n"  # PNG's trick: a high byte and CR LF / ^Z / LF catch text-mode mangling
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIQ")  # magic, format version, payload length
DIGEST_BYTES = 32  # SHA-256

#: Largest layer the format holds (entries of one weight array): positions stay within int32 CSR indices.
MAX_LAYER_ENTRIES = 2**31 - 1
#: Widest relative index.
MAX_INDEX_BITS = 16


@dataclass(frozen=True)
class EncodedLayer:
    """One layer as stored: codebook, two Huffman streams with their code-length tables, the bias."""

    name: str
    kind: str
    shape: tuple[int, ...]
    bits: int
    index_bits: int
    codebook: np.ndarray  # (K,) float32
    n_kept: int
    index_lengths: np.ndarray  # (K,) uint8: Huffman code length of each cluster
    index_nbits: int
    index_data: bytes
    n_entries: int  # kept weights + fillers
    pos_lengths: np.ndarray  # (2^index_bits + 1,) uint8: code length of each relative index, filler last
    pos_nbits: int
    pos_data: bytes
    bias: np.ndarray  # float32
    bias_mask: np.ndarray  # bool

    @property
    def n_fillers(self) -> int:
        return self.n_entries - self.n_kept

    def block(self) -> bytes:
        """The layer's block of the payload (everything but its name, which is in the header's list)."""
        out = [struct.pack("<BB", KINDS.index(self.kind), len(self.shape)),
               struct.pack(f"<{len(self.shape)}I", *self.shape),
               struct.pack("<BBI", self.bits, self.index_bits, self.codebook.size),
               self.codebook.astype("<f4").tobytes(),
               struct.pack("<Q", self.n_kept), self.index_lengths.astype(np.uint8).tobytes(),
               struct.pack("<Q", self.index_nbits), self.index_data,
               struct.pack("<Q", self.n_entries), self.pos_lengths.astype(np.uint8).tobytes(),
               struct.pack("<Q", self.pos_nbits), self.pos_data,
               struct.pack("<I", self.bias.size), self.bias.astype("<f4").tobytes(),
               np.packbits(self.bias_mask).tobytes()]
        return b"".join(out)


def encode_layer(layer: QuantizedLayer, index_bits: int) -> EncodedLayer:
    """Huffman-code one quantised layer's cluster indices and relative positions."""
    if isinstance(index_bits, bool) or not isinstance(index_bits, (int, np.integer)) \
            or not 1 <= index_bits <= MAX_INDEX_BITS:
        raise ConfigError(f"index_bits for {layer.name}={index_bits!r} must be an int in "
                          f"[1, {MAX_INDEX_BITS}]")
    index_bits = int(index_bits)
    if layer.mask.size > MAX_LAYER_ENTRIES:
        raise CompressError(f"layer {layer.name!r} has {layer.mask.size} weights, over the format's "
                            f"{MAX_LAYER_ENTRIES}")
    if any(d > 2**32 - 1 for d in layer.shape) or layer.mask.size == 0:
        raise CompressError(f"layer {layer.name!r}: shape {layer.shape} is empty or has a dimension "
                            "over 2^32 - 1")
    idx = layer.indices.astype(np.int64)
    idx_len = code_lengths(np.bincount(idx, minlength=layer.n_clusters))
    idx_data, idx_nbits = huffman_encode(idx, idx_len)
    rel = relative_index_stream(np.flatnonzero(layer.mask), index_bits)
    pos_len = code_lengths(np.bincount(rel, minlength=filler(index_bits) + 1))
    pos_data, pos_nbits = huffman_encode(rel, pos_len)
    return EncodedLayer(layer.name, layer.kind, layer.shape, layer.bits, index_bits, layer.codebook,
                        int(idx.size), idx_len, idx_nbits, idx_data, int(rel.size), pos_len, pos_nbits,
                        pos_data, layer.bias, layer.bias_mask)


def _name_bytes(name: str, what: str) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise CompressError(f"{what} is {len(raw)} bytes in UTF-8, over 65535")
    return struct.pack("<H", len(raw)) + raw


def resolve_index_bits(layers: Sequence[QuantizedLayer], index_bits: dict[str, int] | None) -> dict[str, int]:
    """Relative-index width per layer: Deep Compression's 8 conv / 5 fc, overridden by layer name."""
    index_bits = {} if index_bits is None else index_bits
    if not isinstance(index_bits, dict):
        raise ConfigError(f"index_bits must be a dict {{layer: bits}} or None, got {index_bits!r}")
    names = [la.name for la in layers]
    unknown = sorted(set(index_bits) - set(names))
    if unknown:
        raise ConfigError(f"index_bits names layers {unknown} that are not among {names}")
    return {la.name: index_bits.get(la.name, HAN_INDEX_BITS[la.kind]) for la in layers}


def encode_net(net_name: str, layers: Sequence[QuantizedLayer], *, index_bits: dict[str, int] | None = None
               ) -> tuple[bytes, tuple[EncodedLayer, ...]]:
    """The bytes of an ``.rdc`` file, and the encoded layers (for byte accounting)."""
    if not isinstance(net_name, str):
        raise CompressError(f"net_name must be a str, got {net_name!r}")
    layers = tuple(layers)
    if not layers or not all(isinstance(la, QuantizedLayer) for la in layers):
        raise CompressError("layers must be a non-empty sequence of QuantizedLayer")
    names = [la.name for la in layers]
    if len(set(names)) != len(names):
        raise CompressError(f"layer names repeat: {names}")
    widths = resolve_index_bits(layers, index_bits)
    encoded = tuple(encode_layer(la, widths[la.name]) for la in layers)
    return pack_rdc(net_name, encoded), encoded


def pack_rdc(net_name: str, encoded: Sequence[EncodedLayer]) -> bytes:
    """Preamble, payload (net name, layer list, layer blocks) and SHA-256: the bytes of the file."""
    payload = b"".join([_name_bytes(net_name, "the net name"), struct.pack("<I", len(encoded)),
                        *(_name_bytes(e.name, f"layer name {e.name[:40]!r}") for e in encoded),
                        *(e.block() for e in encoded)])
    head = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(payload)) + payload
    return head + hashlib.sha256(head).digest()


def write_rdc(path: str | os.PathLike, net_name: str, layers: Sequence[QuantizedLayer], *,
              index_bits: dict[str, int] | None = None) -> Path:
    """Write a compressed net to ``path`` atomically (temporary file, fsync, rename).

    Parameters
    ----------
    path : str or PathLike
    net_name : str
        E.g. ``"lenet-300-100"``; read back as is.
    layers : sequence of QuantizedLayer
        From :func:`refdns.compress.quantize.quantize_net`; names unique.
    index_bits : dict {layer: int}, optional
        Relative-index widths in [1, 16]; default 8 for conv, 5 for dense layers (Deep Compression sec. 2).
        Any width gives the same net back; it only changes the size.
    """
    data, _ = encode_net(net_name, layers, index_bits=index_bits)
    return write_bytes(path, data)


class _Reader:
    """Little-endian reads from a payload that refuse to run past its end."""

    def __init__(self, buf: bytes, path: str):
        self.buf = memoryview(buf)
        self.pos = 0
        self.path = path

    def fail(self, msg: str) -> RdcError:
        return RdcError(f"{self.path}: {msg} (payload offset {self.pos})")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > len(self.buf) - self.pos:
            raise self.fail(f"{what} needs {n} bytes, only {len(self.buf) - self.pos} left")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        if count > (len(self.buf) - self.pos) // itemsize:  # bound the count before multiplying
            raise self.fail(f"{what} claims {count} entries, more than the bytes left")
        return np.frombuffer(self.take(count * itemsize, what), dtype=dtype).copy()

    def name(self, what: str) -> str:
        (n,) = self.unpack("H", what)
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


def _read_layer(r: _Reader, name: str) -> tuple[QuantizedLayer, int]:
    where = f"layer {name!r}"
    kind_code, ndim = r.unpack("BB", f"{where} kind")
    if kind_code >= len(KINDS):
        raise r.fail(f"{where}: unknown kind code {kind_code}")
    kind = KINDS[kind_code]
    if ndim != (2 if kind == "dense" else 4):
        raise r.fail(f"{where}: a {kind} weight cannot have {ndim} dimensions")
    shape = tuple(int(d) for d in r.unpack(f"{ndim}I", f"{where} shape"))
    size = int(np.prod(shape, dtype=object))
    if size > MAX_LAYER_ENTRIES or min(shape) == 0:
        raise r.fail(f"{where}: shape {shape} is empty or over {MAX_LAYER_ENTRIES} entries")
    bits, index_bits, k = r.unpack("BBI", f"{where} bits")
    if not 1 <= bits <= 16 or not 1 <= index_bits <= MAX_INDEX_BITS or k > 1 << bits:
        raise r.fail(f"{where}: bits={bits}, index_bits={index_bits}, {k} centroids are out of range")
    codebook = r.array("<f4", k, f"{where} codebook").astype(np.float32)
    if not np.isfinite(codebook).all():
        raise r.fail(f"{where}: the codebook holds NaN or Inf")
    (n_kept,) = r.unpack("Q", f"{where} kept count")
    if n_kept > size:
        raise r.fail(f"{where}: {n_kept} kept weights in a layer of {size}")
    idx_len = r.array("u1", k, f"{where} index code lengths")
    (idx_nbits,) = r.unpack("Q", f"{where} index stream length")
    idx_data = bytes(r.take((idx_nbits + 7) // 8, f"{where} index stream"))
    (n_entries,) = r.unpack("Q", f"{where} entry count")
    pos_len = r.array("u1", filler(index_bits) + 1, f"{where} relative-index code lengths")
    (pos_nbits,) = r.unpack("Q", f"{where} relative-index stream length")
    pos_data = bytes(r.take((pos_nbits + 7) // 8, f"{where} relative-index stream"))
    (n_b,) = r.unpack("I", f"{where} bias size")
    if n_b != shape[0]:
        raise r.fail(f"{where}: {n_b} biases for {shape[0]} outputs")
    bias = r.array("<f4", n_b, f"{where} bias").astype(np.float32)
    if not np.isfinite(bias).all():
        raise r.fail(f"{where}: the bias holds NaN or Inf")
    bias_mask = np.unpackbits(r.array("u1", (n_b + 7) // 8, f"{where} bias mask"))[:n_b].astype(bool)
    if n_entries < n_kept:
        raise r.fail(f"{where}: {n_entries} entries for {n_kept} kept weights")
    try:
        indices = huffman_decode(idx_data, idx_nbits, idx_len, n_kept)
        rel = huffman_decode(pos_data, pos_nbits, pos_len, n_entries)
        positions = positions_from_stream(rel, index_bits, size)
    except CompressError as e:
        raise r.fail(f"{where}: {e}") from None
    if positions.size != n_kept:
        raise r.fail(f"{where}: the relative indices give {positions.size} kept weights, the header {n_kept}")
    mask = np.zeros(size, dtype=bool)
    mask[positions] = True
    try:
        layer = QuantizedLayer(name, kind, bits, codebook, indices.astype(np.int32), mask.reshape(shape),
                               bias, bias_mask)
    except CompressError as e:
        raise r.fail(str(e)) from None
    return layer, index_bits


def read_rdc_layers(path: str | os.PathLike) -> tuple[str, tuple[QuantizedLayer, ...], dict[str, int]]:
    """Read an ``.rdc`` file: ``(net_name, layers, index_bits)``.

    Raises
    ------
    RdcError
        Not an ``.rdc`` file (magic), a newer format version, a length that disagrees with the file size,
        a checksum mismatch (truncation or any changed byte), or a payload that does not parse exactly.
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise RdcError(f"{path}: cannot read it ({e.strerror or e})") from e
    if len(buf) < _PREAMBLE.size + DIGEST_BYTES or buf[:8] != MAGIC:
        raise RdcError(f"{path}: not an .rdc file (no magic number, or shorter than the smallest one)")
    _, version, payload_len = _PREAMBLE.unpack_from(buf)
    if version != FORMAT_VERSION:
        raise RdcError(f"{path}: format version {version}; this refdns reads version {FORMAT_VERSION}")
    if payload_len != len(buf) - _PREAMBLE.size - DIGEST_BYTES:
        raise RdcError(f"{path}: the header states a {payload_len}-byte payload, the file holds "
                       f"{len(buf) - _PREAMBLE.size - DIGEST_BYTES} (truncated or appended to)")
    body, digest = buf[:-DIGEST_BYTES], buf[-DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise RdcError(f"{path}: SHA-256 mismatch: the file is damaged")
    r = _Reader(body[_PREAMBLE.size :], str(path))
    net_name = r.name("net name")
    (n_layers,) = r.unpack("I", "layer count")
    if n_layers == 0 or n_layers > len(r.buf) - r.pos:  # every layer takes bytes; bound before the loop
        raise r.fail(f"{n_layers} layers cannot be right")
    names = [r.name(f"layer name {i}") for i in range(n_layers)]
    if len(set(names)) != len(names):
        raise r.fail(f"layer names repeat: {names}")
    layers = []
    widths = {}
    for name in names:
        layer, widths[name] = _read_layer(r, name)
        layers.append(layer)
    if r.pos != len(r.buf):
        raise r.fail(f"{len(r.buf) - r.pos} bytes follow the last layer")
    return net_name, tuple(layers), widths


def read_rdc(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Decompress an ``.rdc`` file: ``(net_name, params, masks)``.

    ``params["<layer>.weight"]`` is the quantised weight (float32, bit for bit ``codebook[index]`` at the
    kept positions, 0 elsewhere), ``params["<layer>.bias"]`` the raw bias; ``masks`` the bool masks under
    the same keys. The caller checks them against its net spec (:func:`refdns.nets.sequential.check_params`).
    """
    net_name, layers, _ = read_rdc_layers(path)
    params, masks = dequantize_net(layers)
    return net_name, params, masks
