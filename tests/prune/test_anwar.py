"""Anwar et al.'s granularities: greedy channel/kernel selection against a brute-force recomputation, the
strided pattern and its exhaustive offset, refusals naming the layer, thinning after channel pruning, and on
real MNIST the greedy choice beats random removal on its batch."""

import numpy as np
import pytest

from refdns.errors import ConfigError
from refdns.nets import get_spec
from refdns.nets.sequential import forward, init_params
from refdns.pipeline import Data, run_training
from refdns.prune.anwar import (
    AnwarConfig,
    AnwarPruning,
    anwar_prune,
    batch_loss,
    strided_pattern,
    targets,
)
from refdns.prune.base import all_ones_masks, methods
from refdns.prune.units import effective_params
from refdns.run import TrainConfig
from refdns.thin import thin
from tests.prune.test_structured import TINY_CONV
from tests.tolerances import assert_close


def _net(rng):
    params = init_params(TINY_CONV, rng=rng, dtype=np.float64)
    for k in params:
        if k.endswith("bias"):
            params[k] = 0.1 * rng.standard_normal(params[k].shape)
    x = rng.standard_normal((32, 1, 10, 10))
    y = rng.integers(0, 3, 32)
    return params, x, y


def _brute_force_greedy(params, masks, layer, region, n, k, x, y):
    """One candidate per round, every loss recomputed from scratch: what greedy_layer must choose."""
    removed = []
    m = {key: v.copy() for key, v in masks.items()}
    for _ in range(k):
        best = None
        for i in range(n):
            if i in removed:
                continue
            t = {key: v.copy() for key, v in m.items()}
            t[f"{layer}.weight"][region(i)] = False
            loss = batch_loss(TINY_CONV, params, t, x, y)
            if best is None or loss < best[0]:
                best = (loss, i)
        removed.append(best[1])
        m[f"{layer}.weight"][region(best[1])] = False
    return removed, m


@pytest.mark.parametrize(
    ("granularity", "fraction", "n", "region"),
    [
        (
            "channel",
            0.5,
            3,
            lambda i: (slice(None), i),
        ),  # c2 reads 3 channels: round(1.5) -> 2 kept, 1 removed
        ("kernel", 0.25, 12, lambda i: (i // 3, i % 3)),  # c2 has 4 x 3 kernels: 3 removed
    ],
)
def test_greedy_equals_a_brute_force_search(rng, granularity, fraction, n, region):
    params, x, y = _net(rng)
    masks = all_ones_masks(params)
    cfg = AnwarConfig(granularity=granularity, fractions={"c2": fraction})
    k = targets(TINY_CONV, cfg)["c2"]
    new, chosen = anwar_prune(TINY_CONV, params, masks, x, y, cfg)
    want, want_masks = _brute_force_greedy(params, masks, "c2", region, n, k, x, y)
    assert chosen["c2"] == want and k == (1 if granularity == "channel" else 3)
    for key in masks:
        np.testing.assert_array_equal(new[key], want_masks[key])
    w = new["c2.weight"]  # whole channels or whole kernels go, nothing else
    per_kernel = w.reshape(4, 3, -1)
    assert set(per_kernel.all(axis=2).ravel() | ~per_kernel.any(axis=2).ravel()) == {True}
    assert new["c1.weight"].all() and new["d1.weight"].all()


def test_a_channel_nobody_needs_is_chosen_first(rng):
    params, x, y = _net(rng)
    params["c2.weight"][:, 1] = 0.0  # channel 1 already contributes nothing: removing it changes no loss
    cfg = AnwarConfig(granularity="channel", fractions={"c2": 0.34})
    new, chosen = anwar_prune(TINY_CONV, params, all_ones_masks(params), x, y, cfg)
    base = batch_loss(TINY_CONV, params, all_ones_masks(params), x, y)
    others = []
    for c in (0, 2):
        m = all_ones_masks(params)
        m["c2.weight"][:, c] = False
        others.append(batch_loss(TINY_CONV, params, m, x, y))
    if min(others) > base:  # the zero channel is the strict argmin unless removing another helps
        assert chosen["c2"] == [1]
    assert batch_loss(TINY_CONV, params, new, x, y) == min([base, *others])


def test_strided_pattern_and_exhaustive_offset(rng):
    assert strided_pattern(3, 2, 0).astype(int).tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert strided_pattern(3, 2, 1).astype(int).tolist() == [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    assert strided_pattern(5, 3, 2).sum() == 8  # positions 2, 5, ..., 23
    params, x, y = _net(rng)
    cfg = AnwarConfig(granularity="intra", strides={"c1": 2, "c2": 3})
    new, chosen = anwar_prune(TINY_CONV, params, all_ones_masks(params), x, y, cfg)
    for layer, k, s in (("c1", 3, 2), ("c2", 2, 3)):
        pattern = strided_pattern(k, s, chosen[layer])
        assert (new[f"{layer}.weight"] == pattern).all()  # every kernel of the layer: the same pattern
    # c1's offset is the better of its two (c2 unpruned then, as the search ran it)
    losses = []
    for o in range(2):
        m = all_ones_masks(params)
        m["c1.weight"] &= strided_pattern(3, 2, o)
        losses.append(batch_loss(TINY_CONV, params, m, x, y))
    assert chosen["c1"] == int(np.argmin(losses))


def test_refusals_name_the_layer():
    for cfg, msg in (
        (dict(granularity="channel", fractions={"d1": 0.5}), "layer 'd1' is fully connected"),
        (dict(granularity="channel", fractions={"c9": 0.5}), "no layer 'c9'"),
        (
            dict(granularity="channel", fractions={"c1": 0.6}),
            "every channel of layer 'c1'",
        ),  # c1 reads 1 channel
        (dict(granularity="kernel", fractions={"c2": 0.99}), "every kernel of layer 'c2'"),
        (dict(granularity="intra", strides={"c2": 4}), "strides\\['c2'\\]=4"),
    ):
        with pytest.raises(ConfigError, match=msg):
            targets(TINY_CONV, AnwarConfig(**cfg))
    with pytest.raises(ConfigError, match="every channel of layer 'c2'"):
        AnwarConfig(granularity="channel", fractions={"c2": 1.0})
    with pytest.raises(ConfigError, match="takes strides"):
        AnwarConfig(granularity="intra", fractions={"c2": 0.5})
    with pytest.raises(ConfigError, match="granularity"):
        AnwarConfig(granularity="row", fractions={"c2": 0.5})
    assert methods()["anwar"] is AnwarPruning


def test_channel_pruning_thins_the_previous_layer(rng):
    params, x, y = _net(rng)
    cfg = AnwarConfig(granularity="channel", fractions={"c2": 0.5})
    new, chosen = anwar_prune(TINY_CONV, params, all_ones_masks(params), x, y, cfg)
    small, small_params, report = thin(TINY_CONV, params, new)
    assert small.param_shapes()["c1.weight"][0] == 2 and small.param_shapes()["c2.weight"][1] == 2
    assert_close(forward(small, small_params, x)[0], forward(TINY_CONV, effective_params(params, new), x)[0])


def test_on_mnist_greedy_channels_beat_random_ones_and_retraining_keeps_them(mnist):
    x_train, y_train, x_test, y_test = mnist
    spec = get_spec("lenet-5")
    data = Data(x_train[:2000], y_train[:2000], x_test[:100], y_test[:100])
    dense, _ = run_training(spec, data, TrainConfig(iterations=80, test_interval=10**6), seed=0)
    x, y = x_train[2000:2128], y_train[2000:2128]
    cfg = AnwarConfig(granularity="channel", fractions={"conv2": 0.5}, per_round=2)
    new, chosen = anwar_prune(spec, dense.params, dense.masks, x, y, cfg)
    assert len(chosen["conv2"]) == 10 and len(set(chosen["conv2"])) == 10
    greedy = batch_loss(spec, dense.params, new, x, y)
    rng = np.random.default_rng(0)
    randoms = []
    for _ in range(5):
        m = {k: v.copy() for k, v in dense.masks.items()}
        m["conv2.weight"][:, rng.choice(20, 10, replace=False)] = False
        randoms.append(batch_loss(spec, dense.params, m, x, y))
    assert greedy < np.median(randoms), (greedy, randoms)
    method = AnwarPruning(
        AnwarConfig(granularity="channel", fractions={"conv2": 0.5}, per_round=5, samples=128),
        x_train[:2000],
        y_train[:2000],
    )
    state, _ = run_training(
        spec,
        data,
        TrainConfig(iterations=10, test_interval=10**6),
        seed=0,
        method=method,
        params=dense.params,
        masks=dense.masks,
    )
    assert (
        ~state.masks["conv2.weight"].any(axis=(0, 2, 3))
    ).sum() == 10  # still 10 channels out after training
    assert (state.params["conv2.weight"][~state.masks["conv2.weight"]] == 0).all()
