"""Property tests for Han et al.'s iterative pruning and the magnitude / random baselines.

Pinned: masks never regrow; pruned weights (and their momentum) are exactly 0 after every SGD + momentum +
weight-decay step; the per-layer kept fraction matches the requested one to within one weight; Han's rule is
``|w| < q(r) * std`` with q growing over the rounds.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refdns.errors import ConfigError
from refdns.nets.sequential import NetSpec, Op, init_params
from refdns.optim import SGDConfig
from refdns.pipeline import Data, prune_without_training, run_training
from refdns.prune.base import PruningMethod, methods
from refdns.prune.han import Han, HanConfig, adjusted_dropout, han_mask, layer_std, round_quality
from refdns.prune.magnitude import (
    Magnitude,
    MagnitudeConfig,
    global_magnitude_masks,
    layer_magnitude_masks,
    top_k_mask,
)
from refdns.prune.random import RandomConfig, RandomPruning, random_mask
from refdns.run import TrainConfig, new_run
from refdns.train import train_step

TINY = NetSpec(
    name="tiny",
    input_shape=(1, 3, 3),
    n_classes=3,
    ops=(
        Op("flatten"),
        Op("dense", "fc1", w_shape=(6, 9), b_shape=(6,)),
        Op("relu"),
        Op("dense", "fc2", w_shape=(3, 6), b_shape=(3,)),
    ),
)
floats = st.floats(-2.0, 2.0, allow_nan=False, allow_subnormal=False, width=32)
densities = st.floats(0.0, 1.0)


def tiny_batch(rng, n=8):
    return rng.standard_normal((n, 1, 3, 3)).astype(np.float32), rng.integers(0, 3, n)


def make(kind: str, d1: float, d2: float, **kw) -> PruningMethod:
    if kind == "han":
        return Han(HanConfig(quality={"fc1": 4 * d1, "fc2": 4 * d2}, rounds=3, round_iterations=2, **kw))
    if kind == "han-density":
        return Han(HanConfig(densities={"fc1": d1, "fc2": d2}, rounds=3, round_iterations=2, **kw))
    if kind == "magnitude":
        return Magnitude(MagnitudeConfig(densities={"fc1": d1, "fc2": d2}, retrain_iterations=6, **kw))
    if kind == "magnitude-global":
        return Magnitude(MagnitudeConfig(scope="global", density=d1, retrain_iterations=6, **kw))
    return RandomPruning(RandomConfig(densities={"fc1": d1, "fc2": d2}, retrain_iterations=6, **kw))


KINDS = ["han", "han-density", "magnitude", "magnitude-global", "random"]


@pytest.mark.parametrize("kind", KINDS)
@given(d1=densities, d2=densities, seed=st.integers(0, 2**16), wd=st.sampled_from([0.0, 5e-4, 0.1]))
def test_masks_never_regrow_and_pruned_weights_stay_exactly_zero(kind, d1, d2, seed, wd):
    rng = np.random.default_rng(seed)
    method = make(kind, d1, d2)
    cfg = TrainConfig(iterations=8, batch_size=4, sgd=SGDConfig(base_lr=0.5, momentum=0.9, weight_decay=wd))
    state = new_run(TINY, 8, cfg, seed=seed)
    # Momentum already running before the first prune, as after dense training.
    state.velocity = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in state.params.items()}
    state.method_state = method.init_state(TINY, state.params)
    x, y = tiny_batch(rng)
    for _ in range(cfg.iterations):
        before = {k: m.copy() for k, m in state.masks.items()}
        idx = state.data.next_indices()
        train_step(state, x[idx], y[idx], cfg, method)
        for k, m in state.masks.items():
            assert not (m & ~before[k]).any(), f"{k} regrew at iteration {state.iteration}"
            assert np.all(state.params[k][~m] == 0.0), f"{k}: a pruned weight moved off 0"
            assert np.all(state.velocity[k][~m] == 0.0), f"{k}: a pruned weight kept momentum"


@pytest.mark.parametrize("kind", ["han-density", "magnitude", "random"])
@given(d1=densities, d2=densities, seed=st.integers(0, 2**16))
def test_per_layer_kept_fraction_within_one_weight(kind, d1, d2, seed):
    method = make(kind, d1, d2)
    cfg = TrainConfig(iterations=6, batch_size=4)
    state = new_run(TINY, 8, cfg, seed=seed)
    state.method_state = method.init_state(TINY, state.params)
    x, y = tiny_batch(np.random.default_rng(seed))
    for _ in range(cfg.iterations):  # Han's last round prunes at iteration 4
        idx = state.data.next_indices()
        train_step(state, x[idx], y[idx], cfg, method)
    for layer, d in (("fc1", d1), ("fc2", d2)):
        m = state.masks[f"{layer}.weight"]
        assert abs(np.count_nonzero(m) - d * m.size) <= 1, (layer, d, np.count_nonzero(m), m.size)
        assert state.masks[f"{layer}.bias"].all()  # biases are not pruned by default


@given(w=arrays(np.float32, 30, elements=floats), k=st.integers(0, 30))
def test_top_k_keeps_exactly_k_of_the_largest(w, k):
    m = top_k_mask(w, k)
    assert np.count_nonzero(m) == k
    if 0 < k < w.size:
        assert np.abs(w[m]).min() >= np.abs(w[~m]).max()


@given(w1=arrays(np.float32, (4, 5), elements=floats), w2=arrays(np.float32, 7, elements=floats), d=densities)
def test_global_magnitude_one_threshold_across_layers(w1, w2, d):
    params = {"a.weight": w1, "b.weight": w2}
    masks = {k: np.ones(v.shape, bool) for k, v in params.items()}
    new = global_magnitude_masks(params, masks, ["a", "b"], d)
    kept = np.concatenate([np.abs(params[k][new[k]]) for k in params])
    dropped = np.concatenate([np.abs(params[k][~new[k]]) for k in params])
    assert abs(kept.size - d * 27) <= 0.5 + 1e-9
    if kept.size and dropped.size:
        assert kept.min() >= dropped.max()
    assert masks["a.weight"].all()  # inputs untouched


@given(w=arrays(np.float32, (5, 6), elements=floats), mask=arrays(bool, (5, 6)), d=densities)
def test_layer_magnitude_respects_an_existing_mask(w, mask, d):
    new = layer_magnitude_masks({"l.weight": w}, {"l.weight": mask}, {"l": d})["l.weight"]
    assert not (new & ~mask).any()
    assert np.count_nonzero(new) == min(math.floor(d * 30 + 0.5), np.count_nonzero(mask))


@given(mask=arrays(bool, 40), d=densities, seed=st.integers(0, 2**16))
def test_random_mask_is_a_seeded_subset(mask, d, seed):
    a = random_mask(mask, d, rng=np.random.default_rng(seed))
    b = random_mask(mask, d, rng=np.random.default_rng(seed))
    assert np.array_equal(a, b)
    assert not (a & ~mask).any()
    assert np.count_nonzero(a) == min(math.floor(d * 40 + 0.5), np.count_nonzero(mask))


def test_random_masks_are_spread_uniformly():
    """Each position is kept with probability d: over 400 draws the counts match a binomial."""
    rng = np.random.default_rng(7)
    hits = sum(random_mask(np.ones(50, bool), 0.2, rng=rng).astype(int) for _ in range(400))
    # 400 draws, p = 0.2: mean 80, sd 8; every position within 5 sd.
    assert np.all(np.abs(hits - 80) < 40)


@given(w=arrays(np.float32, 25, elements=floats), mask=arrays(bool, 25), t=st.floats(0.0, 2.0))
def test_han_rule_is_strictly_below_threshold_and_monotone(w, mask, t):
    new = han_mask(w, mask, t)
    assert np.array_equal(new, mask & ~(np.abs(w) < t))
    assert not np.shares_memory(new, mask)


def test_han_rounds_grow_the_threshold_from_the_dense_std(rng):
    params = init_params(TINY, rng=rng)
    masks = {k: np.ones(v.shape, bool) for k, v in params.items()}
    method = Han(HanConfig(quality={"fc1": 1.5, "fc2": 0.9}, rounds=3, round_iterations=10))
    state = method.init_state(TINY, params)
    std1 = layer_std(params["fc1.weight"])
    thresholds = []
    for it in range(30):
        recs = method.update_masks(it, params, masks, state, rng)
        if it % 10 == 0:
            assert recs or it > 0
            thresholds.append(float(state["fc1.threshold"]))
        else:
            assert recs == []
        params["fc1.weight"] *= 1.01  # training moves the weights; the dense std stays the reference
    assert thresholds == pytest.approx([0.5 * std1, 1.0 * std1, 1.5 * std1])
    assert int(state["round"]) == 3 and float(state["fc1.std"]) == pytest.approx(std1)
    assert round_quality(1.5, 2, 3) == pytest.approx(1.0)


def test_adjusted_dropout_equation_and_validation():
    assert adjusted_dropout(0.5, 100, 25) == pytest.approx(0.25)
    assert adjusted_dropout(0.5, 100, 100) == 0.5
    with pytest.raises(ConfigError, match="c_new"):
        adjusted_dropout(0.5, 100, 101)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"quality": {"fc1": 1.0}, "densities": {"fc1": 0.1}}, "exactly one"),
        ({}, "exactly one"),
        ({"quality": {"fc1": -1.0}}, "quality"),
        ({"quality": {"fc1": 1.0}, "rounds": 0}, "rounds"),
        ({"quality": {"fc1": 1.0}, "std": "median"}, "std"),
        ({"densities": {"fc1": 1.5}}, "densities"),
    ],
)
def test_han_config_refuses_nonsense(bad, match):
    with pytest.raises(ConfigError, match=match):
        HanConfig(**bad)


def test_baseline_configs_refuse_nonsense():
    with pytest.raises(ConfigError, match="scope"):
        MagnitudeConfig(densities={"a": 0.1}, scope="net")
    with pytest.raises(ConfigError, match="scope='global'"):
        MagnitudeConfig(density=0.1)
    with pytest.raises(ConfigError, match="retrain_iterations"):
        RandomConfig(densities={"a": 0.1}, retrain_iterations=-1)
    with pytest.raises(ConfigError, match="missing layers"):
        make("random", 0.5, 0.5).__class__(RandomConfig(densities={"fc1": 0.5})).init_state(TINY, {})


def test_one_shot_without_retraining_zeroes_the_pruned_weights(rng):
    x, y = tiny_batch(rng, 16)
    data = Data(x, y, x, y)
    params = init_params(TINY, rng=rng)
    state, _ = run_training(
        TINY,
        data,
        TrainConfig(iterations=0, batch_size=4),
        seed=0,
        method=make("magnitude", 0.25, 0.5),
        params=params,
    )
    assert np.count_nonzero(state.masks["fc1.weight"]) == round(0.25 * 54)
    assert np.all(state.params["fc1.weight"][~state.masks["fc1.weight"]] == 0)
    assert np.array_equal(
        state.params["fc1.weight"] != 0, state.masks["fc1.weight"] & (params["fc1.weight"] != 0)
    )
    assert state.iteration == 0 and len(state.history.mask_updates) == 2


def test_every_method_is_registered_and_has_recipes():
    found = methods()
    assert {"dns", "han", "magnitude", "random"} <= set(found)
    for net in ("lenet-300-100", "lenet-5"):
        for name in ("han", "magnitude", "random"):
            m = found[name].recipe(net)
            assert m.name == name and m.schedule_iterations() > 0 and not m.grad_through_mask
    state = new_run(TINY, 8, TrainConfig(iterations=1, batch_size=4), seed=0)
    prune_without_training(state, make("random", 0.5, 0.5))
    assert np.count_nonzero(state.masks["fc1.weight"]) == 27


def test_restart_lr_makes_every_retraining_a_fresh_solver_run(rng):
    """With restart_lr, round r's first step uses the policy's iteration-0 rate; without, the run's."""
    x, y = tiny_batch(rng, 16)
    cfg = TrainConfig(iterations=6, batch_size=4, sgd=SGDConfig(gamma=0.5))
    rates = {}
    for restart in (False, True):
        method = Han(
            HanConfig(quality={"fc1": 0.5, "fc2": 0.5}, rounds=2, round_iterations=3, restart_lr=restart)
        )
        state = new_run(TINY, 16, cfg, seed=0)
        state.method_state = method.init_state(TINY, state.params)
        rates[restart] = [train_step(state, x[:4], y[:4], cfg, method)[1] for _ in range(6)]
    assert rates[True][:3] == rates[False][:3] and rates[True][3:] == rates[True][:3]
    assert rates[False][3] < rates[False][0]
