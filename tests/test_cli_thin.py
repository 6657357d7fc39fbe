"""`refdns thin` as a user runs it: the thinned checkpoint is read by infer (dense and sparse), eval, export
and compress like any other, predicts exactly what its source predicts, and bad requests exit 2
before work."""

import json

import numpy as np
import pytest

from refdns import checkpoint
from refdns.nets import get_spec
from refdns.prune.base import all_ones_masks
from refdns.prune.units import remove_units, unit_layers
from refdns.run import TrainConfig, new_run
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A LeNet-300-100 (xavier init, no training needed for equality of predictions) with 120 of ip1's and
    40 of ip2's neurons removed whole, plus unstructured zeros in what is kept."""
    folder = tmp_path_factory.mktemp("thin")
    rng = np.random.default_rng(7)
    spec = get_spec("lenet-300-100")
    state = new_run(spec, 100, TrainConfig(batch_size=10), seed=0)
    units = unit_layers(spec)
    masks = remove_units(all_ones_masks(state.params), units["ip1"], rng.choice(300, 120, replace=False))
    masks = remove_units(masks, units["ip2"], rng.choice(100, 40, replace=False))
    for k in masks:
        masks[k] &= rng.random(masks[k].shape) > 0.1
    state.masks = masks
    return checkpoint.save(folder / "pruned.h5", state, method="structured")


def test_thin_then_every_reader(pruned, tmp_path):
    small, js = tmp_path / "small.h5", tmp_path / "thin.json"
    r = run_cli("thin", str(pruned), "-o", str(small), "--json", str(js))
    assert r.returncode == 0, r.stderr
    assert "| ip1 | 300 | 180 |" in r.stdout and "lenet-300-100-thin-180-60" in r.stdout
    report = json.loads(js.read_text())
    assert report["changed"] and report["params_after"] < report["params_before"]
    ck = checkpoint.load(small)
    assert ck.method == "thin" and ck.state.spec.param_shapes()["ip2.weight"] == (60, 180)

    runs = {}
    for name, path, extra in (("src", pruned, ()), ("small", small, ()), ("sparse", small, ("--sparse",))):
        out = tmp_path / f"{name}.json"
        r = run_cli("infer", str(path), "--json", str(out), *extra)
        assert r.returncode == 0, r.stderr
        runs[name] = json.loads(out.read_text())
    assert runs["small"]["predictions_sha256"] == runs["src"]["predictions_sha256"]
    assert runs["sparse"]["predictions_sha256"] == runs["src"]["predictions_sha256"]
    assert runs["small"]["net"] == "lenet-300-100-thin-180-60"

    r = run_cli("eval", str(small))
    assert r.returncode == 0, r.stderr
    assert "lenet-300-100-thin-180-60" in r.stdout
    rdc = tmp_path / "small.rdc"
    r = run_cli("compress", str(small), "-o", str(rdc))
    assert r.returncode == 0, r.stderr
    r = run_cli("infer", str(rdc))
    assert r.returncode == 0, r.stderr
    assert "lenet-300-100-thin-180-60" in r.stdout
    r = run_cli("export", str(small), "-o", str(tmp_path / "small.npz"))
    assert r.returncode == 0, r.stderr


def test_thin_refuses_to_overwrite_its_input(pruned):
    before = pruned.read_bytes()
    r = run_cli("thin", str(pruned), "-o", str(pruned), "--force")
    assert r.returncode == 2 and "same file as the input checkpoint" in r.stderr
    assert pruned.read_bytes() == before


def test_thin_of_a_net_without_a_fully_pruned_unit_says_unchanged(tmp_path):
    state = new_run(get_spec("lenet-300-100"), 100, TrainConfig(batch_size=10), seed=0)
    src = checkpoint.save(tmp_path / "dense.h5", state, method="dense")
    r = run_cli("thin", str(src), "-o", str(tmp_path / "same.h5"))
    assert r.returncode == 0, r.stderr
    assert "no fully pruned filter or neuron; the net is unchanged" in r.stdout
    again = checkpoint.load(tmp_path / "same.h5")
    assert again.state.spec is get_spec("lenet-300-100") and again.method == "dense"


def test_thin_of_a_net_with_an_empty_layer_exits_2_naming_it(tmp_path):
    spec = get_spec("lenet-300-100")
    state = new_run(spec, 100, TrainConfig(batch_size=10), seed=0)
    state.masks = remove_units(all_ones_masks(state.params), unit_layers(spec)["ip2"], range(100))
    src = checkpoint.save(tmp_path / "empty.h5", state)
    r = run_cli("thin", str(src), "-o", str(tmp_path / "x.h5"))
    assert r.returncode == 2 and "ip2" in r.stderr and "every unit" in r.stderr
    assert not (tmp_path / "x.h5").exists()
