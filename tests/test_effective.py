"""W*T for the training loop: the path is chosen from density, and both paths train the same net."""

import numpy as np
import pytest

from refdns.effective import SPARSE_MAX_DENSITY, SPARSE_MIN_WEIGHTS, EffectiveParams, choose_path
from refdns.layers import SparseWeight
from refdns.nets import get_spec
from refdns.nets.sequential import init_params, loss_and_grads
from refdns.prune.dns import DNS, default_config
from refdns.run import TrainConfig, effective_params, new_run
from refdns.train import train
from tests.tolerances import assert_close

L300 = get_spec("lenet-300-100")


def _masks(params, densities, rng):
    return {k: rng.random(v.shape) < densities.get(k, 1.0) for k, v in params.items()}


def test_path_is_chosen_from_density():
    assert choose_path(1.0, sparse_capable=True) == "unmasked"
    assert choose_path(SPARSE_MAX_DENSITY, sparse_capable=True) == "sparse"
    assert choose_path(np.nextafter(SPARSE_MAX_DENSITY, 1), sparse_capable=True) == "dense"
    assert choose_path(0.0, sparse_capable=True) == "sparse"
    assert choose_path(0.01, sparse_capable=False) == "dense"  # conv weights, tiny layers
    assert choose_path(0.3, sparse_capable=True, sparse_max_density=0.5) == "sparse"
    assert 0.0 < SPARSE_MAX_DENSITY < 1.0
    # ip3 (10x100) is below the size where the kernels pay off; ip1 and ip2 are above it.
    ws = EffectiveParams(L300)
    assert ws.sparse_capable == {"ip1.weight", "ip2.weight"} and 10 * 100 < SPARSE_MIN_WEIGHTS <= 100 * 300


def test_workspace_follows_each_masks_density_and_notices_changes(rng):
    params = init_params(L300, rng=rng)
    masks = _masks(params, {"ip1.weight": 0.02, "ip2.weight": 0.5, "ip2.bias": 0.5, "ip3.weight": 0.02}, rng)
    ws = EffectiveParams(L300)
    eff = ws(params, masks)
    assert ws.paths == {"ip1.weight": "sparse", "ip1.bias": "unmasked", "ip2.weight": "dense",
                        "ip2.bias": "dense", "ip3.weight": "dense", "ip3.bias": "unmasked"}
    assert isinstance(eff["ip1.weight"], SparseWeight) and eff["ip3.bias"] is params["ip3.bias"]
    reference = effective_params(params, masks)
    np.testing.assert_array_equal(eff["ip1.weight"].toarray(), reference["ip1.weight"])
    np.testing.assert_array_equal(eff["ip2.weight"], reference["ip2.weight"])
    # Masks edited in place between calls: densities cross the crossover both ways.
    masks["ip1.weight"][...] = True
    masks["ip2.weight"][:, 1:] = False
    masks["ip3.weight"][...] = True
    eff = ws(params, masks)
    assert ws.paths["ip1.weight"] == "unmasked" and ws.paths["ip2.weight"] == "sparse"
    assert ws.paths["ip3.weight"] == "unmasked" and eff["ip3.weight"] is params["ip3.weight"]
    np.testing.assert_array_equal(eff["ip2.weight"].toarray(), effective_params(params, masks)["ip2.weight"])
    # A change that keeps the density still rebuilds the structure.
    masks["ip2.weight"][:, 0], masks["ip2.weight"][:, 1] = False, masks["ip2.weight"][:, 0].copy()
    eff = ws(params, masks)
    np.testing.assert_array_equal(eff["ip2.weight"].toarray(), effective_params(params, masks)["ip2.weight"])


def test_engine_gives_the_same_loss_and_gradients_on_both_paths(rng):
    params = init_params(L300, rng=rng)
    masks = _masks(params, {"ip1.weight": 0.03, "ip2.weight": 0.05, "ip3.weight": 0.2}, rng)
    x = rng.random((8, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    sparse = EffectiveParams(L300, sparse_max_density=1.0, sparse_min_weights=0)(params, masks)
    assert all(isinstance(sparse[f"{n}.weight"], SparseWeight) for n in ("ip1", "ip2", "ip3"))
    ls, gs = loss_and_grads(L300, sparse, x, y)
    ld, gd = loss_and_grads(L300, effective_params(params, masks), x, y)
    assert ls == pytest.approx(ld, rel=1e-5)
    for k in gd:
        assert_close(gs[k], gd[k])


def test_dns_training_takes_the_same_path_through_weights_either_way(mnist):
    """Twenty DNS steps on real MNIST from a briefly trained net, all-sparse vs all-dense: same masks,
    parameters equal to float32 rounding."""
    x_train, y_train = mnist[0][:2000], mnist[1][:2000]
    cfg = TrainConfig(iterations=40, test_interval=0)
    dense = train(new_run(L300, len(x_train), cfg, seed=0), x_train, y_train, cfg)
    surgery = TrainConfig(iterations=20, test_interval=0)
    runs = {}
    for name, crossover in (("sparse", 1.0), ("dense", 0.0)):
        run = new_run(L300, len(x_train), surgery, seed=1, params=dense.params)
        run.workspace = EffectiveParams(L300, sparse_max_density=crossover, sparse_min_weights=0)
        runs[name] = train(run, x_train, y_train, surgery, method=DNS(default_config("lenet-300-100")))
        weight_paths = {run.workspace.paths[f"{n}.weight"] for n in L300.layer_names}
        assert weight_paths == {name}
    s, d = runs["sparse"], runs["dense"]
    assert s.history.mask_updates == d.history.mask_updates
    for k in s.params:
        assert np.array_equal(s.masks[k], d.masks[k]), k
        assert_close(s.params[k], d.params[k])
        assert_close(s.velocity[k], d.velocity[k])
    kept = sum(int(m.sum()) for m in s.masks.values()) / L300.n_params()
    assert kept < 0.2  # surgery really pruned, so the sparse kernels did real work
