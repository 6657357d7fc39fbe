"""Caffe .caffemodel / .solverstate reading and writing: round trips, the committed tiny files, the authors'
released models (when REFDNS_CAFFE_MODELS points at them), and damaged files refused with CaffeFormatError.

Regenerate the committed files with ``python -m tests.caffe.test_proto`` (from the repository root).
"""

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refdns.caffe.proto import (
    caffemodel_bytes,
    caffemodel_to_params,
    params_to_caffemodel,
    read_caffemodel,
    read_solverstate,
    write_caffemodel,
    write_solverstate,
)
from refdns.errors import CaffeFormatError, RefdnsError

DATA = Path(__file__).resolve().parents[1] / "data"
TINY_MODEL = DATA / "tiny_dns.caffemodel"
TINY_STATE = DATA / "tiny_dns.solverstate"

# A made-up net small enough to cut at every byte: a DNS conv layer, a DNS dense layer, a plain dense layer.
TINY_NAMES = ("conv1", "ip1", "ip2")
TINY_SHAPES = {"conv1.weight": (2, 1, 3, 3), "conv1.bias": (2,), "ip1.weight": (3, 8), "ip1.bias": (3,),
               "ip2.weight": (2, 3), "ip2.bias": (2,)}
TINY_DNS = ("conv1", "ip1")


def _values(shape, k):
    """Exactly representable, version-independent values (multiples of 1/16), some of them exactly 0."""
    n = int(np.prod(shape))
    return (((np.arange(n) * (7 + 2 * k) + 3 * k) % 29 - 14) / 16).astype(np.float32).reshape(shape)


def tiny_params():
    params = {key: _values(shape, k) for k, (key, shape) in enumerate(TINY_SHAPES.items())}
    masks = {key: np.abs(p) > 0.4 for key, p in params.items()}
    return params, masks


def tiny_layers():
    params, masks = tiny_params()
    layers = params_to_caffemodel(params, TINY_NAMES, masks)
    layers["ip2"] = layers["ip2"][:2]  # a plain layer: W and b only
    return layers


TINY_TYPES = {"conv1": "CConvolution", "ip1": "CInnerProduct", "ip2": "InnerProduct"}


def tiny_history():
    return [_values(b.shape, 10 + i) / 8 for i, b in enumerate(sum(tiny_layers().values(), []))]


def _write_tiny(folder: Path) -> None:
    write_caffemodel(folder / TINY_MODEL.name, tiny_layers(), name="tiny-dns", types=TINY_TYPES)
    write_solverstate(folder / TINY_STATE.name, 1234, tiny_history(), learned_net="tiny_dns.caffemodel",
                      current_step=0)


def _load(path):
    """What an import does: read, then map onto the net."""
    return caffemodel_to_params(read_caffemodel(path), TINY_NAMES, TINY_SHAPES)


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# ---- round trips and the committed files ----------------------------------------------------------------

def test_error_is_a_value_error_and_a_refdns_error():
    assert issubclass(CaffeFormatError, ValueError) and issubclass(CaffeFormatError, RefdnsError)


finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(blobs=st.lists(hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
                                 elements=finite32), min_size=1, max_size=4),
       n_layers=st.integers(1, 3))
def test_round_trip_is_bitwise(tmp_path_factory, blobs, n_layers):
    layers = {f"layer{i}": [b * (i + 1) if i else b for b in blobs] for i in range(n_layers)}
    with np.errstate(over="ignore"):
        if not all(np.isfinite(b).all() for v in layers.values() for b in v):
            return
    path = tmp_path_factory.mktemp("rt") / "m.caffemodel"
    write_caffemodel(path, layers, name="net")
    back = read_caffemodel(path)
    assert list(back) == list(layers)
    for k in layers:
        assert len(back[k]) == len(layers[k])
        for a, b in zip(back[k], layers[k], strict=True):
            assert _same(a, b)  # -0.0, subnormals and every bit preserved


def test_committed_tiny_files_are_what_the_writer_writes(tmp_path):
    _write_tiny(tmp_path)
    assert (tmp_path / TINY_MODEL.name).read_bytes() == TINY_MODEL.read_bytes()
    assert (tmp_path / TINY_STATE.name).read_bytes() == TINY_STATE.read_bytes()
    assert TINY_MODEL.stat().st_size < 4096 and TINY_STATE.stat().st_size < 4096


def test_tiny_model_reads_back_to_params_and_masks():
    layers = read_caffemodel(TINY_MODEL)
    assert list(layers) == list(TINY_NAMES)
    assert [len(v) for v in layers.values()] == [4, 4, 2]
    params, masks = _load(TINY_MODEL)
    want_p, want_m = tiny_params()
    assert list(params) == list(TINY_SHAPES)
    for key in TINY_SHAPES:
        assert _same(params[key], want_p[key])
        assert masks[key].dtype == bool
        if key.split(".")[0] in TINY_DNS:
            assert np.array_equal(masks[key], want_m[key])
        else:
            assert masks[key].all()  # a plain layer in a DNS file: Caffe's all-ones mask filler
    assert not all(m.all() for m in masks.values())


def test_tiny_solverstate_reads_back():
    iteration, history = read_solverstate(TINY_STATE)
    assert iteration == 1234
    want = tiny_history()
    assert len(history) == len(want) == 10
    for a, b in zip(history, want, strict=True):
        assert _same(a, b)


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, {"a": [np.ones(2, np.float32)]})
    before = path.read_bytes()
    with pytest.raises(CaffeFormatError, match="NaN"):
        write_caffemodel(path, {"a": [np.array([np.nan], np.float32)]})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.caffemodel"]


def test_plain_model_has_no_masks():
    params, _ = tiny_params()
    layers = params_to_caffemodel(params, TINY_NAMES)
    got, masks = caffemodel_to_params(layers, TINY_NAMES, TINY_SHAPES)
    assert masks is None
    assert all(_same(got[k], params[k]) for k in params)


def test_bool_masks_are_written_as_0_1_floats(tmp_path):
    write_caffemodel(tmp_path / "m.caffemodel", {"a": [np.array([True, False])]})
    assert read_caffemodel(tmp_path / "m.caffemodel")["a"][0].tolist() == [1.0, 0.0]


# ---- the authors' released models --------------------------------------------------------------------------

def _released(name: str) -> Path:
    root = os.environ.get("REFDNS_CAFFE_MODELS")
    if not root or not Path(root).exists():
        pytest.skip("set REFDNS_CAFFE_MODELS to a folder holding the DNS authors' released .caffemodel files "
                    "(git show them from github yiwenguo/Dynamic-Network-Surgery, models/)")
    hits = sorted(Path(root).rglob(name))
    if not hits:
        pytest.skip(f"{name} not under REFDNS_CAFFE_MODELS={root}")
    return hits[0]


# (file, net, non-zero parameters per layer (W, b), test errors out of 10,000 as refdns evaluates them)
RELEASED = [
    ("caffe_lenet300100_original.caffemodel", "lenet-300-100", None, 228),
    ("caffe_lenet300100_sparse.caffemodel", "lenet-300-100",
     {"ip1": (4351, 30), "ip2": (552, 6), "ip3": (49, 0)}, 199),
    ("caffe_lenet5_original.caffemodel", "lenet-5", None, 91),
    ("caffe_lenet5_sparse.caffemodel", "lenet-5",
     {"conv1": (72, 2), "conv2": (770, 9), "ip1": (2920, 3), "ip2": (215, 2)}, 91),
]


@pytest.mark.parametrize("name, net, nonzero, _errors", RELEASED)
def test_released_models_read(name, net, nonzero, _errors):
    from refdns.nets import get_spec

    spec = get_spec(net)
    layers = read_caffemodel(_released(name))
    assert list(layers) == list(spec.layer_names)
    params, masks = caffemodel_to_params(layers, spec.layer_names, spec.param_shapes())
    # the released files hold W * T and b * T only: no mask blobs, pruned entries are stored as 0
    assert masks is None
    for layer in spec.layer_names:
        w, b = params[f"{layer}.weight"], params[f"{layer}.bias"]
        if nonzero is None:
            assert np.count_nonzero(w) == w.size
        else:
            assert (np.count_nonzero(w), np.count_nonzero(b)) == nonzero[layer]


@pytest.mark.slow
@pytest.mark.parametrize("name, net, _nonzero, errors", RELEASED)
def test_released_models_evaluate_to_the_papers_errors(mnist, name, net, _nonzero, errors):
    """Guo et al. 2016, Table 1: LeNet-300-100 2.28% -> 1.99%, LeNet-5 0.91% -> 0.91%."""
    from refdns.nets import error_rate, get_spec

    spec = get_spec(net)
    params, _ = caffemodel_to_params(read_caffemodel(_released(name)), spec.layer_names, spec.param_shapes())
    _, _, x_test, y_test = mnist
    assert round(error_rate(spec, params, x_test, y_test) * len(y_test)) == errors


# ---- files written by the authors' Caffe -------------------------------------------------------------------

# Made by the fork as built by the peers/caffe-dns build.sh (issue 16): in tests/data,
# `caffe train --solver=caffe_tiny_solver.prototxt` (2 iterations of a DummyData net, random_seed 1; the same
# bytes on every run). ip1 is a DNS CInnerProduct (4 blobs), ip2 a plain InnerProduct (2 blobs); the layers
# also carry every field Caffe writes (bottom, top, param, phase, fillers), which the reader skips.
CAFFE_MODEL = DATA / "caffe_tiny_iter_2.caffemodel"
CAFFE_STATE = DATA / "caffe_tiny_iter_2.solverstate"
CAFFE_NAMES = ("ip1", "ip2")
CAFFE_SHAPES = {"ip1.weight": (3, 5), "ip1.bias": (3,), "ip2.weight": (2, 3), "ip2.bias": (2,)}


def test_caffe_written_model_reads(tmp_path):
    layers = read_caffemodel(CAFFE_MODEL)
    assert list(layers) == list(CAFFE_NAMES)  # data, relu and loss hold no blobs
    assert [b.shape for b in layers["ip1"]] == [(3, 5), (3,), (3, 5), (3,)]
    assert [b.shape for b in layers["ip2"]] == [(2, 3), (2,)]
    params, masks = caffemodel_to_params(layers, CAFFE_NAMES, CAFFE_SHAPES)
    assert 0 < masks["ip1.weight"].sum() < 15  # the first forward pruned some of ip1 (c_rate 0)
    assert masks["ip2.weight"].all() and masks["ip2.bias"].all()
    # what the writer makes of it, Caffe's extra fields dropped, reads back the same
    write_caffemodel(tmp_path / "m.caffemodel", layers)
    again = read_caffemodel(tmp_path / "m.caffemodel")
    assert all(_same(a, b) for k in layers for a, b in zip(layers[k], again[k], strict=True))


def test_caffe_written_solverstate_reads():
    iteration, history = read_solverstate(CAFFE_STATE)
    assert iteration == 2
    assert [h.shape for h in history] == [(3, 5), (3,), (3, 5), (3,), (2, 3), (2,)]
    _, masks = caffemodel_to_params(read_caffemodel(CAFFE_MODEL), CAFFE_NAMES, CAFFE_SHAPES)
    # the mask blobs' history is weight decay's momentum: non-zero exactly where the mask is 1
    assert np.array_equal(history[2] != 0, masks["ip1.weight"])
    assert np.array_equal(history[3] != 0, masks["ip1.bias"])


@pytest.mark.parametrize("path", [CAFFE_MODEL, CAFFE_STATE], ids=lambda p: p.suffix)
def test_every_truncation_of_the_caffe_written_files_is_refused(tmp_path, path):
    """Except one that loses nothing: a cut just before the trailing loss layer, which holds no blobs."""
    data = path.read_bytes()
    cut_path = tmp_path / path.name
    harmless = []
    for cut in range(len(data)):
        cut_path.write_bytes(data[:cut])
        if path.suffix == ".solverstate":
            with pytest.raises(CaffeFormatError):
                read_solverstate(cut_path)
            continue
        try:
            layers = read_caffemodel(cut_path)
            caffemodel_to_params(layers, CAFFE_NAMES, CAFFE_SHAPES)
        except CaffeFormatError:
            continue
        full = read_caffemodel(path)
        assert all(_same(a, b) for k in full for a, b in zip(full[k], layers[k], strict=True))
        harmless.append(cut)
    assert len(harmless) == (path.suffix == ".caffemodel")


# ---- damaged files -----------------------------------------------------------------------------------------

def _top_level_boundaries(data: bytes) -> set[int]:
    """Offsets where a top-level field ends (a cut there leaves a valid, shorter protobuf message)."""
    out, pos = {0}, 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        length, pos = _varint(data, pos)
        assert key & 7 == 2
        pos += length
        out.add(pos)
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos


def test_every_truncation_of_the_tiny_model_is_refused(tmp_path):
    data = TINY_MODEL.read_bytes()
    boundaries = _top_level_boundaries(data)
    path = tmp_path / "cut.caffemodel"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        if cut in boundaries:
            # protobuf cannot see a cut between two layers: the layer that is missing is what gives it away
            with pytest.raises(CaffeFormatError, match="missing|no layer"):
                _load(path)
        else:
            with pytest.raises(CaffeFormatError):
                read_caffemodel(path)


def test_every_truncation_of_the_tiny_solverstate_is_refused(tmp_path):
    data = TINY_STATE.read_bytes()
    path = tmp_path / "cut.solverstate"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(CaffeFormatError):
            read_solverstate(path)


def _float_slots(layers) -> int:
    return sum(b.size for v in layers.values() for b in v)


def test_byte_flips_are_refused_or_change_one_value_only(tmp_path):
    """Protobuf has no checksum: a flip inside a float's bytes gives another valid float. Every other flip
    (tags, lengths, dims, names, mask values) must be refused; none may raise anything else or hang."""
    data = TINY_MODEL.read_bytes()
    params0, masks0 = _load(TINY_MODEL)
    path = tmp_path / "flip.caffemodel"
    refused = accepted = 0
    for pos in range(len(data)):
        for flip in (0x01, 0x10, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[pos] ^= flip
            path.write_bytes(bytes(damaged))
            try:
                params, masks = _load(path)
            except CaffeFormatError:
                refused += 1
                continue
            accepted += 1
            changed = sum(int(np.sum(params[k].view(np.uint32) != params0[k].view(np.uint32)))
                          for k in params0)
            changed += sum(int(np.sum(masks[k] != masks0[k])) for k in masks0)
            assert changed <= 1, (pos, flip)
    assert refused > 0 and accepted > 0


def _blob_msg(payload: bytes) -> bytes:
    """A NetParameter with one layer "L" holding one blob with ``payload``."""
    return _field(100, _field(1, b"L") + _field(7, payload))


def _field(num: int, payload: bytes) -> bytes:
    return _vi(num << 3 | 2) + _vi(len(payload)) + payload


def _vi(v: int) -> bytes:
    out = bytearray()
    while True:
        if v >> 7:
            out.append(v & 0x7F | 0x80)
            v >>= 7
        else:
            out.append(v)
            return bytes(out)


def _floats(*xs) -> bytes:
    return struct.pack(f"<{len(xs)}f", *xs)


def _shape(*dims) -> bytes:
    return _field(7, _field(1, b"".join(_vi(d) for d in dims)))


OK_BLOB = _field(5, _floats(1.0, 2.0)) + _shape(2)


@pytest.mark.parametrize("content, match", [
    (b"", "no layer"),
    (_vi(100 << 3 | 2) + b"\x80" * 10 + b"\x01", "longer than 10 bytes"),
    (_vi(100 << 3 | 2) + b"\xff" * 9 + b"\x7f", "overflows 64 bits"),
    (b"\x80\x80", "truncated varint"),
    (_vi(100 << 3 | 2) + _vi(50) + b"\x0a", "runs past"),
    (_vi(100 << 3 | 0) + b"\x01", "layer has wire type 0"),
    (_vi(100 << 3 | 3), "group"),
    (_vi(100 << 3 | 6), "invalid wire type"),
    (b"\x02\x00", "field number 0"),
    (_field(100, _vi(1 << 3 | 0) + b"\x01" + _field(7, OK_BLOB)), "name has wire type 0"),
    (_field(100, _field(1, b"\xff\xfe") + _field(7, OK_BLOB)), "UTF-8"),
    (_field(100, _field(7, OK_BLOB)), "no name"),
    (_blob_msg(_field(5, _floats(1.0, 2.0, 3.0)) + _shape(2)), r"shape \(2,\) holds 2 values but the"),
    (_blob_msg(_field(5, _floats(1.0, 2.0)) + _shape(2, 2)), "holds 4 values"),
    (_blob_msg(_field(5, _floats(1.0, 2.0))), r"shape \(\) holds 1"),
    (_blob_msg(_field(5, _floats(1.0, float("nan"))) + _shape(2)), "NaN or Inf"),
    (_blob_msg(_field(5, _floats(float("-inf"), 0.0)) + _shape(2)), "NaN or Inf"),
    (_blob_msg(_field(8, struct.pack("<2d", 1.0, 1e300)) + _shape(2)), "beyond float32"),
    (_blob_msg(_field(5, b"\x00" * 7) + _shape(2)), "not a multiple of 4"),
    (_blob_msg(_field(5, _floats(1.0)) + _field(7, _field(1, b"\xff" * 9 + b"\x01"))), "negative dim"),
    (_blob_msg(_field(5, _floats(1.0)) + _shape(*[1] * 33)), "more than Caffe's 32"),
    (_blob_msg(_field(5, _floats(1.0)) + _vi(1 << 3) + b"\x01" + _shape(1)), "both a shape and legacy"),
    (_blob_msg(_field(5, _floats(1.0)) + _field(8, struct.pack("<d", 1.0)) + _shape(1)), "both data and"),
    (_blob_msg(_vi(5 << 3 | 0) + b"\x01" + _shape(0)), "data has wire type 0"),
    (_field(100, _field(1, b"L") + _field(7, OK_BLOB)) * 2, "two layers named 'L'"),
    (_field(2, _field(1, b"\x0a\x01x")), "V0 layer"),
    (_field(100, _field(1, b"L") + _field(7, OK_BLOB)) + _field(2, _field(4, b"M") + _field(6, OK_BLOB)),
     "mixes layer"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_malformed_models_are_refused(tmp_path, content, match):
    """Each damage is named: the test id is the message it must produce."""
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CaffeFormatError, match=match):
        read_caffemodel(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CaffeFormatError, match="no such file"):
        read_caffemodel(tmp_path / "nope.caffemodel")
    with pytest.raises(CaffeFormatError, match="no such file"):
        read_solverstate(tmp_path / "nope.solverstate")


def test_legacy_encodings_are_read(tmp_path):
    """V1 layers (NetParameter field 2), legacy 4-axis dims, unpacked floats and double_data, as old Caffe
    versions wrote them; a legacy (1, 1, out, in) weight fits a (out, in) layer as it does in Caffe."""
    legacy_w = b"".join(_vi(f << 3) + _vi(v) for f, v in ((1, 1), (2, 1), (3, 2), (4, 3)))
    unpacked = b"".join(_vi(5 << 3 | 5) + _floats(v) for v in range(6))
    legacy_b = b"".join(_vi(f << 3) + _vi(v) for f, v in ((1, 1), (2, 1), (3, 1), (4, 2)))
    doubles = _field(8, struct.pack("<2d", 0.5, -0.25))
    v1 = (_field(4, b"ip") + _vi(5 << 3) + _vi(14)  # type INNER_PRODUCT
          + _field(6, unpacked + legacy_w) + _field(6, doubles + legacy_b))
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(_field(1, b"old") + _field(2, v1) + _field(2, _field(4, b"relu")))
    layers = read_caffemodel(path)
    assert list(layers) == ["ip"]
    w, b = layers["ip"]
    assert w.shape == (1, 1, 2, 3) and w.ravel().tolist() == list(range(6))
    assert b.shape == (1, 1, 1, 2) and b.ravel().tolist() == [0.5, -0.25]
    params, masks = caffemodel_to_params(layers, ["ip"], {"ip.weight": (2, 3), "ip.bias": (2,)})
    assert params["ip.weight"].shape == (2, 3) and params["ip.bias"].shape == (2,) and masks is None


def test_packed_chunks_concatenate(tmp_path):
    """protobuf allows one packed field in several pieces; they concatenate."""
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_blob_msg(_field(5, _floats(1.0)) + _field(5, _floats(2.0, 3.0)) + _shape(3)))
    assert read_caffemodel(path)["L"][0].tolist() == [1.0, 2.0, 3.0]


def test_unknown_fields_are_skipped(tmp_path):
    """Layers carry many fields (bottom, top, params, phase, ...) that hold no weights."""
    junk = (_field(3, b"data") + _vi(10 << 3) + b"\x01" + _vi(11 << 3 | 5) + b"\0\0\0\0"
            + _vi(12 << 3 | 1) + b"\0" * 8)
    layer = junk + _field(1, b"L") + _field(7, OK_BLOB + _field(6, b""))  # blob field 6: diff, skipped
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_field(3, b"input") + _field(100, layer))
    assert read_caffemodel(path)["L"][0].tolist() == [1.0, 2.0]


# ---- mapping onto a net ------------------------------------------------------------------------------------

def test_missing_and_extra_layers_are_named():
    layers = tiny_layers()
    del layers["ip1"]
    layers["fc9"] = [np.zeros(1, np.float32)] * 2
    with pytest.raises(CaffeFormatError, match=r"missing from the file: \['ip1'\].*not have: \['fc9'\]"):
        caffemodel_to_params(layers, TINY_NAMES, TINY_SHAPES)


def test_wrong_blob_count_is_refused():
    layers = tiny_layers()
    layers["ip1"] = layers["ip1"][:3]
    with pytest.raises(CaffeFormatError, match="'ip1' has 3 blobs"):
        caffemodel_to_params(layers, TINY_NAMES, TINY_SHAPES)


@pytest.mark.parametrize("index, kind", [(0, "weight"), (1, "bias"), (2, "weight mask"), (3, "bias mask")])
def test_wrong_shapes_are_refused(index, kind):
    layers = tiny_layers()
    layers["conv1"][index] = layers["conv1"][index].reshape(-1)[:-1] if layers["conv1"][index].size > 2 \
        else np.zeros(5, np.float32)
    with pytest.raises(CaffeFormatError, match=f"'conv1' {kind} has shape"):
        caffemodel_to_params(layers, TINY_NAMES, TINY_SHAPES)


def test_masks_must_be_0_or_1():
    layers = tiny_layers()
    layers["ip1"][2] = layers["ip1"][2].copy()
    layers["ip1"][2][1, 2] = 0.5
    with pytest.raises(CaffeFormatError, match=r"'ip1' weight mask holds .*0\.5.* at \(1, 2\)"):
        caffemodel_to_params(layers, TINY_NAMES, TINY_SHAPES)


# ---- solver state ------------------------------------------------------------------------------------------

def test_solverstate_round_trip(tmp_path):
    hist = [np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, np.zeros(0, np.float32)]
    write_solverstate(tmp_path / "s.solverstate", 25000, hist, learned_net="x.caffemodel", current_step=3)
    it, back = read_solverstate(tmp_path / "s.solverstate")
    assert it == 25000 and all(_same(a, b) for a, b in zip(back, hist, strict=True))


@pytest.mark.parametrize("content, match", [
    (b"", "no iter"),
    (b"\x08\x05", "no current_step"),
    (b"\x08" + b"\xff" * 9 + b"\x01" + b"\x20\x00", "iter=-1 is negative"),
    (b"\x08" + _vi(1 << 40) + b"\x20\x00", "does not fit an int32"),
    (b"\x0d\0\0\0\0\x20\x00", "iter has wire type 5"),
    (b"\x08\x05" + _field(3, _field(5, _floats(1.0)) + _shape(2)) + b"\x20\x00", "history blob 0"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_malformed_solverstates_are_refused(tmp_path, content, match):
    path = tmp_path / "bad.solverstate"
    path.write_bytes(content)
    with pytest.raises(CaffeFormatError, match=match):
        read_solverstate(path)


@pytest.mark.parametrize("iteration", [-1, 2**31, 1.5, True])
def test_solverstate_writer_refuses_bad_iterations(tmp_path, iteration):
    with pytest.raises(CaffeFormatError, match="iteration"):
        write_solverstate(tmp_path / "s.solverstate", iteration, [])


def test_writer_refuses_what_caffe_could_not_read():
    with pytest.raises(CaffeFormatError, match="non-empty string"):
        caffemodel_bytes({"": [np.zeros(1)]})
    with pytest.raises(CaffeFormatError, match="not numeric"):
        caffemodel_bytes({"a": [np.array(["x"])]})
    with pytest.raises(CaffeFormatError, match="beyond float32"):
        caffemodel_bytes({"a": [np.array([1e300])]})
    with pytest.raises(CaffeFormatError, match="not in layers"):
        caffemodel_bytes({"a": [np.zeros(1)]}, types={"b": "InnerProduct"})


if __name__ == "__main__":
    DATA.mkdir(exist_ok=True)
    _write_tiny(DATA)
    print(f"wrote {TINY_MODEL} ({TINY_MODEL.stat().st_size} bytes) and {TINY_STATE} "
          f"({TINY_STATE.stat().st_size} bytes)")


def test_export_caffemodel_round_trips_through_import_with_masks(tmp_path):
    """`refdns export --format caffemodel` writes what the DNS fork's `caffe train --weights` loads (W, b and
    the mask blobs per layer); `refdns import` of it gives back the same raw weights and masks."""
    from refdns import checkpoint
    from refdns.cli import main
    from refdns.nets import get_spec
    from refdns.run import TrainConfig, new_run

    spec = get_spec("lenet-300-100")
    state = new_run(spec, 64, TrainConfig(batch_size=8), seed=3)
    rng = np.random.default_rng(0)
    state.masks = {k: rng.random(m.shape) < 0.3 for k, m in state.masks.items()}
    src = checkpoint.save(tmp_path / "src.h5", state, method="dns", config={"net": spec.name})
    assert main(["export", str(src), "-o", str(tmp_path / "net.caffemodel")]) == 0
    layers = read_caffemodel(tmp_path / "net.caffemodel")
    assert [len(layers[n]) for n in spec.layer_names] == [4, 4, 4]  # W, b, W mask, b mask
    assert main(["import", str(tmp_path / "net.caffemodel"), "--net", spec.name, "-o", str(tmp_path / "back.h5")]) == 0
    back = checkpoint.load(tmp_path / "back.h5").state
    for k in state.params:
        assert np.array_equal(back.params[k], state.params[k]) and np.array_equal(back.masks[k], state.masks[k])
