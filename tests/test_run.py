"""The home of a run: its config, the batch stream and its plain-value state, a fresh run's streams."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refdns.config import from_dict
from refdns.errors import ConfigError
from refdns.nets import get_spec
from refdns.run import BatchStream, TrainConfig, generator_from_state, new_run


def test_batch_stream_visits_every_example_once_per_epoch(rng):
    s = BatchStream(10, 3, rng=rng)
    seen = np.concatenate([s.next_indices() for _ in range(10)])  # 30 indices = 3 epochs
    for epoch in range(3):
        assert sorted(seen[10 * epoch : 10 * (epoch + 1)]) == list(range(10))


def test_batch_larger_than_data_is_refused(rng):
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(5, 8, rng=rng)


def test_unknown_config_key_is_refused():
    with pytest.raises(ConfigError, match="iteratons"):
        from_dict(TrainConfig, {"iteratons": 10})


@pytest.mark.parametrize("taken", [0, 1, 3, 4, 7])  # 10 examples, batch 3: mid-epoch, at and across wraps
def test_batch_stream_restored_mid_epoch_continues_identically(rng, taken):
    s = BatchStream(10, 3, rng=rng)
    for _ in range(taken):
        s.next_indices()
    state = s.state_dict()
    # what a checkpoint stores: plain arrays, ints and a JSON-ready generator state
    assert state["perm"].dtype == np.int64 and state["perm"].shape == (10,)
    assert all(type(state[k]) is int for k in ("pos", "n", "batch_size"))
    state["bit_generator"] = json.loads(json.dumps(state["bit_generator"]))
    r = BatchStream.from_state(state)
    for _ in range(12):  # four more epochs, each drawing a new order from the restored generator
        assert np.array_equal(s.next_indices(), r.next_indices())
    assert s.pos == r.pos and np.array_equal(s.perm, r.perm)
    assert s.rng.bit_generator.state == r.rng.bit_generator.state


def test_batch_stream_state_is_a_copy(rng):
    s = BatchStream(10, 3, rng=rng)
    state = s.state_dict()
    state["perm"][:] = 0
    r = BatchStream.from_state(s.state_dict())
    r.perm[:] = 0
    assert sorted(s.perm) == list(range(10))


def _state(**changes):
    state = BatchStream(10, 3, rng=np.random.default_rng(0)).state_dict()
    return state | changes


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (_state(perm=np.zeros(10, np.int64)), "permutation"),
        (_state(perm=np.arange(10, dtype=np.int32)), "int64"),
        (_state(n=11), "permutation"),
        (_state(pos=11), "pos=11"),
        (_state(batch_size=0), "batch_size=0"),
        (_state(pos=2.0), "pos=2.0 must be an int"),
        (_state(extra=1), "keys"),
        (_state(bit_generator={"bit_generator": "NoSuchBitGen"}), "NoSuchBitGen"),
        (_state(bit_generator="PCG64"), "state dict"),
    ],
)
def test_batch_stream_refuses_a_state_it_cannot_be(state, match):
    with pytest.raises(ValueError, match=match):
        BatchStream.from_state(state)


def test_generator_from_state_continues_the_stream():
    g = np.random.default_rng(7)
    g.random(3)
    h = generator_from_state(json.loads(json.dumps(g.bit_generator.state)))
    assert np.array_equal(g.random(5), h.random(5))


def test_new_run_splits_the_seed_into_independent_streams():
    spec = get_spec("lenet-300-100")
    a = new_run(spec, 100, TrainConfig(batch_size=10), seed=3)
    b = new_run(spec, 100, TrainConfig(batch_size=10), seed=3, params=a.params)
    assert np.array_equal(a.data.perm, b.data.perm)
    assert a.mask_rng.bit_generator.state == b.mask_rng.bit_generator.state
    assert all(m.all() for m in a.masks.values()) and all(not v.any() for v in a.velocity.values())
    assert a.iteration == 0 and a.seed == 3 and a.history.mask_updates == []


def test_caffe_order_reads_the_file_in_order_and_wraps():
    """Caffe's LMDB data layer: consecutive batches in file order, the last one running into the first."""
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    s = BatchStream(10, 4, rng=rng, order="caffe")
    got = [s.next_indices().tolist() for _ in range(4)]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5]]
    assert rng.bit_generator.state == before  # the order draws nothing


def test_caffe_order_mnist_batch_938_wraps_like_caffe():
    s = BatchStream(60_000, 64, rng=np.random.default_rng(0), order="caffe")
    for _ in range(937):
        s.next_indices()
    idx = s.next_indices()
    assert idx.tolist() == list(range(59_968, 60_000)) + list(range(32))


@pytest.mark.parametrize("taken", [0, 2, 3, 5])
def test_caffe_order_restored_continues_identically(taken):
    s = BatchStream(10, 4, rng=np.random.default_rng(1), order="caffe")
    for _ in range(taken):
        s.next_indices()
    state = s.state_dict()
    assert state["order"] == "caffe"
    r = BatchStream.from_state(state)
    for _ in range(7):
        assert np.array_equal(s.next_indices(), r.next_indices())


def test_state_without_order_is_a_shuffled_stream():
    state = BatchStream(10, 3, rng=np.random.default_rng(0)).state_dict()
    del state["order"]
    assert BatchStream.from_state(state).order == "shuffled"


def test_new_run_takes_the_data_order_from_the_config():
    spec = get_spec("lenet-300-100")
    run = new_run(spec, 100, TrainConfig(batch_size=10, data_order="caffe"), seed=3)
    assert run.data.order == "caffe" and np.array_equal(run.data.next_indices(), np.arange(10))
    assert new_run(spec, 100, TrainConfig(batch_size=10), seed=3).data.order == "shuffled"


@pytest.mark.parametrize(
    ("state", "match"),
    [
        (_state(order="lmdb"), "order='lmdb'"),
        (_state(order="caffe"), "file order"),  # a shuffled perm cannot be a caffe-order epoch
    ],
)
def test_batch_stream_refuses_a_bad_order(state, match):
    with pytest.raises(ValueError, match=match):
        BatchStream.from_state(state)


def test_unknown_data_order_is_refused():
    with pytest.raises(ValueError, match="data_order"):
        TrainConfig(data_order="sorted")
