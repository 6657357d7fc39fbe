"""refdns compress / decompress / infer on .rdc files, run as a user would (subprocesses)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refdns import checkpoint
from refdns.compress import dequantize_net, quantize_net, read_rdc, write_rdc
from refdns.compress.quantize import expand_bits
from refdns.errors import ConfigError
from refdns.nets import get_spec
from refdns.run import TrainConfig, new_run
from tests.test_cli import run_cli


@pytest.fixture
def pruned_ckpt(tmp_path, rng):
    """A LeNet-300-100 checkpoint with random weights and ~10 % random masks (no training needed)."""
    spec = get_spec("lenet-300-100")
    state = new_run(spec, 60_000, TrainConfig(), seed=3)
    for k, w in state.params.items():
        state.masks[k] = rng.random(w.shape) < (0.1 if k.endswith(".weight") else 0.9)
        state.params[k] = (rng.standard_normal(w.shape) * 0.05).astype(np.float32)
    path = tmp_path / "pruned.h5"
    checkpoint.save(path, state, method="test", config={"net": spec.name})
    return path, state


def test_compress_decompress_gives_the_quantised_weights_bit_for_bit(tmp_path, pruned_ckpt):
    path, state = pruned_ckpt
    rdc, back, js = tmp_path / "net.rdc", tmp_path / "back.h5", tmp_path / "c.json"
    r = run_cli("compress", str(path), "-o", str(rdc), "--bits", "fc=4,ip3=6", "--json", str(js))
    assert r.returncode == 0, r.stderr
    assert "| total |" in r.stdout and "smaller than the dense" in r.stdout
    report = json.loads(js.read_text())
    assert report["bits"] == {"ip1": 4, "ip2": 4, "ip3": 6}
    assert report["layers"][-1]["rdc_bytes"] == rdc.stat().st_size
    r = run_cli("decompress", str(rdc), "-o", str(back))
    assert r.returncode == 0, r.stderr

    # the expected net: the library's quantisation of the same checkpoint, with the same widths
    layers = quantize_net(state.spec, state.params, state.masks, bits={"ip1": 4, "ip2": 4, "ip3": 6})
    want_params, want_masks = dequantize_net(layers)
    got = checkpoint.load(back)
    assert got.method == "deep-compression" and got.state.spec.name == "lenet-300-100"
    for k in want_params:
        assert np.array_equal(got.state.params[k].view(np.uint32), want_params[k].view(np.uint32)), k
        assert np.array_equal(got.state.masks[k], want_masks[k]), k
        assert np.array_equal(got.state.masks[k], state.masks[k]), k  # the mask survives compression
    for k in want_params:  # at most 2^bits distinct kept values per layer
        if k.endswith(".weight"):
            assert np.unique(got.state.params[k][got.state.masks[k]]).size <= 1 << report["bits"][k[:3]]


def test_infer_reads_rdc_by_magic_not_suffix(tmp_path, pruned_ckpt):
    path, _ = pruned_ckpt
    rdc = tmp_path / "looks-like.h5"  # an .rdc file under a checkpoint's suffix
    assert run_cli("compress", str(path), "-o", str(rdc)).returncode == 0
    back = tmp_path / "back.h5"
    assert run_cli("decompress", str(rdc), "-o", str(back)).returncode == 0
    figures = []
    for src in (rdc, back):
        js = tmp_path / f"{src.stem}-infer.json"
        r = run_cli("infer", str(src), "--json", str(js), "--no-download")
        assert r.returncode == 0, r.stderr
        figures.append(json.loads(js.read_text()))
    assert figures[0]["method"] == figures[1]["method"] == "deep-compression"
    assert figures[0]["predictions_sha256"] == figures[1]["predictions_sha256"]


def test_rdc_of_another_net_is_refused_with_a_named_error(tmp_path, pruned_ckpt, rng):
    _, state = pruned_ckpt
    layers = quantize_net(state.spec, state.params, state.masks)
    for net_name, message in (("lenet-5", "its layers are not a lenet-5's: conv1 missing"),
                              ("alexnet", "'alexnet' is not known")):
        rdc = write_rdc(tmp_path / f"{net_name}.rdc", net_name, layers)
        read_rdc(rdc)  # a sound file as far as the format goes
        out = tmp_path / f"{net_name}.h5"
        r = run_cli("decompress", str(rdc), "-o", str(out))
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert not out.exists()


def test_damaged_rdc_and_bad_bits_give_status_2_and_write_nothing(tmp_path, pruned_ckpt):
    path, _ = pruned_ckpt
    rdc = tmp_path / "net.rdc"
    assert run_cli("compress", str(path), "-o", str(rdc)).returncode == 0
    cut = tmp_path / "cut.rdc"
    cut.write_bytes(rdc.read_bytes()[:-100])
    r = run_cli("decompress", str(cut), "-o", str(tmp_path / "x.h5"))
    assert r.returncode == 2 and "truncated" in r.stderr and not (tmp_path / "x.h5").exists()
    r = run_cli("compress", str(path), "-o", str(rdc), "--bits", "17", "--force")
    assert r.returncode == 2 and "must be <= 16" in r.stderr
    r = run_cli("compress", str(path), "-o", str(tmp_path / "y.rdc"), "--bits", "ip9=3")
    assert r.returncode == 2 and "ip9" in r.stderr and not (tmp_path / "y.rdc").exists()
    r = run_cli("compress", str(path), "-o", str(rdc))
    assert r.returncode == 2 and "exists" in r.stderr


def test_expand_bits_groups_and_layers():
    spec = get_spec("lenet-5")
    assert expand_bits(spec, None) == {"conv1": 8, "conv2": 8, "ip1": 5, "ip2": 5}
    assert expand_bits(spec, {"ip1": 3, "all": 6, "conv": 7}) == {"conv1": 7, "conv2": 7, "ip1": 3, "ip2": 6}
    assert expand_bits(spec, {"fc": 4}) == {"conv1": 8, "conv2": 8, "ip1": 4, "ip2": 4}
    with pytest.raises(ConfigError, match="neither a layer"):
        expand_bits(spec, {"ip7": 3})
    with pytest.raises(ConfigError, match=">= 1"):
        expand_bits(spec, {"conv": 0})
