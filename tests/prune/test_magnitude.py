"""One-shot magnitude pruning: exactly k kept, one global threshold, an existing mask respected."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refdns.errors import ConfigError
from refdns.prune.magnitude import MagnitudeConfig, global_magnitude_masks, layer_magnitude_masks, top_k_mask
from refdns.prune.random import RandomConfig
from tests.prune.tiny import TINY, densities, floats, make

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

def test_baseline_configs_refuse_nonsense():
    with pytest.raises(ConfigError, match="scope"):
        MagnitudeConfig(densities={"a": 0.1}, scope="net")
    with pytest.raises(ConfigError, match="scope='global'"):
        MagnitudeConfig(density=0.1)
    with pytest.raises(ConfigError, match="retrain_iterations"):
        RandomConfig(densities={"a": 0.1}, retrain_iterations=-1)
    with pytest.raises(ConfigError, match="missing layers"):
        make("random", 0.5, 0.5).__class__(RandomConfig(densities={"fc1": 0.5})).init_state(TINY, {})
