"""Caffe's ``.caffemodel`` and ``.solverstate`` files: a strict reader and a writer of the fields they use.

Both files are protobuf messages of ``src/caffe/proto/caffe.proto`` (the DNS authors' fork, as in BVLC Caffe
at aa2a6f55). The fields read here, with their numbers from that file:

- ``NetParameter``: name 1 (string), layer 100 (``LayerParameter``), legacy layers 2 (``V1LayerParameter``).
- ``LayerParameter``: name 1, type 2 (strings), blobs 7 (``BlobProto``).
- ``V1LayerParameter``: name 4 (string), type 5 (enum), blobs 6. Its field 1 is a whole V0 layer, the format
  before V1: refused (upgrade such a file with Caffe's ``upgrade_net_proto_binary`` first).
- ``BlobProto``: shape 7 (``BlobShape``: dim 1, packed int64), data 5 (packed float), double_data 8 (packed
  double), legacy num 1, channels 2, height 3, width 4 (int32). The gradients (diff 6, double_diff 9) are
  skipped, as is every field not named here.
- ``SolverState``: iter 1 (int32), learned_net 2 (string), history 3 (``BlobProto``), current_step 4 (int32).

Why a reader of our own rather than the ``protobuf`` package: the package parses only through generated code
(``caffe_pb2``, made by ``protoc`` from caffe.proto, tied to the runtime's major version) or a descriptor
built at run time from a hand-copied schema; either way it adds a dependency whose versions break each other,
for five short messages. Its parser is also lenient where refdns must be strict: it accepts NaN weights,
blobs whose shape disagrees with their data and mask blobs that are not 0/1, all of which would have to be
checked here anyway. The wire format is small and stable (varints, fixed 32/64-bit, length-delimited), packed
floats load with one ``np.frombuffer``, and a 1 MB model parses in milliseconds.

Strictness: a varint longer than 10 bytes or beyond 64 bits, a length that runs past its message, a
known field with a wire type its declaration does not allow, a group or an invalid wire type, field number
0, a string that is not UTF-8, a shape that disagrees with the data, more than Caffe's 32 axes, negative
dims, NaN or Inf, all raise :class:`~refdns.errors.CaffeFormatError` naming the file, the byte offset and
the field. Every step of the parser consumes at least one byte, so no input makes it loop. Protobuf itself
cannot tell a file cut exactly between two layers from a file with fewer layers; :func:`caffemodel_to_params`
refuses such a file because a layer the net needs is missing.

Mapping onto refdns (:func:`caffemodel_to_params`): each parametric layer has the blobs W, b (a plain Caffe
layer) or W, b, W mask, b mask (the authors' ``CInnerProduct`` / ``CConvolution``; masks are 0/1 floats).
Caffe layouts equal refdns's: dense W (out, in), conv W (F, C, K, K), biases (out,).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from refdns.atomic import atomic_path
from refdns.errors import CaffeFormatError

# Wire types (protobuf encoding): varint, fixed 64-bit, length-delimited, group start/end, fixed 32-bit.
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
_MAX_FIELD = (1 << 29) - 1
_MAX_AXES = 32  # Caffe's kMaxBlobAxes
_INT32 = (-(1 << 31), (1 << 31) - 1)

# Field numbers (caffe.proto).
NET_NAME, NET_LAYERS_V1, NET_LAYER = 1, 2, 100
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7
V1_V0LAYER, V1_NAME, V1_TYPE, V1_BLOBS = 1, 4, 5, 6
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8
SHAPE_DIM = 1
STATE_ITER, STATE_LEARNED_NET, STATE_HISTORY, STATE_CURRENT_STEP = 1, 2, 3, 4


class _Reader:
    """Walks one protobuf message held in ``buf[start:end]``; offsets in errors are from the file's start."""

    def __init__(self, buf: memoryview, start: int, end: int, path: str, what: str):
        self.buf = buf
        self.pos = start
        self.end = end
        self.path = path
        self.what = what

    def fail(self, message: str, at: int | None = None) -> CaffeFormatError:
        at = self.pos if at is None else at
        return CaffeFormatError(f"{self.path}: byte {at}, in {self.what}: {message}")

    def varint(self) -> int:
        start = self.pos
        value = 0
        for i in range(10):
            if self.pos >= self.end:
                raise self.fail("truncated varint (the data ends inside it)", start)
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if value >> 64:
                    raise self.fail("varint overflows 64 bits", start)
                return value
        raise self.fail("varint longer than 10 bytes", start)

    def fields(self) -> Iterator[tuple[int, int, int, int | tuple[int, int]]]:
        """Yield ``(field, wire_type, offset, value)``: value is a varint's int, else a (start, end) span."""
        while self.pos < self.end:
            at = self.pos
            key = self.varint()
            field, wire = key >> 3, key & 7
            if field == 0 or field > _MAX_FIELD:
                raise self.fail(f"field number {field} is not a valid protobuf field number", at)
            if wire == VARINT:
                value: int | tuple[int, int] = self.varint()
            elif wire == I64 or wire == I32:
                size = 8 if wire == I64 else 4
                if self.end - self.pos < size:
                    raise self.fail(f"field {field}: truncated {8 * size}-bit value", at)
                value = (self.pos, self.pos + size)
                self.pos += size
            elif wire == LEN:
                length = self.varint()
                if length > self.end - self.pos:
                    raise self.fail(f"field {field}: length {length} runs past the end of the "
                                    f"{self.what} ({self.end - self.pos} bytes left)", at)
                value = (self.pos, self.pos + length)
                self.pos += length
            elif wire in (SGROUP, EGROUP):
                raise self.fail(f"field {field}: a group (wire type {wire}); caffe.proto declares none", at)
            else:
                raise self.fail(f"field {field}: invalid wire type {wire}", at)
            yield field, wire, at, value

    def sub(self, span: tuple[int, int], what: str) -> _Reader:
        return _Reader(self.buf, span[0], span[1], self.path, what)

    def string(self, span: tuple[int, int], field: str) -> str:
        try:
            return bytes(self.buf[span[0]:span[1]]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{field} is not valid UTF-8", span[0]) from None

    def expect(self, field: str, wire: int, allowed: tuple[int, ...], at: int) -> None:
        if wire not in allowed:
            raise self.fail(f"{field} has wire type {wire}, expected {' or '.join(map(str, allowed))}", at)

    def int32(self, value: int, field: str, at: int) -> int:
        signed = value - (1 << 64) if value >> 63 else value
        if not _INT32[0] <= signed <= _INT32[1]:
            raise self.fail(f"{field}={signed} does not fit an int32", at)
        return signed


def _unpack_varints(r: _Reader, span: tuple[int, int], field: str) -> list[int]:
    inner = r.sub(span, f"{r.what} {field} (packed)")
    out = []
    while inner.pos < inner.end:
        out.append(inner.varint())
    return out


def _blob(r: _Reader) -> np.ndarray:
    """One ``BlobProto`` as a float32 array of its shape."""
    legacy: dict[int, int] = {}
    dims: list[int] | None = None
    chunks: list[np.ndarray] = []
    dchunks: list[np.ndarray] = []
    for field, wire, at, value in r.fields():
        if field in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH):
            r.expect(f"legacy dim (field {field})", wire, (VARINT,), at)
            legacy[field] = r.int32(value, f"legacy dim (field {field})", at)
        elif field == BLOB_DATA:
            r.expect("data", wire, (LEN, I32), at)
            if wire == LEN and (value[1] - value[0]) % 4:
                raise r.fail(f"packed float data of {value[1] - value[0]} bytes, not a multiple of 4", at)
            chunks.append(np.frombuffer(r.buf[value[0]:value[1]], dtype="<f4"))
        elif field == BLOB_DOUBLE_DATA:
            r.expect("double_data", wire, (LEN, I64), at)
            if wire == LEN and (value[1] - value[0]) % 8:
                raise r.fail(f"packed double data of {value[1] - value[0]} bytes, not a multiple of 8", at)
            dchunks.append(np.frombuffer(r.buf[value[0]:value[1]], dtype="<f8"))
        elif field == BLOB_SHAPE:
            r.expect("shape", wire, (LEN,), at)
            sr = r.sub(value, "BlobShape")
            dims = [] if dims is None else dims  # a repeated optional message merges: dims append
            for f2, w2, at2, v2 in sr.fields():
                if f2 == SHAPE_DIM:
                    sr.expect("dim", w2, (LEN, VARINT), at2)
                    for d in (_unpack_varints(sr, v2, "dim") if w2 == LEN else [v2]):
                        signed = d - (1 << 64) if d >> 63 else d
                        if signed < 0:
                            raise sr.fail(f"negative dim {signed}", at2)
                        dims.append(signed)
    if chunks and dchunks:
        raise r.fail("holds both data and double_data; Caffe writes one or the other")
    if legacy and dims is not None:
        raise r.fail("holds both a shape and legacy num/channels/height/width; Caffe writes one or the other")
    if legacy:
        shape = tuple(legacy.get(f, 0) for f in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH))
        if min(shape) < 0:
            raise r.fail(f"negative legacy dims {shape}")
    else:
        shape = tuple(dims or ())  # no shape at all is a 0-axis blob of one value, as in Caffe
    if len(shape) > _MAX_AXES:
        raise r.fail(f"{len(shape)} axes, more than Caffe's {_MAX_AXES}")
    raw = np.concatenate(dchunks or chunks) if (dchunks or chunks) else np.zeros(0, np.float32)
    count = 1
    for d in shape:
        count *= d
    if raw.size != count:
        raise r.fail(f"shape {shape} holds {count} values but the blob has {raw.size}")
    with np.errstate(over="ignore"):
        data = raw.astype(np.float32).reshape(shape)  # a copy: the file's buffer may go
    if not np.isfinite(data).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(data))[0])
        raise r.fail(f"NaN or Inf (or a double beyond float32) at index {bad} of shape {shape}")
    return data


def _layer(r: _Reader, v1: bool) -> tuple[str, str, list[np.ndarray]]:
    name, kind, blobs = "", "", []
    name_field, type_field, blobs_field = (V1_NAME, V1_TYPE, V1_BLOBS) if v1 else (LAYER_NAME, LAYER_TYPE,
                                                                                    LAYER_BLOBS)
    for field, wire, at, value in r.fields():
        if field == name_field:
            r.expect("name", wire, (LEN,), at)
            name = r.string(value, "name")
        elif field == type_field:
            if v1:
                r.expect("type", wire, (VARINT,), at)
                kind = f"V1 type {value}"
            else:
                r.expect("type", wire, (LEN,), at)
                kind = r.string(value, "type")
        elif field == blobs_field:
            r.expect("blobs", wire, (LEN,), at)
            blobs.append(_blob(r.sub(value, f"blob {len(blobs)} of layer {name or '(unnamed so far)'}")))
        elif v1 and field == V1_V0LAYER:
            raise r.fail("holds a V0 layer (Caffe's format before V1); upgrade the file with Caffe's "
                         "upgrade_net_proto_binary first", at)
    return name, kind, blobs


def _read(path: str | os.PathLike) -> tuple[memoryview, str]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaffeFormatError(f"{path}: no such file") from None
    except OSError as e:
        raise CaffeFormatError(f"{path}: cannot be read: {e}") from None
    return memoryview(data), str(path)


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """The blobs of every layer that has any, by layer name, in file order.

    Layers without blobs (data, ReLU, pooling, loss) are left out.

    Returns
    -------
    layers : dict of str to list of ndarray, float32
        Each blob in its own shape (W, b, and for the authors' DNS layers W mask, b mask).

    Raises
    ------
    CaffeFormatError
        Damaged framing, a malformed or non-finite blob, two layers of one name, or no blobs at all.
    """
    buf, where = _read(path)
    r = _Reader(buf, 0, len(buf), where, "NetParameter")
    out: dict[str, list[np.ndarray]] = {}
    formats = set()
    for field, wire, at, value in r.fields():
        if field in (NET_LAYER, NET_LAYERS_V1):
            r.expect("layer" if field == NET_LAYER else "layers", wire, (LEN,), at)
            v1 = field == NET_LAYERS_V1
            formats.add(field)
            name, _, blobs = _layer(r.sub(value, "V1LayerParameter" if v1 else "LayerParameter"), v1)
            if not blobs:
                continue
            if not name:
                raise r.fail("a layer with blobs has no name", at)
            if name in out:
                raise r.fail(f"two layers named {name!r} hold blobs", at)
            out[name] = blobs
        elif field == NET_NAME:
            r.expect("name", wire, (LEN,), at)
            r.string(value, "name")
    if len(formats) > 1:
        raise CaffeFormatError(f"{where}: mixes layer (field 100) and legacy layers (field 2), which Caffe "
                               "refuses")
    if not out:
        raise CaffeFormatError(f"{where}: holds no layer with blobs (empty, cut short, or not a .caffemodel)")
    return out


def read_solverstate(path: str | os.PathLike) -> tuple[int, list[np.ndarray]]:
    """The iteration and the solver history (SGD: the momentum of every learnable blob, in net order).

    For the authors' DNS layers the history holds four blobs per layer: W, b, W mask, b mask. The masks'
    history is not zero: the solver applies weight decay and momentum to the mask blobs too (so it holds
    ``lr * weight_decay * mask`` accumulated), and only ``Net::Update`` skips them, so the masks stay 0/1.
    It has no effect on training; a mapping onto refdns's velocity takes the W and b entries only.

    Returns
    -------
    iteration : int
    history : list of ndarray, float32

    Raises
    ------
    CaffeFormatError
        Damaged framing, a malformed or non-finite blob, a negative or missing iteration, or no current_step.
        Caffe writes current_step after the history (protobuf's field order), so its absence means the file
        was cut short, even where the cut falls between two history blobs.
    """
    buf, where = _read(path)
    r = _Reader(buf, 0, len(buf), where, "SolverState")
    iteration = current_step = None
    history: list[np.ndarray] = []
    for field, wire, at, value in r.fields():
        if field == STATE_ITER:
            r.expect("iter", wire, (VARINT,), at)
            iteration = r.int32(value, "iter", at)
        elif field == STATE_LEARNED_NET:
            r.expect("learned_net", wire, (LEN,), at)
            r.string(value, "learned_net")
        elif field == STATE_HISTORY:
            r.expect("history", wire, (LEN,), at)
            history.append(_blob(r.sub(value, f"history blob {len(history)}")))
        elif field == STATE_CURRENT_STEP:
            r.expect("current_step", wire, (VARINT,), at)
            current_step = r.int32(value, "current_step", at)
    if iteration is None:
        raise CaffeFormatError(f"{where}: no iter field (empty, cut short, or not a .solverstate)")
    if current_step is None:
        raise CaffeFormatError(f"{where}: no current_step field, which Caffe writes last: the file was cut "
                               "short")
    if iteration < 0:
        raise CaffeFormatError(f"{where}: iter={iteration} is negative")
    return iteration, history


# ---- writing ----------------------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int32/int64 negatives: ten-byte two's complement, as protobuf writes them
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, LEN) + _varint(len(payload)) + payload


def _blob_bytes(arr: np.ndarray, what: str) -> bytes:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)  # masks: 0/1 floats, as the authors' layers hold them
    if arr.dtype.kind not in "fiu":
        raise CaffeFormatError(f"{what}: dtype {arr.dtype} is not numeric")
    if arr.ndim > _MAX_AXES:
        raise CaffeFormatError(f"{what}: {arr.ndim} axes, more than Caffe's {_MAX_AXES}")
    with np.errstate(over="ignore"):
        data = np.asarray(arr, dtype="<f4")  # not ascontiguousarray: it makes a 0-axis blob 1-axis
    if not np.isfinite(data).all():
        raise CaffeFormatError(f"{what}: holds NaN or Inf (or a value beyond float32); refused, since Caffe "
                               "would load it as is")
    # protobuf writes fields in number order: data (5), then shape (7)
    dims = b"".join(_varint(int(d)) for d in data.shape)
    return _len_field(BLOB_DATA, data.tobytes()) + _len_field(BLOB_SHAPE, _len_field(SHAPE_DIM, dims))


def caffemodel_bytes(layers: Mapping[str, Sequence[np.ndarray]], *, name: str = "",
                     types: Mapping[str, str] | None = None) -> bytes:
    """The ``NetParameter`` bytes for ``layers`` (see :func:`write_caffemodel`)."""
    types = dict(types or {})
    unknown = sorted(set(types) - set(layers))
    if unknown:
        raise CaffeFormatError(f"types names layers that are not in layers: {unknown}")
    out = bytearray()
    if name:
        out += _len_field(NET_NAME, name.encode("utf-8"))
    for lname, blobs in layers.items():
        if not isinstance(lname, str) or not lname:
            raise CaffeFormatError(f"layer name {lname!r} must be a non-empty string")
        body = _len_field(LAYER_NAME, lname.encode("utf-8"))
        if lname in types:
            body += _len_field(LAYER_TYPE, types[lname].encode("utf-8"))
        for i, b in enumerate(blobs):
            body += _len_field(LAYER_BLOBS, _blob_bytes(b, f"layer {lname!r} blob {i}"))
        out += _len_field(NET_LAYER, body)
    return bytes(out)


def write_caffemodel(path: str | os.PathLike, layers: Mapping[str, Sequence[np.ndarray]], *, name: str = "",
                     types: Mapping[str, str] | None = None) -> Path:
    """Write ``layers`` as a ``.caffemodel`` Caffe can load with ``--weights``, atomically.

    Parameters
    ----------
    layers : dict of str to list of ndarray
        Blobs per layer name, in Caffe's order (W, b[, W mask, b mask]); written as float32 with their shapes
        (bool masks as 0/1). Caffe matches layers by name and checks each blob's shape.
    name : str
        The net's name (optional; Caffe does not check it).
    types : dict of str to str, optional
        Layer types to record (e.g. ``{"ip1": "CInnerProduct"}``); Caffe ignores them when loading weights.
    """
    data = caffemodel_bytes(layers, name=name, types=types)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_solverstate(path: str | os.PathLike, iteration: int, history: Sequence[np.ndarray], *,
                      learned_net: str = "", current_step: int = 0) -> Path:
    """Write a ``SolverState`` (SGD: ``history`` is the momentum of every learnable blob, in net order)."""
    for v, label in ((iteration, "iteration"), (current_step, "current_step")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= _INT32[1]:
            raise CaffeFormatError(f"{label}={v!r} must be an int in 0 .. 2**31 - 1")
    out = bytearray(_key(STATE_ITER, VARINT) + _varint(int(iteration)))
    if learned_net:
        out += _len_field(STATE_LEARNED_NET, learned_net.encode("utf-8"))
    for i, h in enumerate(history):
        out += _len_field(STATE_HISTORY, _blob_bytes(h, f"history blob {i}"))
    out += _key(STATE_CURRENT_STEP, VARINT) + _varint(int(current_step))
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(out))
    return path


# ---- refdns parameters ------------------------------------------------------------------------------------

def _legacy4(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1,) * (4 - len(shape)) + tuple(shape)


def _fit(blob: np.ndarray, expected: tuple[int, ...], what: str) -> np.ndarray:
    """``blob`` in ``expected`` shape; a legacy 4-axis blob (1, 1, out, in) is taken, as Caffe takes it."""
    if blob.shape == tuple(expected):
        return blob
    if blob.ndim == 4 and len(expected) <= 4 and blob.shape == _legacy4(tuple(expected)):
        return blob.reshape(expected)
    raise CaffeFormatError(f"{what} has shape {blob.shape}, expected {tuple(expected)} (Caffe layout: dense "
                           "(out, in), conv (F, C, K, K), bias (out,))")


def caffemodel_to_params(
    layers: Mapping[str, Sequence[np.ndarray]],
    spec_layer_names: Sequence[str],
    shapes: Mapping[str, tuple[int, ...]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """refdns parameters (and masks) from :func:`read_caffemodel`'s layers.

    Parameters
    ----------
    layers : dict of str to list of ndarray
        From :func:`read_caffemodel`.
    spec_layer_names : sequence of str
        The net's parametric layers (``spec.layer_names``), e.g. ip1, ip2, ip3 for LeNet-300-100.
    shapes : dict of str to tuple
        ``spec.param_shapes()``: ``"<layer>.weight"`` and ``"<layer>.bias"`` to their shapes.

    Returns
    -------
    params : dict of str to ndarray, float32
        ``"<layer>.weight"``, ``"<layer>.bias"``: the raw W and b (pruned entries keep their values).
    masks : dict of str to ndarray, bool, or None
        The same keys, from the DNS mask blobs; None when no layer has them (a plain Caffe model). A layer
        without mask blobs in a file where others have them gets all-ones masks (Caffe's mask filler).

    Raises
    ------
    CaffeFormatError
        A layer of the net is missing, a layer with blobs is not in the net, a layer has other than 2 or 4
        blobs, a blob has the wrong shape, or a mask blob holds values other than 0 and 1.
    """
    names = list(spec_layer_names)
    missing = [n for n in names if n not in layers]
    extra = [n for n in layers if n not in names]
    if missing or extra:
        raise CaffeFormatError(f"layers missing from the file: {missing}; layers with blobs the net does not "
                               f"have: {extra}; the net's layers are {names}")
    params: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    with_masks = False
    for n in names:
        blobs = layers[n]
        if len(blobs) not in (2, 4):
            raise CaffeFormatError(f"layer {n!r} has {len(blobs)} blobs, expected 2 (W, b) or 4 (W, b, "
                                   "W mask, b mask)")
        for i, kind in enumerate(("weight", "bias")):
            key = f"{n}.{kind}"
            if key not in shapes:
                raise CaffeFormatError(f"shapes has no entry {key!r}")
            params[key] = np.array(_fit(blobs[i], shapes[key], f"layer {n!r} {kind}"), dtype=np.float32)
            if len(blobs) == 4:
                with_masks = True
                m = _fit(blobs[i + 2], shapes[key], f"layer {n!r} {kind} mask")
                if not np.isin(m, (0.0, 1.0)).all():
                    bad = tuple(int(j) for j in np.argwhere(~np.isin(m, (0.0, 1.0)))[0])
                    raise CaffeFormatError(f"layer {n!r} {kind} mask holds {m[bad]!r} at {bad}; masks are "
                                           "0 or 1")
                masks[key] = m == 1.0
            else:
                masks[key] = np.ones(shapes[key], dtype=bool)
    return params, (masks if with_masks else None)


def params_to_caffemodel(
    params: Mapping[str, np.ndarray],
    spec_layer_names: Sequence[str],
    masks: Mapping[str, np.ndarray] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Inverse of :func:`caffemodel_to_params`: ``{layer: [W, b]}``, with masks ``[W, b, W mask, b mask]``."""
    out: dict[str, list[np.ndarray]] = {}
    for n in spec_layer_names:
        w, b = params[f"{n}.weight"], params[f"{n}.bias"]
        blobs = [np.asarray(w, np.float32), np.asarray(b, np.float32)]
        if masks is not None:
            for key, p in ((f"{n}.weight", w), (f"{n}.bias", b)):
                m = np.asarray(masks[key])
                if m.shape != np.shape(p):
                    raise CaffeFormatError(f"mask {key} has shape {m.shape}, its parameter {np.shape(p)}")
                blobs.append(m.astype(bool).astype(np.float32))
        out[n] = blobs
    return out
