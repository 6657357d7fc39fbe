"""The method interface's own record: MaskUpdate, and that every method emits it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from refdns.nets.sequential import NetSpec, Op, init_params
from refdns.prune.base import MaskUpdate, all_ones_masks
from refdns.prune.dns import DNS, DNSConfig, DNSLayerConfig
from refdns.prune.han import Han, HanConfig
from refdns.prune.magnitude import Magnitude, MagnitudeConfig
from refdns.prune.obd import OBD, OBDConfig
from refdns.prune.random import RandomConfig, RandomPruning

TINY = NetSpec(
    "tiny",
    (1, 3, 3),
    3,
    (
        Op("flatten"),
        Op("dense", "fc1", w_shape=(6, 9), b_shape=(6,)),
        Op("relu"),
        Op("dense", "fc2", w_shape=(3, 6), b_shape=(3,)),
    ),
)


def test_mask_update_density_and_dict():
    r = MaskUpdate(iteration=12, layer="ip1", pruned=40, spliced=3, kept=60, total=240)
    assert r.density == 0.25
    d = {"iteration": 12, "layer": "ip1", "pruned": 40, "spliced": 3, "kept": 60, "total": 240}
    assert r.to_dict() == d
    assert MaskUpdate(**r.to_dict()) == r


def test_mask_update_is_frozen():
    r = MaskUpdate(iteration=0, layer="ip1", pruned=1, spliced=0, kept=9, total=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.kept = 10  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"layer": ""}, TypeError, "layer"),
        ({"pruned": -1}, TypeError, "pruned"),
        ({"kept": np.int64(3)}, TypeError, "kept"),
        ({"iteration": True}, TypeError, "iteration"),
        ({"kept": 11}, ValueError, "kept=11"),
        ({"kept": 0, "total": 0}, ValueError, "total=0"),
    ],
)
def test_mask_update_refuses_bad_fields(fields, error, match):
    good = {"iteration": 0, "layer": "ip1", "pruned": 1, "spliced": 0, "kept": 9, "total": 10}
    with pytest.raises(error, match=match):
        MaskUpdate(**(good | fields))


def _methods():
    x = np.zeros((4, 1, 3, 3), np.float32)
    y = np.zeros(4, np.int64)
    lc = DNSLayerConfig(c_rate=0.0, gamma=0.0, power=1.0, iter_stop=10)
    return [
        DNS(DNSConfig(layers={"fc1": lc, "fc2": lc})),
        Han(HanConfig(quality={"fc1": 1.0, "fc2": 1.0}, rounds=1, round_iterations=10)),
        Magnitude(MagnitudeConfig(densities={"fc1": 0.5, "fc2": 0.5})),
        RandomPruning(RandomConfig(densities={"fc1": 0.5, "fc2": 0.5})),
        OBD(OBDConfig(kept_fraction=0.5), x, y),
    ]


@pytest.mark.parametrize("method", _methods(), ids=lambda m: m.name)
def test_every_method_returns_mask_updates(method, rng):
    params = init_params(TINY, rng=rng, dtype=np.float64)
    masks = all_ones_masks(params)
    state = method.init_state(TINY, params)
    records = method.update_masks(0, params, masks, state, rng)
    assert records and all(type(r) is MaskUpdate for r in records)
    assert sum(r.pruned for r in records) > 0
    for r in records:
        w = masks[f"{r.layer}.weight"]
        keys = ["weight"] if r.total == w.size else ["weight", "bias"]  # OBD and OBS count weights only
        assert r.iteration == 0 and r.total == sum(masks[f"{r.layer}.{k}"].size for k in keys)
        assert r.kept == sum(int(masks[f"{r.layer}.{k}"].sum()) for k in keys)
