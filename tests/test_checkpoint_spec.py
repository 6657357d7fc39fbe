"""Checkpoints store the net's layer shapes (schema 3), so a thinned net with fewer units reloads; schema-2
files (net name only) still load; a spec that is not a member of a known net is refused by name."""

import json

import h5py
import numpy as np
import pytest

from refdns import checkpoint
from refdns.errors import CheckpointError
from refdns.netfiles import load_net, thin_checkpoint
from refdns.nets import get_spec, resolve_spec, spec_from_record, spec_record, spec_with_shapes
from refdns.nets.sequential import forward, predict
from refdns.pipeline import Data, run_training
from refdns.prune.base import all_ones_masks
from refdns.prune.structured import StructuredConfig, StructuredPruning
from refdns.prune.units import effective_params, remove_units, unit_layers
from refdns.run import TrainConfig, new_run
from refdns.thin import thin_masked
from tests.tolerances import assert_close


def _thinned_lenet5(rng):
    spec = get_spec("lenet-5")
    state = new_run(spec, 100, TrainConfig(batch_size=10), seed=0)
    units = unit_layers(spec)
    masks = all_ones_masks(state.params)
    masks = remove_units(masks, units["conv1"], rng.choice(20, 7, replace=False))
    masks = remove_units(masks, units["conv2"], rng.choice(50, 20, replace=False))
    masks = remove_units(masks, units["ip1"], rng.choice(500, 300, replace=False))
    return spec, state, masks


def test_a_thinned_lenet5_round_trips_through_a_checkpoint(rng, tmp_path):
    spec, state, masks = _thinned_lenet5(rng)
    new_spec, params, new_masks, report = thin_masked(spec, state.params, masks)
    assert [r.units_after for r in report.layers] == [13, 30, 200, 10]
    small = new_run(new_spec, 100, TrainConfig(batch_size=10), seed=3, params=params, masks=new_masks)
    ck = checkpoint.load(checkpoint.save(tmp_path / "small.h5", small, method="thin"))
    assert ck.schema_version == checkpoint.SCHEMA_VERSION == 3
    assert ck.state.spec == new_spec and ck.state.spec.name == "lenet-5-thin-13-30-200"
    assert ck.state.spec.param_shapes()["ip1.weight"] == (200, 30 * 16)
    for k in params:
        np.testing.assert_array_equal(ck.state.params[k], params[k])
        np.testing.assert_array_equal(ck.state.masks[k], new_masks[k])
    with h5py.File(tmp_path / "small.h5") as f:
        record = json.loads(f.attrs["spec"])
    assert record["family"] == "lenet-5" and record["layers"]["conv2"]["weight"] == [30, 13, 5, 5]


def test_a_schema_2_file_without_a_spec_still_loads(tmp_path):
    state = new_run(get_spec("lenet-300-100"), 100, TrainConfig(batch_size=10), seed=0)
    src = checkpoint.save(tmp_path / "new.h5", state)
    old = tmp_path / "old.h5"
    with h5py.File(src) as a, h5py.File(old, "w", userblock_size=checkpoint.USERBLOCK) as b:
        for k in a:
            a.copy(a[k], b, name=k)
        b.attrs.update({k: v for k, v in a.attrs.items() if k not in ("manifest", "spec")})
        b.attrs["schema_version"] = 2
        b.attrs["manifest"] = json.dumps(checkpoint._manifest(b), sort_keys=True)
    checkpoint.seal(old)
    ck = checkpoint.load(old)
    assert ck.schema_version == 2 and ck.state.spec is get_spec("lenet-300-100")


def test_a_schema_3_file_without_its_spec_is_refused(tmp_path):
    state = new_run(get_spec("lenet-300-100"), 100, TrainConfig(batch_size=10), seed=0)
    path = checkpoint.save(tmp_path / "a.h5", state)
    with h5py.File(path, "r+") as f:
        del f.attrs["spec"]
        f.attrs["manifest"] = json.dumps(checkpoint._manifest(f), sort_keys=True)
    checkpoint.seal(path)
    with pytest.raises(CheckpointError, match="missing root attribute 'spec'"):
        checkpoint.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["layers"]["ip2"].update(weight=[100, 250]), "do not chain"),  # ip1 gives 200
        (lambda r: r["layers"]["ip3"].update(weight=[9, 100], bias=[9]), "classes"),
        (lambda r: r["layers"]["ip1"].update(bias=[299]), "bias"),
        (lambda r: r["layers"]["ip1"].update(weight=[0, 784], bias=[0]), "unit"),
        (lambda r: r["layers"].pop("ip2"), "layers"),
        (lambda r: r.update(family="alexnet"), "alexnet"),
        (lambda r: r.update(name="lenet-300-100"), "shapes are not"),  # a known name with other shapes
    ],
)
def test_a_spec_that_is_not_a_member_of_its_family_is_refused(edit, message):
    base = get_spec("lenet-300-100")
    small = spec_with_shapes(
        "lenet-300-100",
        "lenet-300-100-thin-200-100",
        {"ip1": ((200, 784), (200,)), "ip2": ((100, 200), (100,)), "ip3": ((10, 100), (10,))},
    )
    record = spec_record(small)
    assert spec_from_record(record) == small and spec_from_record(spec_record(base)) is not None
    edit(record)
    with pytest.raises(ValueError, match=message):
        spec_from_record(record)


def test_resolve_spec_finds_the_family_from_the_name():
    shapes = {"ip1": ((20, 784), (20,)), "ip2": ((5, 20), (5,)), "ip3": ((10, 5), (10,))}
    spec = resolve_spec("lenet-300-100-thin-20-5", shapes)
    assert spec.param_shapes()["ip2.weight"] == (5, 20)
    with pytest.raises(ValueError, match="not known"):
        resolve_spec("vgg-16-thin", shapes)
    with pytest.raises(ValueError, match="its layers are not a lenet-300-100's: ip1 is"):
        resolve_spec("lenet-300-100", shapes)


def test_thinned_checkpoint_predicts_like_its_source_on_the_whole_test_set(mnist, tmp_path):
    """Train LeNet-5 briefly, remove a third of conv1/conv2 filters and ip1 neurons by Taylor scores with
    fine-tuning, save, thin the checkpoint, reload it: identical argmax on all 10,000 MNIST test images and
    logits within float32 tolerance."""
    x_train, y_train, x_test, y_test = mnist
    spec = get_spec("lenet-5")
    data = Data(x_train[:2000], y_train[:2000], x_test[:100], y_test[:100])
    dense, _ = run_training(spec, data, TrainConfig(iterations=60, test_interval=10**6), seed=1)
    third = {"conv1": 0.35, "conv2": 0.35, "ip1": 0.35}
    method = StructuredPruning(
        StructuredConfig(criterion="taylor", fractions=third, steps=2, step_iterations=10, samples=200),
        x_train[:2000],
        y_train[:2000],
    )
    state, _ = run_training(
        spec,
        data,
        TrainConfig(iterations=20, test_interval=10**6),
        seed=1,
        method=method,
        params=dense.params,
        masks=dense.masks,
    )
    src = checkpoint.save(tmp_path / "pruned.h5", state, method="structured")
    small_state, report = thin_checkpoint(src, tmp_path / "small.h5")
    assert report.changed and [r.units_after for r in report.layers] == [13, 33, 325, 10]
    small = load_net(tmp_path / "small.h5")
    assert small.spec == small_state.spec and small.method == "thin"
    eff = effective_params(state.params, state.masks)
    small_eff = effective_params(small.params, small.masks)
    assert np.array_equal(predict(small.spec, small_eff, x_test), predict(spec, eff, x_test))
    for s in range(0, len(x_test), 2500):
        assert_close(
            forward(small.spec, small_eff, x_test[s : s + 2500])[0],
            forward(spec, eff, x_test[s : s + 2500])[0],
        )
    # thinning it again finds nothing more to cut and says so
    again, report2 = thin_checkpoint(tmp_path / "small.h5", tmp_path / "again.h5")
    assert not report2.changed and "unchanged" in report2.message
    assert checkpoint.load(tmp_path / "again.h5").state.spec == small.spec
