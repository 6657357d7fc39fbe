"""Property tests that pin DNS's semantics as the authors' Caffe code runs it."""

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refdns.errors import ConfigError
from refdns.nets.sequential import NetSpec, Op, init_params, loss_and_grads
from refdns.optim import SGDConfig
from refdns.prune.dns import (
    DNS,
    DNSConfig,
    DNSLayerConfig,
    caffe_thresholds,
    default_config,
    hysteresis,
    surgery_probability,
)
from refdns.run import TrainConfig, effective_params, new_run
from refdns.train import train, train_step

TINY = NetSpec(
    name="tiny",
    input_shape=(1, 3, 3),
    n_classes=3,
    ops=(Op("flatten"), Op("dense", "fc1", w_shape=(5, 9), b_shape=(5,)), Op("relu"),
         Op("dense", "fc2", w_shape=(3, 5), b_shape=(3,))),
)

floats = st.floats(-2.0, 2.0, allow_nan=False, width=64)


def dns(reading="caffe", **layer):
    lc = DNSLayerConfig(**({"c_rate": 0.5, "gamma": 0.0, "power": 1.0, "iter_stop": 10**6} | layer))
    return DNS(DNSConfig(layers={"fc1": lc, "fc2": lc}, reading=reading))


@given(
    mask=arrays(bool, 40),
    w=arrays(np.float64, 40, elements=floats),
    a=st.floats(0.0, 1.0),
    gap=st.floats(0.0, 1.0),
)
def test_hysteresis_band_is_exact(mask, w, a, gap):
    b = a + gap
    new = hysteresis(mask, w, a, b)
    aw = np.abs(w)
    assert not new[mask & (aw <= a)].any()  # kept, at or under a: pruned
    assert new[mask & (aw > a)].all()  # kept, above a: stays
    assert new[~mask & (aw > b)].all()  # pruned, above b: spliced
    assert not new[~mask & (aw <= b)].any()  # pruned, at or under b: stays pruned
    assert not np.shares_memory(new, mask)


def test_hysteresis_boundaries_caffe_and_distiller():
    a, b = 0.9, 1.1
    w = np.array([0.9, -0.9, 1.1, -1.1, 1.0, 1.0])
    mask = np.array([True, True, False, False, True, False])
    # Caffe: |w| == a prunes, |w| == b does not splice; inside the band nothing changes.
    assert hysteresis(mask, w, a, b).tolist() == [False, False, False, False, True, False]
    # Distiller: |w| == a stays, |w| == b splices.
    assert hysteresis(mask, w, a, b, inclusive_prune=False).tolist() == [True, True, True, True, True, False]


@given(
    w=arrays(np.float64, (4, 6), elements=st.one_of(st.just(0.0), floats)),
    b=arrays(np.float64, 4, elements=st.one_of(st.just(0.0), floats)),
    wmask=arrays(bool, (4, 6)),
    bmask=arrays(bool, 4),
    c_rate=st.floats(-3.0, 5.0),
)
def test_thresholds_pool_nonzero_masked_weights_and_biases_with_population_std(w, b, wmask, bmask, c_rate):
    s = caffe_thresholds(w, b, wmask, bmask, c_rate, (0.9, 1.1))
    v = [abs(x) for x in list((w * wmask).ravel()) + list((b * bmask).ravel()) if x != 0]
    if v:
        mu = sum(v) / len(v)
        std = (sum((x - mu) ** 2 for x in v) / len(v)) ** 0.5  # population, not n - 1
    else:
        mu = std = 0.0
    assert s["mu"] == pytest.approx(mu, abs=1e-12)
    assert s["std"] == pytest.approx(std, abs=1e-6)
    t = max(mu + c_rate * std, 0.0)
    assert s["t"] == pytest.approx(t, abs=1e-6)
    assert s["a"] == pytest.approx(0.9 * t, abs=1e-6) and s["b"] == pytest.approx(1.1 * t, abs=1e-6)


@given(gamma=st.floats(0.0, 1.0), power=st.floats(0.0, 3.0), it=st.integers(0, 100_000))
def test_surgery_probability_is_the_papers_sigma(gamma, power, it):
    lc = DNSLayerConfig(gamma=gamma, power=power)
    assert surgery_probability(lc, it) == pytest.approx((1 + gamma * it) ** -power, rel=1e-12)


def _state(rng, seed=0):
    params = init_params(TINY, rng=rng, dtype=np.float64)
    params = {k: rng.normal(0, 1, v.shape) for k, v in params.items()}
    masks = {k: rng.random(v.shape) < 0.6 for k, v in params.items()}
    return params, masks


@given(seed=st.integers(0, 2**32 - 1), it=st.integers(0, 50_000))
def test_update_fires_exactly_when_the_draw_is_below_sigma_and_before_iter_stop(seed, it):
    rng = np.random.default_rng(seed)
    params, masks = _state(rng)
    method = dns(gamma=1e-3, power=1.0, iter_stop=20_000)
    state = {}
    method._thresholds("fc1", params, masks, state)
    method._thresholds("fc2", params, masks, state)
    draw_rng = np.random.default_rng(seed + 1)
    expected_draws = np.random.default_rng(seed + 1).random(2)
    before = copy.deepcopy(masks)
    records = method.update_masks(it, params, masks, state, draw_rng)
    sigma = (1 + 1e-3 * it) ** -1.0
    fired = {layer for layer, r in zip(("fc1", "fc2"), expected_draws) if r < sigma and it < 20_000}
    assert {r.layer for r in records} == fired
    for layer in ("fc1", "fc2"):
        for kind in ("weight", "bias"):
            key = f"{layer}.{kind}"
            if layer in fired:
                a, b = float(state[f"{layer}.a"]), float(state[f"{layer}.b"])
                assert np.array_equal(masks[key], hysteresis(before[key], params[key], a, b))
            else:
                assert np.array_equal(masks[key], before[key])


def test_nothing_changes_at_or_after_iter_stop(rng):
    params, masks = _state(rng)
    method = dns(iter_stop=100)  # gamma 0: sigma == 1, the draw always fires before iter_stop
    state = {}
    before = copy.deepcopy(masks)
    assert method.update_masks(100, params, masks, state, rng) == []
    assert all(np.array_equal(masks[k], before[k]) for k in masks)
    assert method.update_masks(99, params, masks, state, rng) != []


def test_thresholds_are_computed_once_and_kept(rng):
    params, masks = _state(rng)
    method = dns()
    state = {}
    method.update_masks(0, params, masks, state, rng)
    a0 = float(state["fc1.a"])
    params["fc1.weight"] *= 10  # would change the statistics if they were recomputed
    method.update_masks(1, params, masks, state, rng)
    assert float(state["fc1.a"]) == a0


def test_pruned_weight_pushed_above_b_is_spliced_back(rng):
    params, masks = _state(rng)
    method = dns()
    state = {}
    method.update_masks(0, params, masks, state, rng)
    b = float(state["fc1.b"])
    masks["fc1.weight"][0, 0] = False
    params["fc1.weight"][0, 0] = -np.nextafter(b, np.inf)  # just above b in magnitude
    records = method.update_masks(1, params, masks, state, rng)
    assert masks["fc1.weight"][0, 0]
    assert next(r for r in records if r.layer == "fc1").spliced >= 1


def _one_step(params, masks, method, x, y, lr=0.1):
    """One refdns train_step in float64 with plain SGD (no momentum, no decay)."""
    cfg = TrainConfig(iterations=1, batch_size=len(x), sgd=SGDConfig(base_lr=lr, momentum=0.0, weight_decay=0.0,
                                                                     lr_policy="fixed", bias_lr_mult=1.0))
    state = new_run(TINY, len(x), cfg, seed=0, params=params, masks=masks, dtype=np.float64)
    before = {k: v.copy() for k, v in state.params.items()}
    train_step(state, x, y, cfg, method)
    return before, state


def test_gradient_through_the_mask_reaches_pruned_weights(rng):
    """DNS eq. (2): a pruned entry moves by -lr * dL/d(W*T), checked against central differences."""
    params, masks = _state(rng)
    x = rng.normal(size=(6, 1, 3, 3))
    y = rng.integers(0, 3, size=6)
    method = dns(iter_stop=0)  # masks frozen for this step: only the gradient rule is under test
    before, state = _one_step(params, masks, method, x, y)
    w_eff = effective_params(before, state.masks)
    h = 1e-6
    checked = 0
    for key in ("fc1.weight", "fc2.weight"):
        for idx in zip(*np.nonzero(~state.masks[key])):
            e = {k: v.copy() for k, v in w_eff.items()}
            e[key][idx] += h
            lp, _ = loss_and_grads(TINY, e, x, y)
            e[key][idx] -= 2 * h
            lm, _ = loss_and_grads(TINY, e, x, y)
            num = (lp - lm) / (2 * h)
            moved = (before[key][idx] - state.params[key][idx]) / 0.1
            # atol 1e-9: central differences at h = 1e-6 carry ~1e-10 of round-off; a frozen entry would be off by |num|
            assert abs(moved - num) <= 1e-6 * max(abs(num), abs(moved)) + 1e-9, (key, idx, moved, num)
            checked += abs(num) > 1e-6
    assert checked > 0  # the property is not vacuous: some pruned entries had a non-zero gradient


def test_all_ones_masks_change_neither_outputs_nor_gradients(rng):
    params, _ = _state(rng)
    ones = {k: np.ones(v.shape, bool) for k, v in params.items()}
    x = rng.normal(size=(4, 1, 3, 3))
    y = rng.integers(0, 3, size=4)
    eff = effective_params(params, ones)
    la, ga = loss_and_grads(TINY, params, x, y)
    lb, gb = loss_and_grads(TINY, eff, x, y)
    assert la == lb and all(np.array_equal(ga[k], gb[k]) for k in ga)


def test_masked_net_equals_net_with_zeroed_weights(rng):
    params, masks = _state(rng)
    x = rng.normal(size=(4, 1, 3, 3))
    y = rng.integers(0, 3, size=4)
    zeroed = {k: np.where(masks[k], v, 0.0) for k, v in params.items()}
    la, ga = loss_and_grads(TINY, effective_params(params, masks), x, y)
    lb, gb = loss_and_grads(TINY, zeroed, x, y)
    assert la == lb and all(np.allclose(ga[k], gb[k]) for k in ga)


def test_config_errors_are_named():
    with pytest.raises(ConfigError, match="reading"):
        DNSConfig(layers={"ip1": DNSLayerConfig()}, reading="pytorch")
    with pytest.raises(ConfigError, match="c_rate"):
        DNSLayerConfig(c_rate=float("nan"))
    with pytest.raises(ConfigError, match="missing"):
        DNSConfig(layers={"ip1": DNSLayerConfig()}).check_net(TINY)
    with pytest.raises(ConfigError, match="unknown setting"):
        DNSConfig(layers={"fc1": {"c_rat": 1.0}})
    assert set(default_config("lenet-5").layers) == {"conv1", "conv2", "ip1", "ip2"}


def test_distiller_reading_leaves_biases_alone_and_updates_every_k(rng):
    params, masks = _state(rng)
    lc = DNSLayerConfig(c_rate=0.5, iter_stop=10**6)
    method = DNS(DNSConfig(layers={"fc1": lc, "fc2": lc}, reading="distiller", update_every=3))
    state = {}
    bias_before = masks["fc1.bias"].copy()
    assert method.update_masks(1, params, masks, state, rng) == []
    assert len(method.update_masks(3, params, masks, state, rng)) == 2
    assert np.array_equal(masks["fc1.bias"], bias_before)
    aw = np.abs(params["fc1.weight"]).ravel()
    assert float(state["fc1.std"]) == pytest.approx(aw.std(ddof=1))


@pytest.mark.slow
def test_short_dns_run_on_real_mnist_prunes_and_keeps_learning(mnist):
    """Dense for 300 iterations, then 600 surgery iterations at the authors' defaults (c_rate 3): about 98% of
    LeNet-300-100 is cut at once, and the surgery run learns its way back to well below chance."""
    from refdns.nets import get_spec

    x_train, y_train, x_test, y_test = mnist
    spec = get_spec("lenet-300-100")
    cfg = TrainConfig(iterations=300, test_interval=0)
    dense = train(new_run(spec, len(x_train), cfg, seed=0), x_train, y_train, cfg,
                  x_test=x_test[:2000], y_test=y_test[:2000])
    method = DNS(default_config("lenet-300-100"))
    surgery = TrainConfig(iterations=600, test_interval=100)
    run = new_run(spec, len(x_train), surgery, seed=1, params=dense.params)
    run = train(run, x_train, y_train, surgery, method=method, x_test=x_test[:2000], y_test=y_test[:2000])
    kept = sum(int(m.sum()) for m in run.masks.values()) / spec.n_params()
    assert kept < 0.05, kept
    errors = [e for _, e in run.history.test_error]
    assert errors[-1] < 0.2 and errors[-1] < errors[0], errors
    assert any(r.spliced > 0 for r in run.history.mask_updates)  # surgery, not only pruning
    assert run.history.mask_updates[0].iteration == 0
