import json

import h5py
import numpy as np
import pytest

from refdns import checkpoint
from refdns.errors import CheckpointError
from refdns.nets import get_spec
from refdns.prune.base import MaskUpdate
from refdns.run import TrainConfig, new_run
from refdns.train import train


@pytest.fixture
def small(mnist):
    return mnist[0][:3000], mnist[1][:3000]


def _run(small, iterations, seed=3, data_order="shuffled"):
    x, y = small
    cfg = TrainConfig(iterations=iterations, test_interval=0, display_interval=1, data_order=data_order)
    return train(new_run(get_spec("lenet-300-100"), len(x), cfg, seed=seed), x, y, cfg), cfg


def test_round_trip_keeps_every_array(small, tmp_path):
    state, _ = _run(small, 7)
    path = checkpoint.save(tmp_path / "a.h5", state, method="dense", config={"x": 1})
    ck = checkpoint.load(path)
    assert ck.method == "dense" and ck.config == {"x": 1} and ck.state.iteration == 7
    for group in ("params", "velocity", "masks"):
        a, b = getattr(state, group), getattr(ck.state, group)
        assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert ck.state.history.loss == state.history.loss
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("data_order", ["shuffled", "caffe"])
def test_resume_is_bit_exact(small, tmp_path, data_order):
    """N steps, save, load, N more == 2N straight (params, velocity, batch order)."""
    straight, cfg = _run(small, 24, data_order=data_order)
    half, _ = _run(small, 12, data_order=data_order)
    ck = checkpoint.load(checkpoint.save(tmp_path / "half.h5", half))
    assert ck.state.data.order == data_order
    x, y = small
    resumed = train(ck.state, x, y, cfg, until=24)
    for k in straight.params:
        assert np.array_equal(straight.params[k], resumed.params[k]), k
        assert np.array_equal(straight.velocity[k], resumed.velocity[k]), k
    assert straight.history.loss == resumed.history.loss


def test_checkpoint_without_data_order_loads_as_shuffled(small, tmp_path):
    """Files written before refdns had data orders hold no /rng/data order attribute: they were shuffled."""
    state, _ = _run(small, 3)
    path = checkpoint.save(tmp_path / "old.h5", state)
    with h5py.File(path, "r+") as f:
        del f["rng/data"].attrs["order"]
        f.attrs[checkpoint.MANIFEST_ATTR] = json.dumps(checkpoint._manifest(f), sort_keys=True)
    checkpoint.seal(path)
    ck = checkpoint.load(path)
    assert ck.state.data.order == "shuffled" and np.array_equal(ck.state.data.perm, state.data.perm)


def _corrupt(path, fn):
    """Edit with h5py and reseal, so the refusal comes from the content checks, not from the seal."""
    with h5py.File(path, "r+") as f:
        fn(f)
    checkpoint.seal(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.attrs.__setitem__("format", "keras"), "format"),
        (lambda f: f.attrs.__setitem__("schema_version", 99), "newer"),
        (lambda f: f.__delitem__("masks"), "masks"),
        (lambda f: f["params/ip2/weight"].__setitem__((0, 0), np.nan), "NaN"),
        (lambda f: f["masks/ip1/bias"].__setitem__(0, 7), "0 and 1"),
        (lambda f: (f["params/ip1"].__delitem__("bias"), f["params/ip1"].create_dataset("bias", data=np.zeros(3, np.float32))), "shape"),
        (lambda f: (f["params/ip3"].__delitem__("bias"), f["params/ip3"].create_dataset("bias", data=np.zeros(10))), "dtype"),
    ],
)
def test_damaged_checkpoints_are_refused_by_name(small, tmp_path, damage, message):
    state, _ = _run(small, 2)
    path = checkpoint.save(tmp_path / "c.h5", state)
    _corrupt(path, damage)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(path)


def test_truncated_file_is_refused(small, tmp_path):
    state, _ = _run(small, 2)
    path = checkpoint.save(tmp_path / "t.h5", state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="t.h5"):
        checkpoint.load(path)


def _with_mask_updates():
    state = new_run(get_spec("lenet-300-100"), 100, TrainConfig(batch_size=10), seed=0)
    state.history.mask_updates = [
        MaskUpdate(iteration=0, layer="ip1", pruned=900, spliced=0, kept=234_600, total=235_500),
        MaskUpdate(iteration=0, layer="ip3", pruned=10, spliced=0, kept=1000, total=1010),
        MaskUpdate(iteration=7, layer="ip1", pruned=5, spliced=12, kept=234_607, total=235_500),
    ]
    return state


def test_mask_updates_round_trip_as_typed_records_in_columns(tmp_path):
    state = _with_mask_updates()
    path = checkpoint.save(tmp_path / "m.h5", state)
    with h5py.File(path) as f:  # the on-disk schema: one column per field
        cols = f["history/mask_updates"]
        assert sorted(cols) == sorted(checkpoint.MASK_UPDATE_COLUMNS)
        assert cols["kept"].dtype == np.int64 and cols["kept"][()].tolist() == [234_600, 1000, 234_607]
        assert [v.decode() for v in cols["layer"][()]] == ["ip1", "ip3", "ip1"]
    loaded = checkpoint.load(path).state.history.mask_updates
    assert loaded == state.history.mask_updates
    assert all(type(r) is MaskUpdate and type(r.layer) is str and type(r.kept) is int for r in loaded)


def test_an_impossible_mask_update_is_refused(tmp_path):
    path = checkpoint.save(tmp_path / "m.h5", _with_mask_updates())
    _corrupt(path, lambda f: f["history/mask_updates/kept"].__setitem__(1, 5000))  # more than total
    with pytest.raises(CheckpointError, match="mask_updates.*kept=5000"):
        checkpoint.load(path)
