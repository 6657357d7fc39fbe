"""The low-rank OBS path kernel against its NumPy twin, and both against the dense surgeon they replace."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from refdns.kernels.obs_lowrank import obs_lowrank_paths, obs_lowrank_paths_ref

from refdns.errors import SingularHessianError
from refdns.prune.obs import _row_path, damped_inverse
from tests.tolerances import assert_close


def _problem(seed: int, R: int, D: int, S: int, damping: float):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((S, D)) * rng.uniform(0.2, 2.0, D)  # inputs of different scales
    W = rng.standard_normal((R, D))
    lam = float(damping * np.mean(np.sum(Z * Z, axis=0)))
    return W, Z, lam


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), R=st.integers(1, 6), D=st.integers(2, 24), data=st.data())
def test_kernel_makes_the_twins_removals_at_the_twins_costs(seed, R, D, data):
    S = data.draw(st.integers(1, D - 1))
    steps = data.draw(st.integers(0, D))
    W, Z, lam = _problem(seed, R, D, S, damping=0.1)
    costs, order = obs_lowrank_paths(W, Z, lam, steps)
    costs_ref, order_ref = obs_lowrank_paths_ref(W, Z, lam, steps)
    np.testing.assert_array_equal(order, order_ref)
    assert np.all(np.isinf(costs[:, steps:])) and np.all(np.isfinite(costs[:, :steps]))
    assert_close(costs[:, :steps], costs_ref[:, :steps])
    assert all(len(set(row)) == steps for row in order.tolist())  # each input removed once


@pytest.mark.parametrize(("R", "D", "S"), [(3, 30, 1), (2, 25, 7)])
def test_both_take_the_dense_surgeons_path(R, D, S):
    """The dense surgeon (a D x D inverse downdated per removal) on the same damped H = lam I + Z^T Z."""
    W, Z, lam = _problem(7, R, D, S, damping=0.05)
    H = Z.T @ Z
    h_inv = damped_inverse(H, damping=lam / float(np.mean(np.diag(H))))[0]
    costs, order = obs_lowrank_paths(W, Z, lam, D)
    for r in range(R):
        dense_costs, _ = _row_path(W[r], h_inv, D, [], None)
        assert_close(costs[r], dense_costs)
        # the dense path records costs only; its removals are the inputs in the kernel's order exactly when
        # replaying that order reproduces its costs, which assert_close just checked step by step
    _, order_ref = obs_lowrank_paths_ref(W, Z, lam, D)
    np.testing.assert_array_equal(order, order_ref)


def test_a_lost_positive_diagonal_is_a_named_error_in_both():
    """z_0 = 1, z_1 = 0 and lam = 1e-17: [H^-1]_00 = (1 - 1 / (1 + lam)) / lam rounds to 0. Input 1 goes
    first (finite cost), then input 0's zero diagonal must raise, not divide."""
    W = np.array([[1.0, 1.0]])
    Z = np.array([[1.0, 0.0]])
    for fn in (obs_lowrank_paths, obs_lowrank_paths_ref):
        with pytest.raises(SingularHessianError, match=r"\[H\^-1\]_qq = 0.0 .*layer 'ip9'.*row 0"):
            fn(W, Z, 1e-17, 2, layer="ip9")
        assert fn(W, Z, 1e-17, 1)[1].tolist() == [[1]]


@pytest.mark.parametrize(("args", "error", "match"), [
    ((np.ones((2, 3), np.float32), np.ones((1, 3)), 0.1, 1), TypeError, "W"),
    ((np.ones((2, 3)), np.ones(3), 0.1, 1), TypeError, "Z"),
    ((np.ones((2, 3)), np.ones((1, 4)), 0.1, 1), ValueError, "Z.shape"),
    ((np.ones((2, 3)), np.ones((1, 3)), 0.0, 1), ValueError, "lam"),
    ((np.ones((2, 3)), np.ones((1, 3)), 0.1, 4), ValueError, "steps"),
])
def test_the_wrapper_checks_its_inputs(args, error, match):
    for fn in (obs_lowrank_paths, obs_lowrank_paths_ref):
        with pytest.raises(error, match=match):
            fn(*args)
