"""Optimal Brain Damage: saliency, global ranking, and the one-shot pruning method."""

import numpy as np
import pytest

from refdns.errors import ConfigError
from refdns.hessian import full_hessian, param_slices
from refdns.nets.sequential import NetSpec, Op, init_params
from refdns.optim import SGDConfig
from refdns.prune.obd import OBD, OBDConfig, hessian_diagonal, lowest_score_masks, saliency
from refdns.run import TrainConfig, new_run
from refdns.train import train_step

TINY = NetSpec(
    "tiny",
    (1, 3, 3),
    3,
    (
        Op("flatten"),
        Op("dense", "fc1", w_shape=(5, 9), b_shape=(5,)),
        Op("relu"),
        Op("dense", "fc2", w_shape=(3, 5), b_shape=(3,)),
    ),
)
KEYS = ["fc1.weight", "fc2.weight"]


def test_saliency_is_half_h_w_squared():
    p = {"a": np.array([1.0, -2.0, 3.0])}
    h = {"a": np.array([4.0, 0.5, 0.0])}
    np.testing.assert_array_equal(saliency(p, h)["a"], [2.0, 1.0, 0.0])


def test_saliency_predicts_single_deletions_on_a_quadratic(rng):
    # On a quadratic with diagonal H at its minimum, OBD's saliency is exactly the loss increase.
    h = rng.uniform(0.1, 2.0, 8)
    w = rng.standard_normal(8)
    s = saliency({"w": w}, {"w": h})["w"]
    for k in range(8):
        dw = np.zeros(8)
        dw[k] = -w[k]
        assert 0.5 * np.sum(h * dw**2) == pytest.approx(s[k], rel=1e-14)


def test_lowest_score_masks_keeps_the_best_globally_and_only_shrinks():
    scores = {"a": np.array([[5.0, 1.0], [3.0, 3.0]]), "b": np.array([0.5, 9.0, 2.0]), "c": np.array([0.0])}
    masks = {k: np.ones(v.shape, bool) for k, v in scores.items()}
    masks["b"][1] = False  # already pruned, despite its high score
    new = lowest_score_masks(scores, masks, ["a", "b"], kept_fraction=3 / 7)
    assert int(new["a"].sum() + new["b"].sum()) == 3
    np.testing.assert_array_equal(new["a"], [[True, False], [True, True]])
    np.testing.assert_array_equal(new["b"], [False, False, False])
    assert new["c"].all() and new["c"] is not masks["c"]
    again = lowest_score_masks(scores, new, ["a", "b"], kept_fraction=1.0)
    assert all(np.array_equal(again[k], new[k]) for k in new)  # never grows back


def test_exact_diagonal_is_the_full_hessians(rng):
    p = init_params(TINY, rng=rng, dtype=np.float64)
    x = rng.standard_normal((10, 1, 3, 3))
    y = rng.integers(0, 3, 10)
    d = hessian_diagonal(TINY, p, x, y, diagonal="exact")
    H = np.diag(full_hessian(TINY, p, x, y))
    for k, s in param_slices(TINY).items():
        np.testing.assert_array_equal(d[k].ravel(), H[s])
    rec = hessian_diagonal(TINY, p, x, y, diagonal="recursion")
    np.testing.assert_allclose(rec["fc2.weight"], d["fc2.weight"], rtol=1e-12)  # last layer: no cross terms
    assert all(np.all(rec[k] >= 0) for k in rec)


@pytest.mark.parametrize("diagonal", ["recursion", "exact"])
def test_obd_method_prunes_once_and_pruned_weights_stay_exactly_zero(rng, diagonal):
    x = rng.standard_normal((64, 1, 3, 3)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    cfg = TrainConfig(iterations=5, batch_size=16, sgd=SGDConfig(base_lr=0.05))
    state = new_run(TINY, 64, cfg, seed=2)
    method = OBD(OBDConfig(kept_fraction=0.3, diagonal=diagonal, at_iteration=1), x[:32], y[:32])
    state.method_state = method.init_state(TINY, state.params)
    seen = []
    for _ in range(4):
        idx = state.data.next_indices()
        train_step(state, x[idx], y[idx], cfg, method)
        seen.append({k: m.copy() for k, m in state.masks.items()})
        for k, m in state.masks.items():
            assert np.all(state.params[k][~m] == 0.0) and np.all(state.velocity[k][~m] == 0.0)
    assert all(seen[0][k].all() for k in KEYS)
    n_w = sum(seen[1][k].size for k in KEYS)
    assert sum(int(seen[1][k].sum()) for k in KEYS) == round(0.3 * n_w)
    assert all(np.array_equal(seen[3][k], seen[1][k]) for k in seen[1])
    assert method.config_dict()["method"] == "obd"


def test_obd_all_ones_changes_nothing(rng):
    p = {k: v.copy() for k, v in init_params(TINY, rng=rng).items()}
    masks = {k: np.ones(v.shape, bool) for k, v in p.items()}
    before = {k: v.copy() for k, v in p.items()}
    m = OBD(OBDConfig(kept_fraction=1.0), rng.standard_normal((8, 1, 3, 3)), rng.integers(0, 3, 8))
    m.init_state(TINY, p)
    m.update_masks(0, p, masks, {}, rng)
    assert all(masks[k].all() for k in masks) and all(np.array_equal(p[k], before[k]) for k in p)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="diagonal"):
        OBDConfig(kept_fraction=0.5, diagonal="fisher")
    with pytest.raises(ConfigError, match="kept_fraction"):
        OBDConfig(kept_fraction=-0.1)
