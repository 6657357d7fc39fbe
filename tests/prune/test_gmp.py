"""Gradual magnitude pruning: the schedule equals Zhu & Gupta's formula at every update, masks shrink by
magnitude to round((1 - s_t) n) per layer, pruned weights stay 0, and bad configs are refused."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.errors import ConfigError
from refdns.nets.sequential import init_params
from refdns.optim import SGDConfig
from refdns.pipeline import experiment
from refdns.prune.base import all_ones_masks, methods
from refdns.prune.gmp import GMPConfig, GradualMagnitude, gmp_sparsity
from refdns.run import TrainConfig, new_run
from refdns.train import train_step
from tests.prune.tiny import TINY, tiny_batch


@given(s_i=st.floats(0.0, 0.5), s_f=st.floats(0.5, 1.0), t0=st.integers(0, 50), n=st.integers(1, 20),
       dt=st.integers(1, 100), k=st.integers(0, 20))
def test_schedule_is_the_cubic_formula(s_i, s_f, t0, n, dt, k):
    k = min(k, n)
    t = t0 + k * dt
    expected = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
    assert gmp_sparsity(t, s_i, s_f, t0, n, dt) == pytest.approx(expected)
    assert gmp_sparsity(t0, s_i, s_f, t0, n, dt) == pytest.approx(s_i)
    assert gmp_sparsity(t0 + n * dt, s_i, s_f, t0, n, dt) == pytest.approx(s_f)
    assert gmp_sparsity(t0 + 10 * n * dt, s_i, s_f, t0, n, dt) == pytest.approx(s_f)


def test_updates_follow_the_schedule_by_magnitude(rng):
    params = init_params(TINY, rng=rng)
    cfg = GMPConfig(final_sparsity={"fc1": 0.8, "fc2": 0.5}, initial_sparsity=0.1, start_iteration=2, steps=4,
                    interval=3, tail_iterations=1)
    method = GradualMagnitude(cfg)
    masks = all_ones_masks(params)
    state = method.init_state(TINY, params)
    for it in range(cfg.iterations):
        before = {k: m.copy() for k, m in masks.items()}
        recs = method.update_masks(it, params, masks, state, rng)
        k = (it - 2) / 3
        if it >= 2 and k == int(k) and k <= 4:
            s = 0.8 + (0.1 - 0.8) * (1 - k / 4) ** 3
            assert float(state["fc1.sparsity"]) == pytest.approx(s)
            assert np.count_nonzero(masks["fc1.weight"]) == math.floor((1 - s) * 54 + 0.5)
            w = np.abs(params["fc1.weight"])
            if (~masks["fc1.weight"]).any() and masks["fc1.weight"].any():
                assert w[masks["fc1.weight"]].min() >= w[~masks["fc1.weight"]].max()
        else:
            assert recs == [] and all(np.array_equal(before[k], masks[k]) for k in masks)
        assert not (masks["fc1.weight"] & ~before["fc1.weight"]).any()  # masks only shrink
    assert int(state["updates"]) == 5
    assert np.count_nonzero(masks["fc2.weight"]) == 9 and masks["fc1.bias"].all()


def test_pruned_weights_stay_zero_in_training(rng):
    method = GradualMagnitude(GMPConfig(final_sparsity={"fc1": 0.7, "fc2": 0.3}, steps=2, interval=2,
                                        tail_iterations=2))
    cfg = TrainConfig(iterations=6, batch_size=8, sgd=SGDConfig(base_lr=0.1))
    state = new_run(TINY, 8, cfg, seed=0)
    state.method_state = method.init_state(TINY, state.params)
    x, y = tiny_batch(rng)
    for _ in range(6):
        train_step(state, x, y, cfg, method)
        for k, m in state.masks.items():
            assert not state.params[k][~m].any() and not state.velocity[k][~m].any()
    assert np.count_nonzero(state.masks["fc1.weight"]) == math.floor(0.3 * 54 + 0.5)


def test_refusals_and_recipes():
    with pytest.raises(ConfigError, match="initial_sparsity"):
        GMPConfig(final_sparsity={"a": 0.2}, initial_sparsity=0.5)
    with pytest.raises(ConfigError, match="final_sparsity\\['a'\\]"):
        GMPConfig(final_sparsity={"a": 1.5})
    with pytest.raises(ConfigError, match="interval"):
        GMPConfig(final_sparsity={"a": 0.5}, interval=0)
    with pytest.raises(ConfigError, match="missing layers"):
        GradualMagnitude(GMPConfig(final_sparsity={"fc1": 0.5})).init_state(TINY, {})
    assert methods()["gmp"] is GradualMagnitude
    for net in ("lenet-5", "lenet-300-100"):
        exp = experiment(net, "gmp")
        assert exp.train.iterations == 10_000
    assert experiment("lenet-300-100", "gmp").method.config.final_sparsity["ip1"] == pytest.approx(0.92)
