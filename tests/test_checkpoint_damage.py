"""Checkpoints under attack: killed writers, DNS resume, and hypothesis-driven damage to real files.

Every damaged file must be refused with CheckpointError (never another exception, never a silent load of
different data). The one thing that may load is a file whose damage landed in bytes HDF5 does not use:
then the loaded run must equal the original exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refdns import checkpoint
from refdns.errors import CheckpointError
from refdns.nets import get_spec
from refdns.prune.dns import DNS, DNSConfig, DNSLayerConfig
from refdns.run import TrainConfig, new_run
from refdns.train import train

DAMAGE = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _dns(gamma=0.05):
    lc = DNSLayerConfig(c_rate=0.5, gamma=gamma, power=1.0, iter_stop=10_000)
    return DNS(DNSConfig(layers={n: lc for n in ("ip1", "ip2", "ip3")}))


def _dns_run(mnist, iterations):
    x, y = mnist[0][:2000], mnist[1][:2000]
    cfg = TrainConfig(iterations=iterations, batch_size=16, test_interval=0, display_interval=1)
    state = train(new_run(get_spec("lenet-300-100"), len(x), cfg, seed=11), x, y, cfg, method=_dns())
    return state, cfg, x, y


def _assert_same_run(a, b):
    for group in ("params", "velocity", "masks"):
        ga, gb = getattr(a, group), getattr(b, group)
        assert ga.keys() == gb.keys()
        for k in ga:
            assert ga[k].dtype == gb[k].dtype and np.array_equal(ga[k], gb[k]), (group, k)
    assert a.method_state.keys() == b.method_state.keys()
    for k in a.method_state:
        assert np.array_equal(a.method_state[k], b.method_state[k]), k
    assert a.iteration == b.iteration and a.seed == b.seed
    assert a.data.pos == b.data.pos and np.array_equal(a.data.perm, b.data.perm)
    assert a.data.rng.bit_generator.state == b.data.rng.bit_generator.state
    assert a.mask_rng.bit_generator.state == b.mask_rng.bit_generator.state
    assert a.history == b.history


def test_dns_resume_is_bit_exact(mnist, tmp_path):
    """DNS: N steps, save, load, N more == 2N straight; masks, thresholds and the Bernoulli stream too."""
    straight, cfg, x, y = _dns_run(mnist, 24)
    half, _, _, _ = _dns_run(mnist, 12)
    ck = checkpoint.load(checkpoint.save(tmp_path / "half.h5", half, method="dns"))
    resumed = train(ck.state, x, y, cfg, method=_dns(), until=24)
    _assert_same_run(straight, resumed)
    fired = {r.iteration for r in straight.history.mask_updates}
    assert 0 < len(fired) < 24, "the draws must both fire and skip for this test to pin the mask stream"
    assert any(r.pruned for r in straight.history.mask_updates)


def test_schema_1_files_still_load(mnist, tmp_path):
    state, *_ = _dns_run(mnist, 3)
    src = checkpoint.save(tmp_path / "new.h5", state, method="dns")
    path = tmp_path / "old.h5"
    with h5py.File(src) as a, h5py.File(path, "w") as b:  # what a schema-1 writer produced: no seal, no manifest
        for k in a:
            a.copy(a[k], b, name=k)
        b.attrs.update({k: v for k, v in a.attrs.items() if k != "manifest"})
        b.attrs["schema_version"] = 1
    ck = checkpoint.load(path)
    assert ck.schema_version == 1
    _assert_same_run(state, ck.state)


_WRITER = """
import sys
from refdns import checkpoint
from refdns.nets import get_spec
from refdns.run import TrainConfig, new_run
state = new_run(get_spec("lenet-5"), 100, TrainConfig(batch_size=10), seed=0)
i = int(sys.argv[2])
while True:
    i += 1
    for w in state.params.values():
        w[...] = i
    state.iteration = i
    checkpoint.save(sys.argv[1], state)
    print(i, flush=True)
"""


def test_killed_writer_leaves_a_complete_checkpoint(tmp_path):
    """SIGKILL a process that rewrites a 1.7 MB-parameter checkpoint in a loop: the file is always whole."""
    rng = np.random.default_rng(5)
    path = tmp_path / "ck.h5"
    last = 0
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(last)],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
        try:
            last = int(child.stdout.readline())  # one complete write done
            time.sleep(float(rng.uniform(0.0, 0.4)))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        written = [int(line) for line in child.stdout.read().split()]
        last = max([last, *written])
        ck = checkpoint.load(path)
        assert last <= ck.state.iteration <= last + 1
        for k, w in ck.state.params.items():
            assert np.all(w == ck.state.iteration), k  # one version, never a mix of two
        last = ck.state.iteration


@pytest.fixture(scope="module")
def real_file(mnist):
    """A real DNS checkpoint (pruned masks, thresholds, mask-update history) as bytes, plus its run."""
    state, *_ = _dns_run(mnist, 5)
    with tempfile.TemporaryDirectory() as d:
        path = checkpoint.save(Path(d) / "real.h5", state, method="dns", config={"note": "damage test"})
        return path.read_bytes(), state


def _damaged(real_file, fn) -> Path:
    data, _ = real_file
    d = tempfile.mkdtemp(prefix="refdns-damage-")
    path = Path(d) / "damaged.h5"
    path.write_bytes(data)
    if fn is not None:
        fn(path)
    return path


def _resealing(fn, reseal: bool):
    """An h5py edit, resealed (a deliberate edit: the content checks must refuse it) or not (the seal must)."""

    def run(p):
        fn(p)
        if reseal:
            checkpoint.seal(p)

    return run


def _refused(path: Path) -> str:
    try:
        checkpoint.load(path)
    except CheckpointError as e:
        return str(e)
    finally:
        path.unlink()
        path.parent.rmdir()
    raise AssertionError("a damaged checkpoint was loaded")


def _objects(data_path: Path):
    datasets, groups, attrs = [], [], []
    with h5py.File(data_path, "r") as f:
        attrs += [("/", k) for k in f.attrs]

        def visit(name, obj):
            (datasets if isinstance(obj, h5py.Dataset) else groups).append(name)
            attrs.extend((name, k) for k in obj.attrs)

        f.visititems(visit)
    return sorted(datasets), sorted(groups), sorted(attrs)


@pytest.fixture(scope="module")
def layout(real_file):
    path = _damaged(real_file, None)
    try:
        return _objects(path)
    finally:
        path.unlink()
        path.parent.rmdir()


def test_the_real_file_loads(real_file):
    path = _damaged(real_file, None)
    try:
        _assert_same_run(real_file[1], checkpoint.load(path).state)
    finally:
        path.unlink()
        path.parent.rmdir()


@DAMAGE
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files_are_refused(real_file, frac):
    n = len(real_file[0])
    cut = int(frac * n)
    path = _damaged(real_file, lambda p: p.write_bytes(real_file[0][:cut]))
    _refused(path)


@DAMAGE
@given(
    flips=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 4095), st.integers(0, 10**9), st.integers(-8192, -1)),
            st.integers(1, 255),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_flipped_bytes_are_refused_or_harmless(real_file, flips):
    data, state = real_file
    buf = bytearray(data)
    for off, x in flips:
        buf[off % len(buf)] ^= x
    path = _damaged(real_file, lambda p: p.write_bytes(bytes(buf)))
    try:
        ck = checkpoint.load(path)
    except CheckpointError:
        return
    finally:
        path.unlink()
        path.parent.rmdir()
    _assert_same_run(state, ck.state)  # the flip hit bytes HDF5 does not read


@DAMAGE
@given(data=st.data())
def test_deleted_groups_datasets_and_attributes_are_refused(real_file, layout, data):
    datasets, groups, attrs = layout
    kind = data.draw(st.sampled_from(["dataset", "group", "attr"]))
    if kind == "attr":
        obj, key = data.draw(st.sampled_from(attrs))

        def fn(p):
            with h5py.File(p, "r+") as f:
                del f[obj].attrs[key]
    else:
        name = data.draw(st.sampled_from(datasets if kind == "dataset" else groups))

        def fn(p):
            with h5py.File(p, "r+") as f:
                del f[name]

    reseal = data.draw(st.booleans())
    msg = _refused(_damaged(real_file, _resealing(fn, reseal)))
    assert reseal or "seal" in msg


@DAMAGE
@given(data=st.data())
def test_wrong_dtypes_and_shapes_are_refused(real_file, layout, data):
    name = data.draw(st.sampled_from(layout[0]))
    change = data.draw(st.sampled_from(["float64", "float16", "int32", "uint8", "drop_last", "add_axis"]))

    def fn(p):
        with h5py.File(p, "r+") as f:
            arr = f[name][()]
            if arr.dtype.kind == "O":  # the layer-name column
                arr = np.zeros(arr.shape, dtype=np.int64)
            elif change == "drop_last":
                arr = arr.reshape(-1)[:-1] if arr.size else np.zeros(1, dtype=arr.dtype)
            elif change == "add_axis":
                arr = arr[None]
            else:
                with np.errstate(over="ignore"):
                    arr = arr.astype(change)
                if arr.dtype == f[name].dtype:
                    arr = arr.astype(np.float32 if arr.dtype != np.float32 else np.float64)
            del f[name]
            f.create_dataset(name, data=arr)

    reseal = data.draw(st.booleans())
    msg = _refused(_damaged(real_file, _resealing(fn, reseal)))
    assert reseal or "seal" in msg


@DAMAGE
@given(data=st.data())
def test_nan_inf_and_non_binary_masks_are_refused(real_file, layout, data):
    floats = [n for n in layout[0] if n.startswith(("params", "optimizer", "method_state"))]
    masks = [n for n in layout[0] if n.startswith("masks")]
    use_mask = data.draw(st.booleans())
    name = data.draw(st.sampled_from(masks if use_mask else floats))
    value = data.draw(st.integers(2, 255) if use_mask else st.sampled_from([np.nan, np.inf, -np.inf]))
    pos = data.draw(st.integers(0, 10**6))

    def fn(p):
        with h5py.File(p, "r+") as f:
            arr = f[name][()]
            flat = arr.reshape(-1)
            flat[pos % flat.size] = value
            f[name][...] = flat.reshape(arr.shape)

    reseal = data.draw(st.booleans())
    msg = _refused(_damaged(real_file, _resealing(fn, reseal)))
    if not reseal:
        assert "seal" in msg
    else:
        assert ("0 and 1" in msg) if use_mask else ("NaN or Inf" in msg)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("schema_version", 4, "newer"),
        ("schema_version", 0, "not valid"),
        ("schema_version", "3", "integer"),
        ("format", "keras", "format"),
        ("format", "refdns-trace", "format"),
        ("net", "alexnet", "alexnet"),
    ],
)
def test_unknown_formats_and_newer_schemas_are_refused_by_name(real_file, key, value, message):
    def fn(p):
        with h5py.File(p, "r+") as f:
            f.attrs[key] = value

    assert message in _refused(_damaged(real_file, _resealing(fn, True)))


def test_edited_config_attribute_is_caught_by_the_manifest(real_file):
    def fn(p):
        with h5py.File(p, "r+") as f:
            f.attrs["config"] = '{"note": "edited"}'

    assert "attributes do not match" in _refused(_damaged(real_file, _resealing(fn, True)))
    assert "seal" in _refused(_damaged(real_file, fn))  # the same edit, not resealed


def test_a_file_that_is_not_a_checkpoint_is_refused_before_hdf5_reads_it(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"GIF89a" + bytes(1000))
    with pytest.raises(CheckpointError, match="not a refdns checkpoint"):
        checkpoint.load(junk)
