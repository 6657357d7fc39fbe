"""Sweeps: grid expansion, refusals, resuming, and the same table from a process pool and a real Dask cluster."""

import json

import pytest

from refdns import sweep as sw
from refdns.errors import ConfigError
from refdns.runfile import loads

TINY = """
base = "lenet-300-100-dns"
seeds = "0-1"
[dense]
iterations = 30
test_interval = 0
[train]
iterations = 20
test_interval = 0
[grid]
"method.layers.*.c_rate" = [0.0, 1.0]
"""


def test_grid_expands_to_every_combination_and_star_means_every_layer():
    s = sw.parse(loads(TINY + '"train.sgd.base_lr" = [0.01, 0.02, 0.03]\n'))
    points = s.points()
    assert len(points) == 6 and s.seeds == (0, 1)
    run = s.point_run(points[-1])
    assert {lc["c_rate"] for lc in run["method"]["layers"].values()} == {1.0}
    assert run["train"]["sgd"]["base_lr"] == 0.03 and run["threads"] == 1
    assert s.shares_dense


@pytest.mark.parametrize("extra, key", [
    ('"method.layers.ip9.c_rate" = [1.0]\n', "ip9"),
    ('"train.sgd.momentum" = [2.0]\n', "momentum"),
    ('"train.colour" = [1]\n', "train.colour"),
    ('"train.iterations" = []\n', "grid.train.iterations"),
])
def test_bad_grids_are_refused_before_anything_runs(extra, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        sw.parse(loads(TINY + extra))
    with pytest.raises(ConfigError, match="grid"):
        sw.parse(loads(TINY.split("[grid]")[0]))


class Counting(sw.LocalPool):
    def __init__(self, workers):
        super().__init__(workers)
        self.calls = []

    def submit(self, fn, *args):
        self.calls.append(fn.__name__)
        return super().submit(fn, *args)


def _run(engine, out, data_dir):
    try:
        return sw.run_sweep(sw.parse(loads(TINY)), out, engine, data_dir=str(data_dir))
    finally:
        engine.close()


def test_a_tiny_sweep_gives_the_same_table_on_a_process_pool_and_on_dask(mnist, tmp_path):
    distributed = pytest.importorskip("dask.distributed", reason="the sweep extra (dask[distributed])")
    from tests.conftest import require_data

    data_dir = require_data()
    pool = _run(sw.LocalPool(2), tmp_path / "pool", data_dir)
    assert len(pool["points"]) == 2 and all(len(p["rows"]) == 2 for p in pool["points"])
    assert len(list((tmp_path / "pool" / "points").glob("*.json"))) == 4
    assert len(list((tmp_path / "pool" / "dense").glob("*.h5"))) == 2  # one dense net per seed, shared

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        dask = _run(sw.DaskEngine(cluster.scheduler_address), tmp_path / "dask", data_dir)
    assert dask == pool
    assert (tmp_path / "dask" / "table.md").read_text() == (tmp_path / "pool" / "table.md").read_text()
    assert json.loads((tmp_path / "dask" / "table.json").read_text()) == pool
    assert "the paper's protocol" in (tmp_path / "pool" / "table.md").read_text()

    # resumable: a finished point is not rerun; a lost one is, and the table comes out the same
    next(iter(sorted((tmp_path / "pool" / "points").glob("*.json")))).unlink()
    engine = Counting(1)
    again = _run(engine, tmp_path / "pool", data_dir)
    assert engine.calls == ["run_point"] and again == pool


def _rows(sweep, order=None):
    """Hand-made result rows for every point and seed (the figures do not matter here)."""
    layers = {"ip1": 0.1, "ip2": 0.1, "ip3": 0.5}
    out = []
    for point in sweep.points():
        for seed in sweep.seeds:
            row = {"test_error": 0.02 + seed / 100, "validation_error": None, "dense_test_error": 0.02,
                   "kept_fraction": 0.1, "layers": layers, "seed": seed, "select_on": "test"}
            out.append((point, seed, row | ({"order": order} if order is not None else {})))
    return out


def test_the_sweep_table_states_the_data_order_or_that_the_grid_varies_it():
    """Issue 16: data order moves DNS's result, so the sweep table says it: from the sweep's run file
    (rows written before the order was recorded included), or per point when the grid varies it."""
    caffe = TINY.replace("test_interval = 0\n[grid]", 'test_interval = 0\ndata_order = "caffe"\n[grid]')
    s = sw.parse(loads(caffe))
    result = sw.table(s, _rows(s))
    assert result["order"] == {"data_order": "caffe", "dense_data_order": "shuffled"}
    text = sw.format_table(result)
    assert "data order caffe (the training set in file order" in text
    assert "the dense phase's: shuffled" in text
    assert all(p["statistics"]["order"]["data_order"] == "caffe" for p in result["points"])

    s = sw.parse(loads(TINY + '"train.data_order" = ["shuffled", "caffe"]\n'))
    result = sw.table(s, _rows(s))
    assert result["order"] is None and "data order and draws: per point (grid)" in sw.format_table(result)
    orders = [p["statistics"]["order"]["data_order"] for p in result["points"]]
    assert sorted(set(orders)) == ["caffe", "shuffled"]
