"""safetensors (plain and torch.nn.utils.prune's layout) and .caffemodel import/export, dispatched on content,
and `refdns diff`."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from refdns import checkpoint, cli
from refdns.caffe.proto import params_to_caffemodel, write_caffemodel
from refdns.interchange import detect_format, read_weights, safetensors_metadata, write_npz, write_safetensors
from refdns.nets import get_spec
from refdns.run import TrainConfig, new_run

NET = "lenet-300-100"


@pytest.fixture
def pruned_ckpt(tmp_path, rng):
    spec = get_spec(NET)
    state = new_run(spec, 100, TrainConfig(batch_size=10), seed=3)
    for m in state.masks.values():
        m[...] = rng.random(m.shape) < 0.4
    path = tmp_path / "pruned.h5"
    checkpoint.save(path, state, method="import", config={"net": NET})
    return path, state


def _import(capsys, src, out, *extra):
    assert cli.main(["import", str(src), "--net", NET, "-o", str(out), *extra]) == 0, capsys.readouterr().err
    return checkpoint.load(out).state


def test_safetensors_plain_round_trip(tmp_path, pruned_ckpt, capsys):
    ck, state = pruned_ckpt
    st = tmp_path / "w.safetensors"
    assert cli.main(["export", str(ck), "-o", str(st)]) == 0
    assert detect_format(st) == "safetensors" and safetensors_metadata(st)["layout"] == "plain"
    back = _import(capsys, st, tmp_path / "back.h5", "--mask-from-zeros")
    for k in state.params:
        assert np.array_equal(back.params[k], state.params[k] * state.masks[k])
        assert np.array_equal(back.masks[k], (state.params[k] * state.masks[k]) != 0)
    assert "mask from the zero pattern" in capsys.readouterr().out


def test_torch_prune_layout_round_trip_keeps_raw_w_and_masks(tmp_path, pruned_ckpt, capsys):
    ck, state = pruned_ckpt
    st = tmp_path / "tp.safetensors"
    assert cli.main(["export", str(ck), "-o", str(st), "--torch-prune"]) == 0
    from safetensors.numpy import load_file

    keys = set(load_file(st))
    assert {"ip1.weight_orig", "ip1.weight_mask", "ip3.bias_orig", "ip3.bias_mask"} <= keys
    back = _import(capsys, st, tmp_path / "back.h5")
    assert "torch-prune" in capsys.readouterr().out
    for k in state.params:
        assert np.array_equal(back.params[k], state.params[k]) and np.array_equal(
            back.masks[k], state.masks[k]
        )
    assert cli.main(["diff", str(ck), str(tmp_path / "back.h5"), "--json", str(tmp_path / "d.json")]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["identical"] and all(p["jaccard"] == 1.0 and p["max_abs"] == 0.0 for p in d["params"])


def test_dispatch_is_on_content_not_suffix(tmp_path, pruned_ckpt, capsys):
    _, state = pruned_ckpt
    spec = get_spec(NET)
    fake_npz = tmp_path / "really-safetensors.npz"
    write_safetensors(fake_npz, state.params)
    fake_st = tmp_path / "really-npz.safetensors"
    write_npz(fake_st, state.params)
    shutil.move(fake_st, tmp_path / "really-npz.bin")
    assert read_weights(fake_npz, spec).format == "safetensors"
    assert read_weights(tmp_path / "really-npz.bin", spec).format == "npz"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    assert cli.main(["import", str(junk), "--net", NET, "-o", str(tmp_path / "o.h5")]) == 2
    assert "not a weight file" in capsys.readouterr().err


def test_torch_prune_layout_refusals(tmp_path, pruned_ckpt, capsys):
    _, state = pruned_ckpt
    from safetensors.numpy import save_file

    t = {k + "_orig": v for k, v in state.params.items()} | {
        k + "_mask": m.astype(np.float32) for k, m in state.masks.items()
    }
    bad = dict(t)
    del bad["ip2.weight_mask"]
    save_file(bad, tmp_path / "nomask.st")
    bad = dict(t)
    bad["ip2.weight_mask"] = bad["ip2.weight_mask"] * 2
    save_file(bad, tmp_path / "two.st")
    save_file({k: v for k, v in t.items() if not k.startswith("ip3")}, tmp_path / "short.st")
    for name, msg in (("nomask.st", "without its pair"), ("two.st", "only 0 and 1"), ("short.st", "missing")):
        assert cli.main(["import", str(tmp_path / name), "--net", NET, "-o", str(tmp_path / "o.h5")]) == 2
        assert msg in capsys.readouterr().err
    cut = tmp_path / "cut.st"
    save_file(t, cut)
    cut.write_bytes(cut.read_bytes()[:-100])
    assert cli.main(["import", str(cut), "--net", NET, "-o", str(tmp_path / "o.h5")]) == 2
    assert "safetensors" in capsys.readouterr().err


def test_caffemodel_import_takes_dns_mask_blobs_or_zeros(tmp_path, pruned_ckpt, capsys):
    _, state = pruned_ckpt
    spec = get_spec(NET)
    with_masks = tmp_path / "dns.caffemodel"
    write_caffemodel(with_masks, params_to_caffemodel(state.params, spec.layer_names, state.masks))
    back = _import(capsys, with_masks, tmp_path / "a.h5", "--mask-from-zeros")  # the blobs win
    assert "caffe-dns" in capsys.readouterr().out
    for k in state.params:
        assert np.array_equal(back.masks[k], state.masks[k]) and np.array_equal(
            back.params[k], state.params[k]
        )
    eff = {k: state.params[k] * state.masks[k] for k in state.params}
    plain = tmp_path / "plain.bin"
    write_caffemodel(plain, params_to_caffemodel(eff, spec.layer_names))
    assert _import(capsys, plain, tmp_path / "b.h5").masks["ip1.weight"].all()
    zeros = _import(capsys, plain, tmp_path / "c.h5", "--mask-from-zeros")
    assert np.array_equal(zeros.masks["ip1.weight"], eff["ip1.weight"] != 0)


def test_diff_reports_agreement_and_jaccard(tmp_path, pruned_ckpt, capsys):
    ck, state = pruned_ckpt
    other = {k: m.copy() for k, m in state.masks.items()}
    other["ip3.weight"][0, :10] = ~other["ip3.weight"][0, :10]
    eff = {k: state.params[k] * other[k] for k in state.params}
    w = tmp_path / "other.npz"
    write_npz(w, eff)
    assert cli.main(["diff", str(ck), str(w)]) == 2
    assert "--net" in capsys.readouterr().err
    assert cli.main(["diff", str(ck), str(w), "--net", NET, "--json", str(tmp_path / "d.json")]) == 0
    out = capsys.readouterr().out
    assert "| ip3.weight |" in out and "they differ" in out
    rows = {p["key"]: p for p in json.loads((tmp_path / "d.json").read_text())["params"]}
    a, b = state.masks["ip3.weight"], eff["ip3.weight"] != 0
    assert rows["ip3.weight"]["agreement"] == pytest.approx(np.mean(a == b))
    assert rows["ip3.weight"]["jaccard"] == pytest.approx((a & b).sum() / (a | b).sum())
    assert rows["ip1.weight"]["jaccard"] == 1.0 and rows["ip1.weight"]["max_abs"] == 0.0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed (optional)")
def test_a_model_pruned_by_torch_nn_utils_prune_imports_with_its_masks(tmp_path, capsys):
    import torch
    from safetensors.numpy import save_file
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.ip1, model.ip2, model.ip3 = (
        torch.nn.Linear(784, 300),
        torch.nn.Linear(300, 100),
        torch.nn.Linear(100, 10),
    )
    for layer in (model.ip1, model.ip2, model.ip3):
        prune.l1_unstructured(layer, "weight", amount=0.7)
    prune.random_unstructured(model.ip1, "bias", amount=0.5)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    assert "ip1.weight_orig" in sd and "ip2.bias" in sd
    path = tmp_path / "torch_pruned.safetensors"
    save_file(sd, path)
    back = _import(capsys, path, tmp_path / "t.h5")
    assert np.array_equal(back.masks["ip1.weight"], model.ip1.weight_mask.numpy() == 1)
    assert np.array_equal(back.masks["ip1.bias"], model.ip1.bias_mask.numpy() == 1)
    assert back.masks["ip2.bias"].all()
    eff = back.params["ip2.weight"] * back.masks["ip2.weight"]
    assert np.array_equal(eff, model.ip2.weight.detach().numpy())  # W * T is the module's weight
