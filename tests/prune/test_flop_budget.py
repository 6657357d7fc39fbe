"""FLOPs per layer against a hand count, and iterative structured pruning stopped by a FLOP budget."""

import numpy as np
import pytest

from refdns.errors import ConfigError
from refdns.nets import get_spec
from refdns.nets.flops import layer_flops, net_flops
from refdns.nets.sequential import init_params
from refdns.prune.base import all_ones_masks
from refdns.prune.structured import StructuredConfig, StructuredPruning, flop_step_removals
from refdns.prune.units import alive_units, remove_units, unit_layers
from refdns.thin import thin
from tests.prune.test_structured import TINY_CONV


def test_lenet5_flops_by_hand():
    # conv1: 24x24 map, 1 channel, 5x5, 20 filters: 2 * 576 * (1*25 + 1) * 20
    # conv2: 8x8 map, 20 channels, 5x5, 50 filters: 2 * 64 * (20*25 + 1) * 50
    # ip1: 800 -> 500: (2*800 - 1) * 500;  ip2: 500 -> 10: (2*500 - 1) * 10
    want = {"conv1": 599_040, "conv2": 3_206_400, "ip1": 799_500, "ip2": 9_990}
    assert layer_flops(get_spec("lenet-5")) == want
    assert net_flops(get_spec("lenet-5")) == sum(want.values()) == 4_614_930


def test_lenet300_flops_by_hand():
    want = {"ip1": (2 * 784 - 1) * 300, "ip2": (2 * 300 - 1) * 100, "ip3": (2 * 100 - 1) * 10}
    assert layer_flops(get_spec("lenet-300-100")) == want


def test_fewer_units_shrink_the_next_layers_inputs_by_hand():
    # conv2 keeps 25 of 50 filters, reading 10 of conv1's 20; ip1 reads 25 * 16 = 400 inputs
    got = layer_flops(get_spec("lenet-5"), {"conv1": 10, "conv2": 25, "ip1": 250})
    assert got == {
        "conv1": 2 * 576 * 26 * 10,
        "conv2": 2 * 64 * (10 * 25 + 1) * 25,
        "ip1": (2 * 400 - 1) * 250,
        "ip2": (2 * 250 - 1) * 10,
    }


def test_the_count_of_kept_units_equals_the_count_of_the_thinned_net(rng):
    params = init_params(TINY_CONV, rng=rng)
    units = unit_layers(TINY_CONV)
    masks = remove_units(all_ones_masks(params), units["c1"], [0])
    masks = remove_units(masks, units["c2"], [1, 3])
    masks = remove_units(masks, units["d1"], [2])
    small, _, _ = thin(TINY_CONV, params, masks)
    kept = {n: int(np.count_nonzero(alive_units(masks, n))) for n in units}
    assert layer_flops(TINY_CONV, kept) == layer_flops(small)
    with pytest.raises(ValueError, match="no layer"):
        layer_flops(TINY_CONV, {"c9": 1})
    with pytest.raises(ValueError, match=r"units\['c1'\]=4"):
        layer_flops(TINY_CONV, {"c1": 4})


def test_flop_step_removes_the_least_uniform_fraction_that_meets_the_aim():
    spec = get_spec("lenet-300-100")
    alive = {"ip1": 300, "ip2": 100}
    aim = 0.5 * net_flops(spec)
    kept = flop_step_removals(spec, alive, ("ip1", "ip2"), aim)
    assert net_flops(spec, kept) <= aim
    # one unit fewer removed from either layer would miss the aim or break uniformity: check the count of a
    # slightly smaller fraction misses
    f = 1 - kept["ip1"] / 300
    looser = {
        "ip1": 300 - int(np.floor((f - 0.004) * 300 + 0.5)),
        "ip2": 100 - int(np.floor((f - 0.004) * 100 + 0.5)),
    }
    assert net_flops(spec, looser) > aim
    assert flop_step_removals(spec, alive, ("ip1", "ip2"), 10**9) == alive  # already met: nothing goes


@pytest.mark.parametrize("criterion", ["l1", "random"])
def test_structured_pruning_to_a_flop_budget_meets_it_in_steps(rng, criterion):
    spec = get_spec("lenet-5")
    params = init_params(spec, rng=rng)
    masks = all_ones_masks(params)
    budget = 1_000_000
    method = StructuredPruning(
        StructuredConfig(criterion=criterion, flops=budget, steps=3, step_iterations=1)
    )
    state = method.init_state(spec, params)
    history = []
    for it in range(3):
        method.update_masks(it, params, masks, state, rng)
        history.append(method.flops(masks))
    start = net_flops(spec)
    for r, f in enumerate(history, 1):  # each step meets its linear aim
        assert f <= start - (start - budget) * r / 3
    assert history[0] > history[1] > history[2] and history[-1] <= budget
    assert int(state["flops_start"]) == start
    small, _, _ = thin(spec, params, masks)
    assert net_flops(small) == history[-1]


def test_flop_budget_only_on_listed_layers_and_bad_budgets_are_refused(rng):
    spec = get_spec("lenet-5")
    params = init_params(spec, rng=rng)
    masks = all_ones_masks(params)
    method = StructuredPruning(
        StructuredConfig(criterion="l1", flops=3_000_000, flop_layers=("conv2",), steps=1)
    )
    state = method.init_state(spec, params)
    method.update_masks(0, params, masks, state, rng)
    assert alive_units(masks, "conv1").all() and alive_units(masks, "ip1").all()
    assert not alive_units(masks, "conv2").all() and method.flops(masks) <= 3_000_000
    for cfg, msg in (
        (dict(flops=10**8), "not below"),
        (dict(flops=1_000), "cannot be met"),
        (dict(flops=10**6, flop_layers=("ip2",)), "output layer"),
        (dict(flops=10**6, flop_layers=("conv7",)), "no layer 'conv7'"),
    ):
        with pytest.raises(ConfigError, match=msg):
            StructuredPruning(StructuredConfig(criterion="l1", **cfg)).init_state(spec, params)
    with pytest.raises(ConfigError, match="exactly one"):
        StructuredConfig(criterion="l1", flops=10, fractions={"ip1": 0.5})
    with pytest.raises(ConfigError, match="flop_layers only"):
        StructuredConfig(criterion="l1", fractions={"ip1": 0.5}, flop_layers=("ip1",))


def test_a_run_file_chooses_the_flop_budget():
    from refdns import runfile

    text = (
        'net = "lenet-5"\n[method]\nname = "structured"\ncriterion = "l1"\nflops = 1000000\n'
        'flop_layers = ["conv2", "ip1"]\nsteps = 4\nstep_iterations = 250\n[train]\niterations = 1000\n'
    )
    exp, _ = runfile.from_dict(runfile.loads(text))
    assert isinstance(exp.method, StructuredPruning)
    assert exp.method.config.flops == 1_000_000 and exp.method.config.flop_layers == ("conv2", "ip1")
    again, _ = runfile.from_dict(runfile.loads(runfile.dumps(runfile.to_dict(exp))))
    assert again.method.config == exp.method.config
