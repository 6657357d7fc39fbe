"""A tiny MLP and the masked methods on it, shared by the pruning tests (the interface's properties, each
method's own rules, the pipeline's one-shot path)."""

import numpy as np
from hypothesis import strategies as st

from refdns.nets.sequential import NetSpec, Op
from refdns.prune.base import PruningMethod
from refdns.prune.han import Han, HanConfig
from refdns.prune.magnitude import Magnitude, MagnitudeConfig
from refdns.prune.random import RandomConfig, RandomPruning

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

