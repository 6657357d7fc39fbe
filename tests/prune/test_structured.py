"""Structured pruning: each criterion against a hand computation, the unit bookkeeping (including LeNet-5's
channel-major flatten), the iterative schedule, removed units held at exactly zero, and the refusals."""

import numpy as np
import pytest

from refdns.errors import ConfigError
from refdns.layers import softmax_cross_entropy
from refdns.nets import get_spec
from refdns.nets.sequential import NetSpec, Op, forward, forward_from, init_params
from refdns.optim import SGDConfig
from refdns.pipeline import experiment
from refdns.prune import criteria
from refdns.prune.base import all_ones_masks, methods
from refdns.prune.structured import StructuredConfig, StructuredPruning
from refdns.prune.units import (
    alive_units,
    effective_params,
    remove_units,
    unit_ablation_losses,
    unit_activations,
    unit_layers,
)
from refdns.run import TrainConfig, new_run
from refdns.train import train_step
from tests.prune.tiny import TINY, tiny_batch

# A tiny conv net with the LeNet-5 pattern: conv -> pool -> conv -> pool -> flatten -> dense -> relu -> dense.
TINY_CONV = NetSpec(
    name="tiny-conv",
    input_shape=(1, 10, 10),
    n_classes=3,
    ops=(
        Op("conv", "c1", w_shape=(3, 1, 3, 3), b_shape=(3,)),  # (N, 3, 8, 8)
        Op("pool", size=2, stride=2),  # (N, 3, 4, 4)
        Op("conv", "c2", w_shape=(4, 3, 2, 2), b_shape=(4,)),  # (N, 4, 3, 3)
        Op("pool", size=2, stride=1),  # (N, 4, 2, 2)
        Op("flatten"),  # (N, 16): c2's filter f is columns 4f:4f+4 of d1
        Op("dense", "d1", w_shape=(5, 16), b_shape=(5,)),
        Op("relu"),
        Op("dense", "d2", w_shape=(3, 5), b_shape=(3,)),
    ),
)
ALL = list(criteria.CRITERIA)


# ---- criteria against hand computations ----------------------------------------------------------------

A = np.array([[[0.0, 2.0], [1.0, 0.0]], [[4.0, 0.0], [0.0, 0.0]]])  # (N=2, F=2, M=2)
DA = np.array([[[1.0, -1.0], [2.0, 0.5]], [[0.5, 3.0], [-1.0, 1.0]]])


def test_mean_activation_by_hand():
    # unit 0: (0 + 2 + 4 + 0) / 4; unit 1: (1 + 0 + 0 + 0) / 4
    assert criteria.mean_activation(A) == pytest.approx([1.5, 0.25])


def test_apoz_by_hand():
    # unit 0 zeros: 0, 0 of [0, 2, 4, 0] -> 2/4; unit 1: [1, 0, 0, 0] -> 3/4
    assert criteria.apoz(A) == pytest.approx([0.5, 0.75])
    assert criteria.apoz_score(A) == pytest.approx([0.5, 0.25])


def test_entropy_by_hand():
    # Global average pooling: unit 0 -> [1, 2], unit 1 -> [0.5, 0]; two values in 2 bins -> p = (1/2, 1/2).
    assert criteria.entropy(A, bins=2) == pytest.approx([np.log(2), np.log(2)])
    # Four images, 2 bins over [0, 3]: values 0, 0, 1 fall in [0, 1.5), 3 in [1.5, 3] -> p = (3/4, 1/4).
    a = np.array([0.0, 0.0, 1.0, 3.0]).reshape(4, 1)
    h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert criteria.entropy(a, bins=2) == pytest.approx([h])
    assert criteria.entropy(np.ones((5, 1)), bins=4) == pytest.approx([0.0])  # a constant unit
    assert criteria.scaled_entropy(a, bins=2) == pytest.approx([h * 1.0])  # mean |a| = 4/4


def test_l1_norm_by_hand():
    w = np.array([[[[1.0, -2.0]]], [[[0.5, 0.0]]]])  # (F=2, C=1, 1, 2)
    assert criteria.l1_norm(w) == pytest.approx([3.0, 0.5])


def test_taylor_by_hand():
    # per image and unit: |mean_m a * da|
    # n=0: unit 0 |(0*1 + 2*-1)/2| = 1, unit 1 |(1*2 + 0)/2| = 1
    # n=1: unit 0 |(4*0.5 + 0)/2| = 1, unit 1 |0| = 0     -> mean over images: [1, 0.5], l2 norm sqrt(1.25)
    assert criteria.taylor(A, DA) == pytest.approx(np.array([1.0, 0.5]) / np.sqrt(1.25))


def test_random_scores_come_from_the_rng():
    a = criteria.unit_scores("random", w=np.zeros((4, 2)), rng=np.random.default_rng(1))
    b = criteria.unit_scores("random", w=np.zeros((4, 2)), rng=np.random.default_rng(1))
    assert np.array_equal(a, b) and a.shape == (4,)


def test_unit_activations_and_their_gradient_by_hand(rng):
    params = init_params(TINY, rng=rng, dtype=np.float64)
    params["fc1.bias"] = rng.standard_normal(6)
    x, y = tiny_batch(rng, n=5)
    x = x.astype(np.float64)
    (a, da), = unit_activations(TINY, params, x, y).values()
    h = x.reshape(5, 9) @ params["fc1.weight"].T + params["fc1.bias"]
    a_hand = np.maximum(h, 0)
    z = a_hand @ params["fc2.weight"].T + params["fc2.bias"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(5), y] -= 1
    da_hand = p @ params["fc2.weight"] / 5  # dL/da of the mean loss
    np.testing.assert_allclose(a, a_hand, rtol=1e-12)
    np.testing.assert_allclose(da, da_hand, rtol=1e-10, atol=1e-14)


# ---- one-shot sensitivity against brute force ------------------------------------------------------------

def conv_params64(rng):
    params = init_params(TINY_CONV, rng=rng, dtype=np.float64)
    for k in params:
        if k.endswith("bias"):
            params[k] = 0.1 + 0.3 * np.abs(rng.standard_normal(params[k].shape))  # d1 units fire
    return params


def brute_sensitivity(spec, params, masks, x, y, layer):
    """s_j = L(W with unit j removed) - L(W), L by the ordinary forward of a copy whose unit j has its
    weights and bias zeroed (the next layer untouched), one unit at a time."""
    eff = effective_params(params, masks)
    base, _ = softmax_cross_entropy(forward(spec, eff, x)[0], y)
    out = []
    for j in range(params[f"{layer}.weight"].shape[0]):
        cut = {k: v.copy() for k, v in eff.items()}
        cut[f"{layer}.weight"][j] = 0
        cut[f"{layer}.bias"][j] = 0
        out.append(softmax_cross_entropy(forward(spec, cut, x)[0], y)[0] - base)
    return np.array(out)


@pytest.mark.parametrize("layer", ["c1", "c2", "d1"])
def test_sensitivity_matches_brute_force_float64(rng, layer):
    params = conv_params64(rng)
    masks = all_ones_masks(params)
    x = rng.standard_normal((12, 1, 10, 10))
    y = rng.integers(0, 3, 12)
    loss, removed = unit_ablation_losses(TINY_CONV, effective_params(params, masks), x, y, [layer])
    got = criteria.unit_scores("sensitivity", loss_removed=removed[layer], loss=loss)
    want = brute_sensitivity(TINY_CONV, params, masks, x, y, layer)
    # nearly every unit matters (a d1 unit the ReLU silences on the whole batch scores 0): not 0 == 0
    assert np.count_nonzero(np.abs(want) > 1e-6) >= len(want) - 1
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("layer,dead", [("c1", [0]), ("c2", [1, 3]), ("d1", [2])])
def test_sensitivity_of_removed_units_is_zero_like_brute_force(rng, layer, dead):
    """A unit already removed scores exactly 0 (removing it again changes nothing) without being re-run;
    like every criterion it is scored, and lowest_alive never picks it again."""
    params = conv_params64(rng)
    masks = remove_units(all_ones_masks(params), unit_layers(TINY_CONV)[layer], dead)
    x = rng.standard_normal((12, 1, 10, 10))
    y = rng.integers(0, 3, 12)
    alive = {layer: alive_units(masks, layer)}
    loss, removed = unit_ablation_losses(TINY_CONV, effective_params(params, masks), x, y, [layer], alive)
    got = criteria.sensitivity(removed[layer], loss)
    want = brute_sensitivity(TINY_CONV, params, masks, x, y, layer)
    assert (got[dead] == 0).all() and (want[dead] == 0).all()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    # through the method: the next unit removed is the alive one of lowest brute-force score
    n_units = unit_layers(TINY_CONV)[layer].n_units
    cfg = StructuredConfig(criterion="sensitivity", counts={layer: len(dead) + 1}, steps=1, step_iterations=0,
                           samples=12)
    method = StructuredPruning(cfg, x, y)
    method.init_state(TINY_CONV, params)
    new = method.prune_step(1, params, masks, np.random.default_rng(0))
    now_dead = np.flatnonzero(~alive_units(new, layer))
    live = np.setdiff1d(np.arange(n_units), dead)
    assert sorted(now_dead) == sorted([*dead, int(live[np.argmin(want[live])])])


def test_forward_from_is_the_tail_of_forward(rng):
    params = conv_params64(rng)
    x = rng.standard_normal((3, 1, 10, 10))
    logits, cache = forward(TINY_CONV, params, x, keep_outputs=True)
    for start in range(1, len(TINY_CONV.ops)):
        assert np.array_equal(forward_from(TINY_CONV, params, cache.outputs[start - 1], start), logits)
    with pytest.raises(ValueError, match="start"):
        forward_from(TINY_CONV, params, x, 0)


def test_sensitivity_refusals():
    with pytest.raises(ConfigError, match="every unit of layer 'd1'"):
        StructuredConfig(criterion="sensitivity", fractions={"d1": 1.0})
    x, y = np.zeros((2, 1, 10, 10), np.float32), np.zeros(2, np.int64)
    with pytest.raises(ConfigError, match="every unit of layer 'c2'"):
        StructuredPruning(StructuredConfig(criterion="sensitivity", counts={"c2": 4}), x, y).init_state(
            TINY_CONV, {})
    with pytest.raises(ConfigError, match="training data"):
        StructuredPruning(StructuredConfig(criterion="sensitivity", counts={"d1": 1})).init_state(
            TINY_CONV, {})


# ---- units and the flatten ------------------------------------------------------------------------------

def test_lenet5_units_and_channel_major_flatten():
    units = unit_layers(get_spec("lenet-5"))
    assert list(units) == ["conv1", "conv2", "ip1"]
    assert (units["conv2"].next_layer, units["conv2"].block) == ("ip1", 16)
    assert units["conv2"].next_columns(3) == slice(48, 64)
    assert (units["conv1"].next_is_conv, units["conv1"].block) == (True, 1)
    assert list(unit_layers(get_spec("lenet-300-100"))) == ["ip1", "ip2"]
    assert unit_layers(TINY_CONV)["c2"].block == 4


@pytest.mark.parametrize("layer,j", [("c1", 1), ("c2", 2), ("d1", 4)])
def test_a_removed_unit_is_cut_from_the_net(rng, layer, j):
    """After remove_units, the unit's weights no longer matter: outputs equal a net where the unit's
    whole output map was zeroed, and changing its parameters changes nothing."""
    params = init_params(TINY_CONV, rng=rng, dtype=np.float64)
    for k in params:
        if k.endswith("bias"):
            params[k] = rng.standard_normal(params[k].shape)
    masks = remove_units(all_ones_masks(params), unit_layers(TINY_CONV)[layer], [j])
    x = rng.standard_normal((4, 1, 10, 10))
    out, _ = forward(TINY_CONV, effective_params(params, masks), x)
    params[f"{layer}.weight"][j] += 5.0
    params[f"{layer}.bias"][j] += 5.0
    out2, _ = forward(TINY_CONV, effective_params(params, masks), x)
    assert np.array_equal(out, out2)
    _, cache = forward(TINY_CONV, effective_params(params, masks), x, keep_outputs=True)
    act = cache.outputs[unit_layers(TINY_CONV)[layer].act_index]
    assert not act[:, j].any()


# ---- the method ---------------------------------------------------------------------------------------

def conv_method(criterion, **kw):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 1, 10, 10)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    cfg = StructuredConfig(criterion=criterion, **({"fractions": {"c1": 0.34, "c2": 0.5, "d1": 0.6}} | kw))
    return StructuredPruning(cfg, x, y)


@pytest.mark.parametrize("criterion", ALL)
def test_steps_remove_units_gradually_and_keep_them_at_zero(rng, criterion):
    method = conv_method(criterion, steps=2, step_iterations=3, samples=16)
    params = init_params(TINY_CONV, rng=rng)
    cfg = TrainConfig(iterations=6, batch_size=8, sgd=SGDConfig(base_lr=0.1))
    state = new_run(TINY_CONV, 40, cfg, seed=0, params=params)
    state.method_state = method.init_state(TINY_CONV, state.params)
    x, y = method.x, method.y
    removed = []
    for _ in range(6):
        b = rng.choice(40, 8, replace=False)
        train_step(state, x[b], y[b], cfg, method)
        removed.append({n: int((~unit_alive(state.masks, n)).sum()) for n in ("c1", "c2", "d1")})
    # targets: c1 round(0.34*3)=1, c2 2, d1 3; step 1 (iteration 0) removes round(t/2), step 2 (iteration 3) t
    assert removed[:3] == [{"c1": 1, "c2": 1, "d1": 2}] * 3
    assert removed[5] == {"c1": 1, "c2": 2, "d1": 3}
    for n in ("c1", "c2", "d1"):
        dead = ~unit_alive(state.masks, n)
        assert not state.params[f"{n}.weight"][dead].any() and not state.params[f"{n}.bias"][dead].any()


def unit_alive(masks, layer):
    w = masks[f"{layer}.weight"]
    return w.reshape(w.shape[0], -1).any(axis=1) | masks[f"{layer}.bias"]


def test_l1_removes_the_smallest_filters(rng):
    params = init_params(TINY_CONV, rng=rng)
    params["c2.weight"][[0, 3]] *= 1e-3
    method = StructuredPruning(StructuredConfig(criterion="l1", counts={"c2": 2}, steps=1, step_iterations=0))
    masks = all_ones_masks(params)
    method.update_masks(0, params, masks, method.init_state(TINY_CONV, params), rng)
    assert unit_alive(masks, "c2").tolist() == [False, True, True, False]


def test_refusals_name_the_layer():
    with pytest.raises(ConfigError, match="every unit of layer 'd1'"):
        StructuredConfig(criterion="l1", fractions={"d1": 1.0})
    with pytest.raises(ConfigError, match="criterion"):
        StructuredConfig(criterion="magic", fractions={"d1": 0.5})
    with pytest.raises(ConfigError, match="exactly one"):
        StructuredConfig(criterion="l1")
    for counts, msg in [({"d1": 6}, "layer 'd1', which has only 5"), ({"c2": 4}, "every unit of layer 'c2'"),
                        ({"d2": 1}, "output layer"), ({"zz": 1}, "no layer 'zz'")]:
        m = StructuredPruning(StructuredConfig(criterion="l1", counts=counts))
        with pytest.raises(ConfigError, match=msg):
            m.init_state(TINY_CONV, {})
    with pytest.raises(ConfigError, match="training data"):
        StructuredPruning(StructuredConfig(criterion="taylor", counts={"d1": 1})).init_state(TINY_CONV, {})


def test_recipes_for_both_nets_and_registered():
    assert methods()["structured"] is StructuredPruning
    for net, layers in [("lenet-5", {"conv1", "conv2", "ip1"}), ("lenet-300-100", {"ip1", "ip2"})]:
        exp = experiment(net, "structured")
        assert set(exp.method.config.fractions) == layers
        assert exp.train.iterations == 5_000
        exp.method.init_state(get_spec(net), {})


def test_a_resumed_run_finds_its_net_without_init_state(rng):
    """train() skips init_state when resuming from a checkpoint; the method finds LeNet-300-100 by shapes."""
    spec = get_spec("lenet-300-100")
    params = init_params(spec, rng=rng)
    cfg = StructuredConfig(criterion="l1", counts={"ip2": 10}, steps=2, step_iterations=5)
    method = StructuredPruning(cfg)
    masks = all_ones_masks(params)
    method.update_masks(5, params, masks, {"step": np.array(1)}, rng)
    assert (~unit_alive(masks, "ip2")).sum() == 10
