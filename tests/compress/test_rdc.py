"""The .rdc file: exact round trips, and refusal of every truncation, flipped byte and forged payload."""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.compress.quantize import QuantizedLayer, dequantize_net, quantize_net, quantize_weights
from refdns.compress.rdc import (
    FORMAT_VERSION,
    MAGIC,
    encode_layer,
    encode_net,
    pack_rdc,
    read_rdc,
    read_rdc_layers,
    write_rdc,
)
from refdns.errors import CompressError, ConfigError, RdcError
from refdns.nets import get_spec, init_params


def random_layer(rng, name, shape, density, bits, *, kind=None, bias_density=1.0):
    w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    mask = rng.random(shape) < density
    codebook, idx = quantize_weights(w, mask, bits, max_iter=20)
    bias = (rng.standard_normal(shape[0]) * 0.1).astype(np.float32)
    kind = kind or ("dense" if len(shape) == 2 else "conv")
    return QuantizedLayer(name, kind, bits, codebook, idx, mask, bias, rng.random(shape[0]) < bias_density)


def assert_same_layers(a, b):
    assert [la.name for la in a] == [lb.name for lb in b]
    for la, lb in zip(a, b, strict=True):
        assert (la.kind, la.bits, la.shape) == (lb.kind, lb.bits, lb.shape)
        assert np.array_equal(la.codebook.view(np.uint32), lb.codebook.view(np.uint32))
        assert np.array_equal(la.indices, lb.indices)
        assert np.array_equal(la.mask, lb.mask)
        assert np.array_equal(la.bias.view(np.uint32), lb.bias.view(np.uint32))
        assert np.array_equal(la.bias_mask, lb.bias_mask)


def assert_round_trip(tmp_path, net_name, layers, **kw):
    path = write_rdc(tmp_path / "net.rdc", net_name, layers, **kw)
    name, back, _ = read_rdc_layers(path)
    assert name == net_name
    assert_same_layers(layers, back)
    expected_params, expected_masks = dequantize_net(layers)
    name, params, masks = read_rdc(path)
    assert set(params) == set(expected_params) and set(masks) == set(expected_masks)
    for k in expected_params:  # bit for bit, -0.0 and all
        assert params[k].dtype == np.float32 and masks[k].dtype == np.bool_
        assert np.array_equal(params[k].view(np.uint32), expected_params[k].view(np.uint32)), k
        assert np.array_equal(masks[k], expected_masks[k]), k
    return path


@given(st.data())
def test_random_masked_layers_round_trip_exactly(tmp_path_factory, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    layers = []
    for i in range(data.draw(st.integers(1, 3))):
        conv = data.draw(st.booleans())
        shape = (data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4)), 3, 3) if conv else \
            (data.draw(st.integers(1, 12)), data.draw(st.integers(1, 300)))
        density = data.draw(st.sampled_from([0.0, 0.002, 0.05, 0.5, 1.0]))
        bits = data.draw(st.integers(1, 8))
        layers.append(random_layer(rng, f"l{i}", shape, density, bits, bias_density=0.7))
    index_bits = {la.name: data.draw(st.integers(1, 9)) for la in layers}
    assert_round_trip(tmp_path_factory.mktemp("rdc"), data.draw(st.text(max_size=12)), layers,
                      index_bits=index_bits)


def test_edge_layers_round_trip(tmp_path, rng):
    """Empty, single weight at the very end, everything kept, gaps of thousands (fillers), -0.0 centroid."""
    empty = random_layer(rng, "empty", (4, 50), 0.0, 5)
    last = np.zeros((3, 7000), dtype=bool)
    last[-1, -1] = True
    bias = np.array([1.0, -0.0, np.float32(3e-41)], dtype=np.float32)  # a subnormal too
    single = QuantizedLayer("single", "dense", 1, np.array([-0.0], dtype=np.float32), np.zeros(1, np.int32),
                            last, bias, np.ones(3, bool))
    full = random_layer(rng, "full", (5, 2, 3, 3), 1.0, 8)
    assert empty.n_clusters == 0 and full.mask.all()
    path = assert_round_trip(tmp_path, "edges", [empty, single, full], index_bits={"single": 2})
    assert read_rdc(path)[1]["single.weight"][-1, -1].tobytes() == np.float32(-0.0).tobytes()


@pytest.mark.parametrize(("net", "density"),
                         [("lenet-300-100", 0.08), ("lenet-5", 0.1), ("lenet-300-100", 1.0)])
def test_lenet_shaped_nets_round_trip(tmp_path, rng, net, density):
    spec = get_spec(net)
    params = init_params(spec, rng=rng)
    masks = {}
    for k, v in params.items():
        params[k] = (rng.standard_normal(v.shape) * 0.05).astype(np.float32)
        masks[k] = (rng.random(v.shape) < density) if v.ndim > 1 else (rng.random(v.shape) < 0.9)
    layers = quantize_net(spec, params, masks, max_iter=30)
    path = assert_round_trip(tmp_path, net, layers)
    name, q_params, q_masks = read_rdc(path)
    assert name == net
    for k in params:
        assert np.array_equal(q_masks[k], masks[k])
    for op in spec.layers:
        assert q_params[f"{op.name}.bias"].tobytes() == params[f"{op.name}.bias"].tobytes()


def test_index_width_changes_the_size_not_the_net(tmp_path, rng):
    layers = [random_layer(rng, "ip1", (30, 200), 0.02, 5)]
    sizes = []
    for k in (1, 3, 5, 12):
        path = assert_round_trip(tmp_path, "w", layers, index_bits={"ip1": k})
        sizes.append(path.stat().st_size)
        assert read_rdc_layers(path)[2] == {"ip1": k}
    assert len(set(sizes)) > 1


def small_file(tmp_path, rng):
    layers = [random_layer(rng, "c1", (2, 1, 3, 3), 0.6, 2), random_layer(rng, "f1", (3, 18), 0.3, 2)]
    return write_rdc(tmp_path / "small.rdc", "tiny", layers)


def test_every_truncation_is_refused(tmp_path, rng):
    path = small_file(tmp_path, rng)
    raw = path.read_bytes()
    assert len(raw) < 600  # two 257- and 33-byte code-length tables are most of it
    bad = tmp_path / "cut.rdc"
    for n in range(len(raw)):
        bad.write_bytes(raw[:n])
        with pytest.raises(RdcError):
            read_rdc(bad)


def test_every_flipped_byte_is_refused(tmp_path, rng):
    path = small_file(tmp_path, rng)
    raw = path.read_bytes()
    bad = tmp_path / "flip.rdc"
    flips = np.random.default_rng(7).integers(1, 256, size=len(raw))
    for i in range(len(raw)):
        damaged = bytearray(raw)
        damaged[i] ^= int(flips[i])
        bad.write_bytes(bytes(damaged))
        with pytest.raises(RdcError):
            read_rdc(bad)


def test_appended_bytes_are_refused(tmp_path, rng):
    raw = small_file(tmp_path, rng).read_bytes()
    bad = tmp_path / "long.rdc"
    bad.write_bytes(raw + b"\0")
    with pytest.raises(RdcError, match="payload"):
        read_rdc(bad)


def test_other_files_are_refused_by_name(tmp_path, rng):
    raw = small_file(tmp_path, rng).read_bytes()
    bad = tmp_path / "x.rdc"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + raw[8:])
    with pytest.raises(RdcError, match="not an .rdc file"):
        read_rdc(bad)
    bad.write_bytes(MAGIC + struct.pack("<I", FORMAT_VERSION + 1) + raw[12:])
    with pytest.raises(RdcError, match="version"):
        read_rdc(bad)
    with pytest.raises(RdcError, match="cannot read"):
        read_rdc(tmp_path / "missing.rdc")


def reseal(tmp_path, net_name, encoded):
    """A forged file: damaged content under a valid checksum (the parser must still refuse it)."""
    path = tmp_path / "forged.rdc"
    path.write_bytes(pack_rdc(net_name, encoded))
    return path


@pytest.mark.parametrize(("change", "match"), [
    (lambda e: {"n_kept": e.n_kept + 1}, "relative indices give|symbols"),
    (lambda e: {"n_entries": e.n_entries - 1}, "left over"),
    (lambda e: {"index_nbits": e.index_nbits + 8}, "needs|bits"),
    (lambda e: {"pos_nbits": 2**60}, "needs"),
    (lambda e: {"n_kept": 2**40}, "kept weights in a layer"),
    (lambda e: {"codebook": np.array([np.nan, 1.0], dtype=np.float32)}, "NaN"),
    (lambda e: {"index_lengths": np.ones(e.codebook.size, dtype=np.uint8)}, "Kraft"),
    (lambda e: {"bias": np.zeros(e.shape[0] + 1, dtype=np.float32)}, "biases for"),
    (lambda e: {"bias": np.full(e.shape[0], np.inf, dtype=np.float32)}, "NaN or Inf"),
    (lambda e: {"kind": "conv"}, "cannot have 2 dimensions"),
    (lambda e: {"shape": (65536, 65536)}, "over"),
    (lambda e: {"bits": 1}, "out of range"),
    (lambda e: {"index_bits": 17}, "out of range"),
])
def test_forged_payloads_are_refused(tmp_path, rng, change, match):
    layer = random_layer(rng, "ip1", (20, 60), 0.1, 2)
    assert layer.n_clusters == 4
    e = encode_layer(layer, 4)
    path = reseal(tmp_path, "forged", [dataclasses.replace(e, **change(e))])
    with pytest.raises(RdcError, match=match):
        read_rdc(path)


def test_forged_structure_is_refused(tmp_path, rng):
    e = encode_layer(random_layer(rng, "ip1", (4, 9), 0.5, 2), 3)
    body = pack_rdc("n", [e])[:-32]
    payload = body[20:]
    for forged, match in [
        (payload + b"\0", "follow the last layer"),
        (payload[:3] + struct.pack("<I", 2**31) + payload[7:], "layers cannot be right"),
        (payload[:3] + struct.pack("<I", 0) + payload[7:], "layers cannot be right"),
        (payload[:7] + struct.pack("<H", 500) + payload[9:], "needs|UTF-8|bytes"),
        (pack_rdc("n", [e, e])[20:-32], "repeat"),
    ]:
        path = tmp_path / "forged.rdc"
        head = MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(forged)) + forged
        path.write_bytes(head + hashlib.sha256(head).digest())
        with pytest.raises(RdcError, match=match):
            read_rdc(path)


def test_write_refuses_bad_input_and_keeps_the_old_file(tmp_path, rng):
    path = small_file(tmp_path, rng)
    before = path.read_bytes()
    layer = random_layer(rng, "ip1", (4, 9), 0.5, 2)
    for args, kw, err in [
        (("n", []), {}, CompressError),
        (("n", [layer, layer]), {}, CompressError),
        (("n", [layer]), {"index_bits": {"ip9": 3}}, ConfigError),
        (("n", [layer]), {"index_bits": {"ip1": 0}}, ConfigError),
        (("n", [layer]), {"index_bits": {"ip1": 17}}, ConfigError),
        (("n", [(1, 2)]), {}, CompressError),
        ((7, [layer]), {}, CompressError),
    ]:
        with pytest.raises(err):
            write_rdc(path, *args, **kw)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.rdc"]  # no temporary left behind


def test_encode_net_is_deterministic(rng):
    layers = [random_layer(rng, "ip1", (10, 40), 0.2, 3)]
    assert encode_net("x", layers)[0] == encode_net("x", list(layers))[0]
