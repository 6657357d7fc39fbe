"""Thinning: the smaller net computes what the masked net computes (tiny nets in float64; a structured-pruned
LeNet-5 on the whole real MNIST test set), removes the right rows and columns, and leaves an unpruned net
unchanged."""

import numpy as np
import pytest

from refdns.nets import get_spec
from refdns.nets.sequential import forward, init_params, predict
from refdns.pipeline import Data, run_training
from refdns.prune.base import all_ones_masks
from refdns.prune.structured import StructuredConfig, StructuredPruning
from refdns.prune.units import effective_params, remove_units, unit_layers
from refdns.thin import thin
from refdns.run import TrainConfig
from tests.prune.test_structured import TINY_CONV
from tests.tolerances import assert_close


def random_net(rng):
    params = init_params(TINY_CONV, rng=rng, dtype=np.float64)
    for k in params:
        if k.endswith("bias"):
            params[k] = rng.standard_normal(params[k].shape)
    return params


def test_thinned_net_equals_the_masked_net(rng):
    params = random_net(rng)
    units = unit_layers(TINY_CONV)
    masks = all_ones_masks(params)
    masks = remove_units(masks, units["c1"], [1])
    masks = remove_units(masks, units["c2"], [0, 2])
    masks = remove_units(masks, units["d1"], [3])
    for k in masks:  # unstructured zeros on top stay zeros inside the kept units
        masks[k] &= rng.random(masks[k].shape) > 0.2
    new_spec, new_params, report = thin(TINY_CONV, params, masks)
    assert report.changed and new_spec.name != TINY_CONV.name
    shapes = new_spec.param_shapes()
    assert shapes["c1.weight"] == (2, 1, 3, 3) and shapes["c2.weight"] == (2, 2, 2, 2)
    assert shapes["d1.weight"][1] == 8  # 2 kept c2 filters x a 2x2 map
    assert shapes["d2.weight"][1] == shapes["d1.weight"][0]
    # d1 reads c2's kept filters 1 and 3: columns 4..7 and 12..15 of the original
    eff = effective_params(params, masks)
    columns = [*range(4, 8), *range(12, 16)]
    np.testing.assert_array_equal(new_params["d1.weight"], eff["d1.weight"][[0, 1, 2, 4]][:, columns])
    x = rng.standard_normal((16, 1, 10, 10))
    assert_close(forward(new_spec, new_params, x)[0], forward(TINY_CONV, eff, x)[0])
    assert report.params_after < report.params_before


def test_an_unread_unit_is_removed_too(rng):
    params = random_net(rng)
    masks = all_ones_masks(params)
    masks["d2.weight"][:, 2] = False  # neuron 2 of d1 feeds nothing
    new_spec, new_params, report = thin(TINY_CONV, params, masks)
    assert new_spec.param_shapes()["d1.weight"][0] == 4
    x = rng.standard_normal((8, 1, 10, 10))
    eff = effective_params(params, masks)
    assert_close(forward(new_spec, new_params, x)[0], forward(TINY_CONV, eff, x)[0])


def test_a_net_without_a_fully_pruned_unit_comes_back_unchanged(rng):
    params = random_net(rng)
    masks = all_ones_masks(params)
    masks["c2.weight"][0, 0] = False  # unstructured only
    masks["d1.weight"][:, 0] = False  # column 0 alone is not a whole c2 block
    new_spec, new_params, report = thin(TINY_CONV, params, masks)
    assert new_spec is TINY_CONV and new_params is params
    assert not report.changed and "unchanged" in report.message


def test_a_layer_with_no_unit_left_is_refused(rng):
    params = random_net(rng)
    masks = remove_units(all_ones_masks(params), unit_layers(TINY_CONV)["c2"], range(4))
    # c2 has no filter left, and so c1's filters are read by nothing
    with pytest.raises(ValueError, match=r"every unit of layer\(s\) \['c1', 'c2'\]"):
        thin(TINY_CONV, params, masks)


def test_thinned_lenet5_predicts_like_the_masked_one_on_mnist(mnist):
    """A briefly trained LeNet-5 with half its conv1/conv2 filters and ip1 neurons removed by l1-norm:
    identical argmax on all 10,000 test images, logits within float32 tolerance."""
    x_train, y_train, x_test, y_test = mnist
    spec = get_spec("lenet-5")
    data = Data(x_train[:2000], y_train[:2000], x_test[:100], y_test[:100])  # the run's own test: small
    dense, _ = run_training(spec, data, TrainConfig(iterations=100, test_interval=10**6), seed=0)
    half = {"conv1": 0.5, "conv2": 0.5, "ip1": 0.5}
    method = StructuredPruning(StructuredConfig(criterion="l1", fractions=half, steps=2, step_iterations=20))
    state, _ = run_training(spec, data, TrainConfig(iterations=40, test_interval=10**6), seed=0,
                            method=method, params=dense.params, masks=dense.masks)
    new_spec, new_params, report = thin(spec, state.params, state.masks)
    assert [r.units_after for r in report.layers] == [10, 25, 250, 10]
    eff = effective_params(state.params, state.masks)
    assert np.array_equal(predict(new_spec, new_params, x_test), predict(spec, eff, x_test))
    for s in range(0, len(x_test), 2000):
        assert_close(forward(new_spec, new_params, x_test[s : s + 2000])[0],
                     forward(spec, eff, x_test[s : s + 2000])[0])
