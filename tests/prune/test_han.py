"""Han et al.'s iterative pruning: the rule ``|w| < q(r) * std`` with q growing over the rounds, the dense std
kept as the reference, the dropout adjustment, config validation and the per-round lr restart."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refdns.errors import ConfigError
from refdns.nets.sequential import init_params
from refdns.optim import SGDConfig
from refdns.prune.han import Han, HanConfig, adjusted_dropout, han_mask, layer_std, round_quality
from refdns.run import TrainConfig, new_run
from refdns.train import train_step
from tests.prune.tiny import TINY, floats, tiny_batch

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
        # A round prunes exactly at iterations 0, 10 and 20 (a round may prune nothing, so count rounds,
        # not records); in between nothing happens.
        assert int(state["round"]) == it // 10 + 1
        if it % 10 == 0:
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
