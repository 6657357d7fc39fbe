"""Optimal Brain Surgeon: the surgery step on quadratics, the inverses, damping and the pruning method."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdns.errors import ConfigError, SingularHessianError
from refdns.hessian import gauss_newton_matrix, output_factors, param_vector
from refdns.nets.sequential import NetSpec, Op, init_params
from refdns.optim import SGDConfig
from refdns.prune.obs import (
    OBS,
    OBSConfig,
    damped_inverse,
    layer_inputs,
    layerwise_obs,
    obs_costs,
    obs_path,
    obs_prune,
    obs_remove,
    woodbury_inverse,
)
from refdns.run import TrainConfig, new_run
from refdns.train import train_step

TINY = NetSpec(
    "tiny",
    (1, 3, 3),
    3,
    (
        Op("flatten"),
        Op("dense", "fc1", w_shape=(5, 9), b_shape=(5,)),
        Op("relu"),
        Op("dense", "fc2", w_shape=(3, 5), b_shape=(3,)),
    ),
)


def _spd(rng, n, cond=50.0):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.geomspace(1.0, cond, n)) @ q.T


def _quad(H, w0):
    """The quadratic loss 1/2 (u - w0)^T H (u - w0), minimal at w0."""
    return lambda u: 0.5 * (u - w0) @ H @ (u - w0)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 9))
@settings(max_examples=20)
def test_obs_step_zeroes_w_q_and_the_loss_rises_by_exactly_L_q(seed, n):
    rng = np.random.default_rng(seed)
    H = _spd(rng, n)
    w = rng.standard_normal(n)
    L = _quad(H, w)
    h_inv = np.linalg.inv(H)
    costs = obs_costs(w, h_inv, np.ones(n, bool))
    for q in range(n):
        w1, _, L_q = obs_remove(w, h_inv, q)
        assert w1[q] == 0.0  # exactly, not approximately
        assert L_q == pytest.approx(costs[q], rel=1e-12)
        assert L(w1) == pytest.approx(L_q, rel=1e-9, abs=1e-13)
        # and no other point with w_q = 0 does better (the step is the constrained minimiser)
        other = w1 + 1e-3 * rng.standard_normal(n) * (np.arange(n) != q)
        assert L(other) >= L(w1)


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 9))
@settings(max_examples=15)
def test_obs_path_keeps_removed_weights_at_zero_and_each_step_costs_L_q(seed, n):
    rng = np.random.default_rng(seed)
    H = _spd(rng, n)
    w0 = rng.standard_normal(n)
    L = _quad(H, w0)
    cand = np.ones(n, bool)
    cand[0] = False  # not a candidate: it may move, never be removed
    removed, prev = [], 0.0
    for q, L_q, w in obs_path(w0, np.linalg.inv(H), cand, n - 2):
        removed.append(q)
        assert np.all(w[removed] == 0.0)
        # constrained minimiser over the free coordinates, solved directly
        free = np.setdiff1d(np.arange(n), removed)
        u = np.zeros(n)
        u[free] = np.linalg.solve(
            H[np.ix_(free, free)], H[np.ix_(free, free)] @ w0[free] + H[np.ix_(free, removed)] @ w0[removed]
        )
        np.testing.assert_allclose(w, u, rtol=1e-8, atol=1e-10)
        assert L(w) - prev == pytest.approx(L_q, rel=1e-7, abs=1e-11)
        prev = L(w)
    assert 0 not in removed and len(set(removed)) == n - 2


@pytest.mark.parametrize("block", [1, 3, 7])
def test_recursive_inverse_equals_the_direct_inverse(rng, block):
    X = rng.standard_normal((20, 6))
    alpha, P = 1e-3, 10
    direct = np.linalg.inv(alpha * np.eye(6) + X.T @ X / P)
    np.testing.assert_allclose(
        woodbury_inverse(X, alpha=alpha, n_samples=P, block=block),
        direct,
        rtol=1e-9,
        atol=1e-9 * np.abs(direct).max(),
    )


def test_recursive_inverse_of_a_net_is_the_damped_gauss_newton_inverse(rng):
    p = init_params(TINY, rng=rng, dtype=np.float64)
    x = rng.standard_normal((30, 1, 3, 3))
    y = rng.integers(0, 3, 30)
    X = output_factors(TINY, p, x, y)
    G = gauss_newton_matrix(TINY, p, x, y)
    alpha = 1e-2
    direct = np.linalg.inv(G + alpha * np.eye(len(G)))
    got = woodbury_inverse(X, alpha=alpha, n_samples=30)
    np.testing.assert_allclose(got, direct, rtol=1e-7, atol=1e-7 * np.abs(direct).max())


def test_singular_or_indefinite_hessians_get_damping_or_a_named_error(rng):
    A = rng.standard_normal((3, 6))
    H = A.T @ A  # rank 3 of 6: singular
    with pytest.raises(SingularHessianError, match="damping"):
        damped_inverse(H, damping=0.0)
    h_inv, info = damped_inverse(H, damping=1e-2)
    assert np.all(np.isfinite(h_inv)) and info["lambda"] > 0
    np.testing.assert_allclose(h_inv @ (H + info["lambda"] * np.eye(6)), np.eye(6), atol=1e-9)
    ill = np.diag([1.0, 1e-13])
    with pytest.raises(SingularHessianError, match="ill-conditioned"):
        damped_inverse(ill, damping=0.0)
    indefinite = np.diag([2.0, 1.0, -0.5])
    with pytest.raises(SingularHessianError, match="shift_indefinite"):
        damped_inverse(indefinite, damping=1e-3)
    h_inv, info = damped_inverse(indefinite, damping=1e-3, shift_indefinite=True)
    assert np.all(np.diag(h_inv) > 0) and info["eig_min"] == pytest.approx(-0.5)
    with pytest.raises(SingularHessianError, match="NaN"):
        damped_inverse(np.array([[1.0, np.nan], [np.nan, 1.0]]), damping=0.1)
    with pytest.raises(SingularHessianError, match="raise alpha"):
        woodbury_inverse(np.array([[1e200, 1e200]]), alpha=1e-300, n_samples=1)


def test_a_lost_positive_diagonal_raises_instead_of_nan():
    with pytest.raises(SingularHessianError, match="damping"):
        obs_remove(np.ones(2), np.array([[-1.0, 0.0], [0.0, 1.0]]), 0)


def _recon_err(W, Wp, X):
    return float(np.sum(((W - Wp) @ X.T) ** 2))


@pytest.mark.parametrize("allocation", ["global", "row"])
def test_layerwise_obs_hits_the_density_and_beats_magnitude(rng, allocation):
    M, D, S = 6, 12, 200
    X = rng.standard_normal((S, D)) @ rng.standard_normal((D, D)) * 0.3  # correlated inputs
    X[:, 3] = 0.0  # a dead input
    W = rng.standard_normal((M, D))
    out = layerwise_obs(W, X, [1.0, 0.5, 0.25], damping=1e-6, allocation=allocation)
    np.testing.assert_array_equal(out[1.0], W)
    live = np.arange(D) != 3
    Hd = 2 * X[:, live].T @ X[:, live]
    Hd += 1e-6 * np.mean(np.diag(Hd)) * np.eye(D - 1)
    for f in (0.5, 0.25):
        Wp = out[f]
        assert np.count_nonzero(Wp) == round(f * M * D)
        if allocation == "row":
            assert np.all(np.count_nonzero(Wp, axis=1) == round(f * D))
        assert np.all(Wp[:, 3] == 0)  # the free removals come first
        thr = np.sort(np.abs(W).ravel())[::-1][round(f * M * D) - 1]
        Wm = np.where(np.abs(W) >= thr, W, 0.0)
        assert _recon_err(W, Wp, X) < _recon_err(W, Wm, X)
        # each row is the constrained least-squares optimum for its own zero set
        for r in range(M):
            wl, pl = W[r, live], Wp[r, live]
            z, free = pl == 0, pl != 0
            u = np.zeros(D - 1)
            u[free] = np.linalg.solve(
                Hd[np.ix_(free, free)], Hd[np.ix_(free, free)] @ wl[free] + Hd[np.ix_(free, z)] @ wl[z]
            )
            np.testing.assert_allclose(pl, u, rtol=1e-6, atol=1e-8)
    with pytest.raises(ConfigError, match="allocation"):
        layerwise_obs(W, X, [0.5], allocation="column")


@pytest.mark.parametrize("allocation", ["global", "row"])
@pytest.mark.parametrize(("R", "D", "S"), [(7, 40, 1), (5, 30, 4), (4, 25, 24)])
def test_low_rank_surgeon_takes_the_dense_surgeons_path(rng, allocation, R, D, S):
    """With fewer input rows than inputs (S < D) layerwise_obs runs the paths on the factor of H, all rows at
    once; padding X with zero rows leaves H unchanged but forces the dense D x D downdates: same removals,
    same weights to rounding."""
    X = rng.standard_normal((S, D)) * rng.uniform(0.1, 3.0, D)
    X[:, 2] = 0.0  # a dead input
    W = rng.standard_normal((R, D))
    levels = [1.0, 0.8, 0.5, 0.2, 0.0]
    low = layerwise_obs(W, X, levels, damping=0.01, allocation=allocation)
    dense = layerwise_obs(W, np.vstack([X, np.zeros((D, D))]), levels, damping=0.01, allocation=allocation)
    for f in levels:
        np.testing.assert_array_equal(low[f] != 0, dense[f] != 0)
        np.testing.assert_allclose(low[f], dense[f], rtol=1e-9, atol=1e-11)


def test_low_rank_surgeon_refuses_an_ill_conditioned_hessian(rng):
    X = rng.standard_normal((1, 30))
    with pytest.raises(SingularHessianError, match="damping"):
        layerwise_obs(rng.standard_normal((3, 30)), X, [0.5], damping=1e-12)


def test_the_golden_writers_second_look_at_a_prune_reuses_it_only_for_the_same_input(rng):
    x, y, cfg, state = _tiny_run(rng)
    m = OBS(OBSConfig(kept_fraction=0.5, hessian="layerwise"), x[:4], y[:4])
    m.init_state(TINY, state.params)
    masks = {k: np.ones(v.shape, dtype=bool) for k, v in state.params.items()}
    a = m._prune(state.params, masks)
    assert m._prune(state.params, masks) is not None and m._prune(state.params, masks)[0] is a[0]
    moved = {k: v * np.float32(1.5) for k, v in state.params.items()}
    b = m._prune(moved, masks)
    assert b[0] is not a[0]
    want = obs_prune(TINY, moved, masks, x[:4], y[:4], m.config)[0]
    for k in want:
        np.testing.assert_array_equal(b[0][k], want[k])


def test_layer_inputs_of_dense_and_conv_layers(rng):
    spec = NetSpec(
        "c",
        (1, 5, 5),
        2,
        (
            Op("conv", "c1", w_shape=(2, 1, 3, 3), b_shape=(2,)),
            Op("flatten"),
            Op("dense", "fc", w_shape=(2, 18), b_shape=(2,)),
        ),
    )
    p = init_params(spec, rng=rng, dtype=np.float64)
    x = rng.standard_normal((4, 1, 5, 5))
    X = layer_inputs(spec, p, x)
    assert X["c1"].shape == (4 * 9, 9) and X["fc"].shape == (4, 18)
    np.testing.assert_allclose(X["c1"][0], x[0, 0, :3, :3].ravel())
    out = layerwise_obs(p["c1.weight"], X["c1"], [0.5])
    assert out[0.5].shape == (2, 1, 3, 3) and np.count_nonzero(out[0.5]) == 9


def _tiny_run(rng):
    x = rng.standard_normal((64, 1, 3, 3)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    cfg = TrainConfig(iterations=5, batch_size=16, sgd=SGDConfig(base_lr=0.05))
    state = new_run(TINY, 64, cfg, seed=3)
    return x, y, cfg, state


@pytest.mark.parametrize("hessian", ["exact", "gauss-newton", "woodbury", "layerwise"])
def test_obs_method_prunes_once_masks_only_shrink_and_pruned_weights_stay_zero(rng, hessian):
    x, y, cfg, state = _tiny_run(rng)
    method = OBS(
        OBSConfig(
            kept_fraction=0.4,
            hessian=hessian,
            damping=1e-2,
            shift_indefinite=True,
            alpha=1e-2,
            block=3,
            at_iteration=1,
        ),
        x[:32],
        y[:32],
    )
    state.method_state = method.init_state(TINY, state.params)
    history = []
    for _ in range(4):
        idx = state.data.next_indices()
        train_step(state, x[idx], y[idx], cfg, method)  # SGD with momentum 0.9 after the surgery
        history.append({k: m.copy() for k, m in state.masks.items()})
        for k, m in state.masks.items():
            assert np.all(state.params[k][~m] == 0.0) and np.all(state.velocity[k][~m] == 0.0)
    n_w = sum(state.masks[k].size for k in ("fc1.weight", "fc2.weight"))
    kept = sum(int(history[1][k].sum()) for k in ("fc1.weight", "fc2.weight"))
    assert abs(kept - 0.4 * n_w) <= 1 if hessian != "layerwise" else kept <= 0.4 * n_w + 2
    assert history[0]["fc1.weight"].all()  # nothing before at_iteration
    for a, b in zip(history, history[1:], strict=False):
        assert all(np.all(b[k] <= a[k]) for k in a)
    assert history[1]["fc1.bias"].all() and history[1]["fc2.bias"].all()  # biases never pruned


def test_obs_prune_all_ones_changes_nothing_and_respects_existing_masks(rng):
    p = init_params(TINY, rng=rng, dtype=np.float64)
    x = rng.standard_normal((20, 1, 3, 3))
    y = rng.integers(0, 3, 20)
    masks = {k: np.ones(v.shape, bool) for k, v in p.items()}
    new, m2, _ = obs_prune(TINY, p, masks, x, y, OBSConfig(kept_fraction=1.0, damping=1e-3))
    assert all(np.array_equal(new[k], p[k]) for k in p) and all(m2[k].all() for k in m2)
    masks["fc1.weight"][0, :4] = False
    new, m2, _ = obs_prune(TINY, p, masks, x, y, OBSConfig(kept_fraction=0.5, damping=1e-3))
    assert not m2["fc1.weight"][0, :4].any() and np.all(new["fc1.weight"][~m2["fc1.weight"]] == 0)
    assert np.all(np.isfinite(param_vector(TINY, new)))


def test_config_is_validated():
    with pytest.raises(ConfigError, match="hessian"):
        OBSConfig(kept_fraction=0.5, hessian="diagonal")
    with pytest.raises(ConfigError, match="kept_fraction"):
        OBSConfig(kept_fraction=1.5)
    with pytest.raises(ConfigError, match="alpha"):
        OBSConfig(kept_fraction=0.5, alpha=0.0)
