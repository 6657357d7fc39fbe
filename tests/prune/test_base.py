"""Properties every masked method must have through the one interface (Han, magnitude, random): masks never
regrow; pruned weights and their momentum are exactly 0 after every SGD + momentum + weight-decay step; the
per-layer kept fraction matches the request to within one weight; every method is registered with a recipe."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.optim import SGDConfig
from refdns.pipeline import prune_without_training
from refdns.prune.base import methods
from refdns.run import TrainConfig, new_run
from refdns.train import train_step
from tests.prune.tiny import KINDS, TINY, densities, make, tiny_batch

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

def test_every_method_is_registered_and_has_recipes():
    found = methods()
    assert {"dns", "han", "magnitude", "random"} <= set(found)
    for net in ("lenet-300-100", "lenet-5"):
        for name in ("han", "magnitude", "random"):
            m = found[name].from_recipe(net)
            assert m.name == name and m.schedule_iterations() > 0 and not m.grad_through_mask
    state = new_run(TINY, 8, TrainConfig(iterations=1, batch_size=4), seed=0)
    prune_without_training(state, make("random", 0.5, 0.5))
    assert np.count_nonzero(state.masks["fc1.weight"]) == 27
