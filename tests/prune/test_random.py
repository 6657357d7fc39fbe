"""Random pruning: a seeded subset of the alive entries, spread uniformly."""

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refdns.prune.random import random_mask
from tests.prune.tiny import densities

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
