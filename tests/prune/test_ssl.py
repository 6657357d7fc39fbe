"""Structured Sparsity Learning: the group-lasso penalty's hand-written gradient against central differences
in float64 and a hand computation; removal of small groups keeps the net's function (the removed filter's
constant output folded into the next bias); the training loop adds the penalty only in its phase; a short real
run removes neurons that thinning then cuts out."""

import numpy as np
import pytest

from refdns.errors import ConfigError
from refdns.nets import get_spec
from refdns.nets.sequential import forward, init_params, loss_and_grads
from refdns.optim import SGDConfig
from refdns.pipeline import Data, experiment, run_training
from refdns.prune.base import all_ones_masks, methods, reproducible_methods
from refdns.prune.ssl import (
    SSL,
    SSLConfig,
    group_norms,
    layer_kinds,
    penalty,
    penalty_grads,
    remove_small_groups,
)
from refdns.prune.units import alive_units, effective_params
from refdns.run import TrainConfig, new_run
from refdns.thin import thin
from refdns.train import train_step
from tests.gradcheck import numerical_gradient, rel_error
from tests.prune.test_structured import TINY_CONV
from tests.tolerances import GRADCHECK_RTOL, assert_close

ALL3 = SSLConfig(lambda_filter=0.7, lambda_channel=1.3, lambda_shape=2.0)


def test_penalty_gradient_matches_central_differences_in_float64(rng):
    params = init_params(TINY_CONV, rng=rng, dtype=np.float64)
    kinds = layer_kinds(TINY_CONV, ALL3)
    assert kinds == {
        "c1": ("filter", "shape"),
        "c2": ("filter", "channel", "shape"),  # c1 reads the image
        "d1": ("filter", "channel"),
        "d2": ("channel",),
    }  # d2's rows are the classes
    w = {k: v for k, v in params.items() if k.endswith("weight")}
    grads = penalty_grads(w, kinds, ALL3)
    for key in w:
        assert grads[key].dtype == np.float64

        def f(v, key=key):
            return penalty(w | {key: v}, kinds, ALL3)

        assert rel_error(grads[key], numerical_gradient(f, w[key])) < GRADCHECK_RTOL, key


def test_penalty_gradient_by_hand_and_zero_groups_get_zero():
    w = {"d1.weight": np.array([[3.0, 4.0], [0.0, 0.0]])}
    kinds = {"d1": ("filter",)}
    np.testing.assert_allclose(
        penalty_grads(w, kinds, SSLConfig(lambda_filter=2.0))["d1.weight"], [[1.2, 1.6], [0.0, 0.0]]
    )  # 2 * w / ||row||, row 1 is zero: subgradient 0
    assert penalty(w, kinds, SSLConfig(lambda_filter=2.0)) == pytest.approx(10.0)
    cols = penalty_grads(w, {"d1": ("channel",)}, SSLConfig(lambda_channel=1.0))["d1.weight"]
    np.testing.assert_allclose(cols, [[1.0, 1.0], [0.0, 0.0]])  # columns (3, 0) and (4, 0)
    w4 = np.zeros((2, 3, 2, 2))
    w4[:, 1, 0, 1] = [3.0, 4.0]
    assert group_norms(w4, "shape")[0, 1, 0, 1] == 5.0 and group_norms(w4, "shape").sum() == 5.0
    assert group_norms(w4, "channel").ravel().tolist() == [0.0, 5.0, 0.0]


def test_removal_of_zeroed_groups_keeps_the_logits_and_thins(rng):
    params = init_params(TINY_CONV, rng=rng, dtype=np.float64)
    for k in params:
        if k.endswith("bias"):
            params[k] = rng.standard_normal(params[k].shape)
    params["c1.weight"][1] = 0.0  # filter 1 of c1: output is the constant b (no ReLU in between)
    params["d1.weight"][2] = 0.0  # neuron 2 of d1: output ReLU(b), read by d2
    params["d1.bias"][2] = abs(params["d1.bias"][2]) + 0.5  # a positive constant, so folding matters
    params["c2.weight"][:, 0] = 0.0  # channel 0 of c2
    masks = all_ones_masks(params)
    x = rng.standard_normal((6, 1, 10, 10))
    before = forward(TINY_CONV, effective_params(params, masks), x)[0]
    cfg = SSLConfig(lambda_filter=1.0, lambda_channel=1.0, threshold=1e-9)
    new = remove_small_groups(TINY_CONV, params, masks, layer_kinds(TINY_CONV, cfg), cfg.threshold)
    assert alive_units(new, "c1").tolist() == [True, False, True]
    assert alive_units(new, "d1").tolist() == [True, True, False, True, True]
    assert not new["c2.weight"][:, 0].any() and not new["c1.bias"][1] and not new["d2.weight"][:, 2].any()
    assert_close(forward(TINY_CONV, effective_params(params, new), x)[0], before)
    small, small_params, report = thin(TINY_CONV, params, new)
    # c1 keeps only filter 2: filter 1 was removed, and filter 0 is read by nothing once c2's channel 0 went
    assert small.param_shapes()["c1.weight"] == (1, 1, 3, 3) and small.param_shapes()["d1.weight"][0] == 4
    assert_close(forward(small, small_params, x)[0], before)


def test_a_layer_keeps_its_largest_unit_when_all_fall_below_the_threshold(rng):
    params = init_params(TINY_CONV, rng=rng)
    params["d1.weight"] *= 1e-6
    params["d1.weight"][3] *= 2
    cfg = SSLConfig(lambda_filter=1.0, threshold=1.0)
    kinds = {"d1": ("filter",)}
    new = remove_small_groups(TINY_CONV, params, all_ones_masks(params), kinds, cfg.threshold)
    assert alive_units(new, "d1").tolist() == [False, False, False, True, False]


def test_the_training_step_adds_the_penalty_only_in_its_phase(rng):
    spec = get_spec("lenet-300-100")
    x = rng.random((8, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    sgd = SGDConfig(base_lr=0.1, momentum=0.0, weight_decay=0.0, lr_policy="fixed")
    cfg = TrainConfig(iterations=2, batch_size=8, sgd=sgd)
    method = SSL(
        SSLConfig(
            lambda_filter=0.01,
            lambda_channel=0.02,
            iterations=1,
            prune_interval=1,
            threshold=0.0,
            finetune_iterations=1,
        )
    )
    state = new_run(spec, 8, cfg, seed=0)
    state.method_state = method.init_state(spec, state.params)
    for it in range(2):
        w0 = {k: v.copy() for k, v in state.params.items()}
        _, data = loss_and_grads(spec, w0, x, y)
        extra = method.penalty_grads(it, w0, state.masks)
        train_step(state, x, y, cfg, method)
        key = "ip2.weight"
        want = w0[key] - 0.1 * (data[key] + (extra[key] if it == 0 else 0))
        assert_close(state.params[key], want)
        assert (extra is None) == (it == 1)


def test_config_refusals_and_registration():
    with pytest.raises(ConfigError, match="at least one"):
        SSLConfig()
    with pytest.raises(ConfigError, match="lambda_channel"):
        SSLConfig(lambda_channel=-1.0)
    with pytest.raises(ConfigError, match="no layer 'conv9'"):
        layer_kinds(get_spec("lenet-5"), SSLConfig(lambda_filter=1.0, layers=("conv9",)))
    with pytest.raises(ConfigError, match="no group"):
        layer_kinds(get_spec("lenet-300-100"), SSLConfig(lambda_shape=1.0))  # fc layers have no shape groups
    assert methods()["ssl"] is SSL and "ssl" in reproducible_methods()
    exp = experiment("lenet-5", "ssl")
    assert exp.train.iterations == 7_000 and exp.method.config.lambda_filter > 0


def test_a_short_real_run_removes_neurons_and_the_thinned_net_predicts_the_same(mnist):
    x_train, y_train, x_test, y_test = mnist
    spec = get_spec("lenet-300-100")
    data = Data(x_train[:3000], y_train[:3000], x_test[:100], y_test[:100])
    dense, _ = run_training(spec, data, TrainConfig(iterations=100, test_interval=10**6), seed=0)
    cfg = SSLConfig(
        lambda_filter=0.02,
        lambda_channel=0.02,
        threshold=0.05,
        iterations=200,
        prune_interval=100,
        finetune_iterations=20,
    )
    state, _ = run_training(
        spec,
        data,
        TrainConfig(iterations=220, test_interval=10**6),
        seed=0,
        method=SSL(cfg),
        params=dense.params,
        masks=dense.masks,
    )
    removed = {n: int((~alive_units(state.masks, n)).sum()) for n in ("ip1", "ip2")}
    assert removed["ip1"] > 0 and removed["ip2"] > 0, removed
    assert not state.masks["ip1.weight"].all(axis=0).all()  # input pixels went too (channel-wise groups)
    small, small_params, report = thin(spec, state.params, state.masks)
    assert report.changed
    eff = effective_params(state.params, state.masks)
    assert np.array_equal(
        forward(small, small_params, x_test[:2000])[0].argmax(1),
        forward(spec, eff, x_test[:2000])[0].argmax(1),
    )


def test_too_strong_a_penalty_never_leaves_a_constant_net(rng):
    """Every group below the threshold: each layer keeps one path (its largest useful filter and channel), so
    the net still depends on its input and thins to one unit per hidden layer."""
    params = init_params(TINY_CONV, rng=rng, dtype=np.float64)
    cfg = SSLConfig(lambda_filter=1.0, lambda_channel=1.0, lambda_shape=1.0, threshold=1e9)
    new = remove_small_groups(
        TINY_CONV, params, all_ones_masks(params), layer_kinds(TINY_CONV, cfg), cfg.threshold
    )
    small, small_params, _ = thin(TINY_CONV, params, new)
    assert [op.w_shape[0] for op in small.layers] == [1, 1, 1, 3]
    x = rng.standard_normal((4, 1, 10, 10))
    out = forward(small, small_params, x)[0]
    assert_close(out, forward(TINY_CONV, effective_params(params, new), x)[0])
    assert np.ptp(out, axis=0).max() > 1e-6  # still a function of the input
