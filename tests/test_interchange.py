"""`.npz` import/export (Caffe layouts, --mask-from-zeros, named refusals) and `refdns eval --json`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refdns import checkpoint, cli
from refdns.errors import InterchangeError
from refdns.interchange import read_npz, write_npz
from refdns.nets import get_spec, init_params
from refdns.prune.base import all_ones_masks
from refdns.run import TrainConfig, new_run

SPEC = get_spec("lenet-300-100")


@pytest.fixture
def pruned(rng):
    """LeNet-300-100 weights with about a third of each weight tensor set to exactly 0."""
    params = init_params(SPEC, rng=rng)
    params["ip1.bias"] += np.float32(0.1)
    for k, w in params.items():
        if k.endswith(".weight"):
            w[rng.random(w.shape) < 0.3] = 0
    return params


def test_import_export_round_trip_with_mask_from_zeros(pruned, tmp_path, capsys):
    src = write_npz(tmp_path / "w.npz", pruned)
    ck_path = tmp_path / "imported.h5"
    assert (
        cli.main(["import", str(src), "--net", "lenet-300-100", "-o", str(ck_path), "--mask-from-zeros"]) == 0
    )
    st = checkpoint.load(ck_path).state
    for k, w in pruned.items():
        assert np.array_equal(st.params[k], w) and st.params[k].dtype == np.float32
        assert np.array_equal(st.masks[k], w != 0)
    assert not st.masks["ip2.weight"].all() and st.masks["ip1.bias"].all()
    out = tmp_path / "back.npz"
    assert cli.main(["export", str(ck_path), "-o", str(out)]) == 0
    back = read_npz(out, SPEC)
    assert all(np.array_equal(back[k], pruned[k]) for k in pruned)
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(SPEC.param_shapes())


def test_export_writes_w_times_mask_unless_raw(pruned, tmp_path):
    masks = all_ones_masks(pruned)
    masks["ip3.weight"][0, :5] = False
    st = new_run(SPEC, 100, TrainConfig(batch_size=10), seed=0, params=pruned, masks=masks)
    ck = checkpoint.save(tmp_path / "c.h5", st)
    assert cli.main(["export", str(ck), "-o", str(tmp_path / "eff.npz")]) == 0
    assert cli.main(["export", str(ck), "-o", str(tmp_path / "raw.npz"), "--raw"]) == 0
    eff, raw = read_npz(tmp_path / "eff.npz", SPEC), read_npz(tmp_path / "raw.npz", SPEC)
    assert np.all(eff["ip3.weight"][0, :5] == 0)
    assert np.array_equal(raw["ip3.weight"], pruned["ip3.weight"])


def _bad(params, tmp_path, **changes):
    d = dict(params) | changes
    d = {k: v for k, v in d.items() if v is not None}
    path = tmp_path / "bad.npz"
    np.savez(path, **d)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ip2.bias": None}, r"missing \['ip2.bias'\]"),
        ({"ip4.weight": np.zeros(3, np.float32)}, r"unexpected \['ip4.weight'\]"),
        ({"ip1.weight": np.zeros((784, 300), np.float32)}, "shape"),
        ({"ip3.bias": np.zeros(10, np.int32)}, "dtype"),
        ({"ip3.bias": np.full(10, np.nan, np.float32)}, "NaN or Inf"),
        ({"ip3.bias": np.full(10, 1e300)}, "beyond float32"),
    ],
)
def test_bad_weight_files_are_refused_by_name(pruned, tmp_path, change, message):
    with pytest.raises(InterchangeError, match=message):
        read_npz(_bad(pruned, tmp_path, **change), SPEC)


def test_pickled_and_non_npz_files_are_refused(pruned, tmp_path, capsys):
    path = _bad(pruned, tmp_path, **{"ip3.bias": np.array([object()] * 10, dtype=object)})
    with pytest.raises(InterchangeError, match="pickled"):
        read_npz(path, SPEC)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(InterchangeError, match="not a readable"):
        read_npz(junk, SPEC)
    assert cli.main(["import", str(junk), "--net", "lenet-300-100", "-o", str(tmp_path / "x.h5")]) == 2
    assert "refdns: error:" in capsys.readouterr().err


def test_eval_prints_test_error_and_kept_counts(mnist, pruned, tmp_path, capsys):
    from tests.conftest import data_dir

    src = write_npz(tmp_path / "w.npz", pruned)
    ck = tmp_path / "c.h5"
    assert cli.main(["import", str(src), "--net", "lenet-300-100", "-o", str(ck), "--mask-from-zeros"]) == 0
    js = tmp_path / "eval.json"
    assert cli.main(["eval", str(ck), "--json", str(js), "--data-dir", str(data_dir()), "--no-download"]) == 0
    out = capsys.readouterr().out
    res = json.loads(js.read_text())
    kept_w = int(np.count_nonzero(pruned["ip1.weight"]))
    assert res["layers"]["ip1"]["kept_weights"] == kept_w
    assert res["layers"]["ip1"]["total"] == 300 * 784 + 300
    assert res["total"] == SPEC.n_params()
    assert res["kept"] == sum(int(np.count_nonzero(w)) for w in pruned.values())  # zero biases are masked too
    from refdns.nets import error_rate

    eff = {k: w * (w != 0) for k, w in pruned.items()}
    assert res["test_error"] == pytest.approx(error_rate(SPEC, eff, mnist[2], mnist[3]), abs=0)
    assert 0.0 <= res["test_error"] <= 1.0
    assert f"test error {100 * res['test_error']:.2f}%" in out and "| ip1 |" in out
