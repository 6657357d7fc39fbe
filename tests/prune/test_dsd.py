"""Dense-Sparse-Dense: each phase changes the mask only where it should."""

from __future__ import annotations

import numpy as np
import pytest

from refdns.errors import ConfigError
from refdns.nets import get_spec
from refdns.optim import SGDConfig
from refdns.pipeline import Data, run_dsd
from refdns.prune.dsd import DSDConfig, release
from refdns.run import TrainConfig, new_run
from refdns.train import train

SPEC = get_spec("lenet-300-100")


@pytest.fixture
def setup(rng):
    """Random images, and a dense net trained on them for a few steps (so magnitudes are not the init's)."""
    x = rng.random((96, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, size=96)
    data = Data(x[:64], y[:64], x[64:], y[64:])
    cfg = TrainConfig(iterations=5, batch_size=16, test_interval=0)
    dense = new_run(SPEC, 64, cfg, seed=0)
    train(dense, data.x_train, data.y_train, cfg)
    return data, dense


def test_phases_change_the_mask_only_where_they_should(setup):
    data, dense = setup
    before = {k: v.copy() for k, v in dense.params.items()}
    cfg = DSDConfig(sparsity=0.4, sparse_iterations=6, redense_iterations=6)
    res = run_dsd(SPEC, data, dense, cfg, SGDConfig(base_lr=0.05), seed=1, batch_size=16)
    for k, w in before.items():
        assert np.array_equal(dense.params[k], w), "the dense net is not touched"
    for name in SPEC.layer_names:
        wk, bk = f"{name}.weight", f"{name}.bias"
        m = res.sparse.masks[wk]
        # S: per layer exactly round(0.6 n) kept, and they are the largest magnitudes of the dense net
        assert m.sum() == int(np.floor(0.6 * m.size + 0.5))
        assert np.abs(before[wk][m]).min() >= np.abs(before[wk][~m]).max()
        assert res.sparse.masks[bk].all()  # biases are never pruned
        assert (res.sparse.params[wk][~m] == 0).all() and (res.sparse.velocity[wk][~m] == 0).all()
        assert not np.array_equal(res.sparse.params[wk][m], before[wk][m])  # the kept ones trained
        # D: every connection back, and the pruned ones, restarted at 0, have trained away from it
        assert res.final.masks[wk].all() and res.final.masks[bk].all()
        # (a weight into a unit that is dead on every batch gets no gradient and stays at 0)
        assert np.count_nonzero(res.final.params[wk][~m]) > 0.5 * np.count_nonzero(~m)
    assert res.sparse.iteration == 6 and res.final.iteration == 6
    assert 0 <= res.sparse_error <= 1 and 0 <= res.final_error <= 1


def test_sparse_mask_is_set_once_and_held(setup):
    data, dense = setup
    cfg = DSDConfig(sparsity=0.5, sparse_iterations=1, redense_iterations=0)
    one = run_dsd(SPEC, data, dense, cfg, SGDConfig(base_lr=0.05), seed=1, batch_size=16)
    many = run_dsd(SPEC, data, dense, DSDConfig(sparsity=0.5, sparse_iterations=8, redense_iterations=0),
                   SGDConfig(base_lr=0.05), seed=1, batch_size=16)
    for k in one.sparse.masks:
        assert np.array_equal(one.sparse.masks[k], many.sparse.masks[k]), k


def test_baseline_is_the_same_schedule_without_the_mask(setup):
    data, dense = setup
    cfg = DSDConfig(sparsity=0.3, sparse_iterations=4, redense_iterations=4, redense_lr_factor=0.1)
    base = run_dsd(SPEC, data, dense, cfg, SGDConfig(base_lr=0.05), seed=1, batch_size=16, masked=False)
    assert all(m.all() for m in base.sparse.masks.values())
    assert all(m.all() for m in base.final.masks.values())
    # with sparsity 0 DSD is the baseline, step for step
    zero = run_dsd(SPEC, data, dense, DSDConfig(sparsity=0.0, sparse_iterations=4, redense_iterations=4),
                   SGDConfig(base_lr=0.05), seed=1, batch_size=16)
    for k in base.final.params:
        assert np.array_equal(base.final.params[k], zero.final.params[k]), k


def test_release_zeroes_pruned_weights_and_opens_every_mask(rng):
    params = {"a.weight": rng.standard_normal((3, 4)).astype(np.float32)}
    masks = {"a.weight": rng.random((3, 4)) < 0.5}
    p, m = release(params, masks)
    assert m["a.weight"].all() and p["a.weight"].dtype == np.float32
    assert (p["a.weight"][~masks["a.weight"]] == 0).all()
    assert np.array_equal(p["a.weight"][masks["a.weight"]], params["a.weight"][masks["a.weight"]])


@pytest.mark.parametrize("bad", [{"sparsity": 1.0}, {"sparsity": -0.1}, {"redense_lr_factor": 0.0},
                                 {"sparse_iterations": 1.5}])
def test_bad_config_is_refused(bad):
    with pytest.raises(ConfigError):
        DSDConfig(**bad)
