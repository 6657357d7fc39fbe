"""Exact Hessian-vector products, full Hessians, Gauss-Newton and LeCun's diagonal recursion (float64)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdns.errors import ConfigError
from refdns.hessian import (
    full_hessian,
    gauss_newton_matrix,
    hessian_nbytes,
    hvp,
    loss_and_gradient,
    loss_value,
    obd_diagonal,
    output_factors,
    param_slices,
    param_vector,
    vector_to_params,
)
from refdns.nets.sequential import NetSpec, Op, init_params, loss_and_grads
from tests.gradcheck import numerical_gradient, rel_error
from tests.tolerances import GRADCHECK_RTOL, GRADCHECK_STEP

MLP = NetSpec(
    "mlp",
    (1, 3, 3),
    3,
    (
        Op("flatten"),
        Op("dense", "fc1", w_shape=(5, 9), b_shape=(5,)),
        Op("relu"),
        Op("dense", "fc2", w_shape=(3, 5), b_shape=(3,)),
    ),
)
CONVNET = NetSpec(
    "convnet",
    (2, 6, 6),
    3,
    (
        Op("conv", "c1", w_shape=(3, 2, 3, 3), b_shape=(3,), stride=1, pad=1),
        Op("pool", size=2, stride=2),
        Op("conv", "c2", w_shape=(2, 3, 2, 2), b_shape=(2,)),
        Op("relu"),
        Op("flatten"),
        Op("dense", "fc", w_shape=(3, 8), b_shape=(3,)),
    ),
)
LINEAR = NetSpec("linear", (1, 2, 3), 4, (Op("flatten"), Op("dense", "fc", w_shape=(4, 6), b_shape=(4,))))
CONV_ONLY = NetSpec(
    "conv-only", (2, 5, 5), 18, (Op("conv", "c", w_shape=(2, 2, 3, 3), b_shape=(2,)), Op("flatten"))
)
NETS = {"mlp": MLP, "convnet": CONVNET}
# Relative error floor for Hessian-vector products, whose entries are O(0.01 .. 1) on these nets.
HVP_FLOOR = 1e-3


def _case(spec, seed, n=7):
    rng = np.random.default_rng(seed)
    p = init_params(spec, rng=rng, dtype=np.float64)
    p = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in p.items()}  # non-zero biases, generic point
    x = rng.standard_normal((n, *spec.input_shape))
    y = rng.integers(0, spec.n_classes, n)
    return p, x, y, rng


def _fd_hvp(spec, p, x, y, v, loss, h=GRADCHECK_STEP):
    w = param_vector(spec, p)
    gp = loss_and_gradient(spec, vector_to_params(spec, w + h * v), x, y, loss=loss)[1]
    gm = loss_and_gradient(spec, vector_to_params(spec, w - h * v), x, y, loss=loss)[1]
    return (gp - gm) / (2 * h)


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("loss", ["softmax_ce", "squared"])
def test_gradient_matches_engine_and_central_differences(net, loss):
    spec = NETS[net]
    p, x, y, _ = _case(spec, 1)
    L, g = loss_and_gradient(spec, p, x, y, loss=loss)
    if loss == "softmax_ce":
        L_ref, g_ref = loss_and_grads(spec, p, x, y)
        assert L == pytest.approx(L_ref, rel=1e-12)
        np.testing.assert_allclose(g, param_vector(spec, g_ref), rtol=1e-12, atol=1e-14)
    w = param_vector(spec, p)
    num = numerical_gradient(lambda v: loss_value(spec, vector_to_params(spec, v), x, y, loss=loss), w)
    assert rel_error(g, num) < GRADCHECK_RTOL


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("loss", ["softmax_ce", "squared"])
@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=4)
def test_hvp_matches_central_differences_of_the_gradient(net, loss, seed):
    spec = NETS[net]
    p, x, y, rng = _case(spec, seed)
    v = rng.standard_normal(spec.n_params())
    exact = hvp(spec, p, x, y, v, loss=loss)
    err = rel_error(exact, _fd_hvp(spec, p, x, y, v, loss), floor=HVP_FLOOR)
    assert err < GRADCHECK_RTOL, err


def test_hvp_detects_a_wrong_second_order_term():
    # The Gauss-Newton product drops exactly the terms the R-backward adds; on a ReLU net the two differ,
    # so the central-difference check above would catch a backward that forgot them.
    p, x, y, rng = _case(MLP, 3)
    v = rng.standard_normal(MLP.n_params())
    fd = _fd_hvp(MLP, p, x, y, v, "softmax_ce")
    assert rel_error(hvp(MLP, p, x, y, v, gauss_newton=True), fd, floor=HVP_FLOOR) > 1e-3


@pytest.mark.parametrize("net", list(NETS))
def test_full_hessian_is_symmetric_and_matches_products(net):
    spec = NETS[net]
    p, x, y, rng = _case(spec, 5)
    H = full_hessian(spec, p, x, y)
    assert H.shape == (spec.n_params(),) * 2 and H.dtype == np.float64
    assert np.max(np.abs(H - H.T)) <= 1e-12 * np.max(np.abs(H))
    v = rng.standard_normal(spec.n_params())
    np.testing.assert_allclose(H @ v, hvp(spec, p, x, y, v), rtol=1e-10, atol=1e-12)
    G = gauss_newton_matrix(spec, p, x, y)
    assert np.max(np.abs(G - G.T)) <= 1e-12 * np.max(np.abs(G))
    assert np.linalg.eigvalsh(G).min() > -1e-12 * np.abs(G).max()  # positive semi-definite
    # ReLU/max-pool nets are multilinear in any single weight, so the exact diagonal is Gauss-Newton's.
    np.testing.assert_allclose(np.diag(H), np.diag(G), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("loss", ["squared", "softmax_ce"])
def test_gauss_newton_equals_hessian_on_a_linear_model(loss):
    p, x, y, _ = _case(LINEAR, 7, n=9)
    H = full_hessian(LINEAR, p, x, y, loss=loss)
    G = gauss_newton_matrix(LINEAR, p, x, y, loss=loss)
    np.testing.assert_allclose(G, H, rtol=1e-12, atol=1e-15)
    if loss == "squared":  # H = (1/N) sum_n [x_n; 1][x_n; 1]^T per output unit: a closed form
        xa = np.hstack([x.reshape(len(x), -1), np.ones((len(x), 1))])
        blk = xa.T @ xa / len(x)  # (7, 7) per output unit, weights then bias
        sl = param_slices(LINEAR)
        for m in range(4):
            idx = np.r_[
                np.arange(sl["fc.weight"].start + 6 * m, sl["fc.weight"].start + 6 * m + 6),
                sl["fc.bias"].start + m,
            ]
            np.testing.assert_allclose(H[np.ix_(idx, idx)], blk, rtol=1e-12, atol=1e-15)


def test_gauss_newton_differs_from_hessian_on_a_relu_net():
    p, x, y, _ = _case(MLP, 9)
    assert np.abs(full_hessian(MLP, p, x, y) - gauss_newton_matrix(MLP, p, x, y)).max() > 1e-3


@pytest.mark.parametrize("loss", ["softmax_ce", "squared"])
def test_output_factors_rebuild_the_gauss_newton_matrix(loss):
    p, x, y, _ = _case(CONVNET, 11, n=4)
    X = output_factors(CONVNET, p, x, y, loss=loss)
    assert X.shape == (4 * 3, CONVNET.n_params())
    np.testing.assert_allclose(
        X.T @ X / 4, gauss_newton_matrix(CONVNET, p, x, y, loss=loss), rtol=1e-10, atol=1e-14
    )


@pytest.mark.parametrize(
    ("spec", "loss"), [(LINEAR, "squared"), (LINEAR, "softmax_ce"), (CONV_ONLY, "squared")]
)
def test_obd_recursion_is_exact_where_its_approximations_vanish(spec, loss):
    # One layer, and an output Hessian that is diagonal over the outputs a weight touches: no cross terms
    # to drop, so LeCun's recursion must reproduce the exact diagonal (conv: shared weights included).
    p, x, y, _ = _case(spec, 13, n=6)
    h = obd_diagonal(spec, p, x, y, loss=loss)
    exact = np.diag(full_hessian(spec, p, x, y, loss=loss))
    # (softmax CE: d2E/dw_ij^2 = sum_n p_ni (1 - p_ni) x_nj^2 / N, which is the recursion's boundary term)
    np.testing.assert_allclose(param_vector(spec, h), exact, rtol=1e-12, atol=1e-15)


def test_obd_recursion_matches_lecun_formula_on_an_mlp():
    p, x, y, _ = _case(MLP, 17, n=5)
    h = obd_diagonal(MLP, p, x, y)
    # Oracle written out with einsum: d2E/da^2 at the output, back through W^2 and relu'^2, times x^2.
    xf = x.reshape(5, -1)
    a1 = xf @ p["fc1.weight"].T + p["fc1.bias"]
    h1 = np.maximum(a1, 0)
    z = h1 @ p["fc2.weight"].T + p["fc2.bias"]
    e = np.exp(z - z.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    d2_out = prob * (1 - prob) / 5
    d2_hid = (a1 > 0) * np.einsum("li,nl->ni", p["fc2.weight"] ** 2, d2_out)
    np.testing.assert_allclose(h["fc2.weight"], np.einsum("nl,nj->lj", d2_out, h1**2), rtol=1e-12)
    np.testing.assert_allclose(h["fc1.weight"], np.einsum("ni,nj->ij", d2_hid, xf**2), rtol=1e-12)
    np.testing.assert_allclose(h["fc1.bias"], d2_hid.sum(0), rtol=1e-12)


def test_inputs_are_checked_and_never_modified(rng):
    p, x, y, _ = _case(MLP, 19)
    before = {k: v.copy() for k, v in p.items()}
    x0 = x.copy()
    hvp(MLP, p, x, y, np.ones(MLP.n_params()))
    assert all(np.array_equal(before[k], p[k]) for k in p) and np.array_equal(x0, x)
    with pytest.raises(ConfigError, match="loss"):
        hvp(MLP, p, x, y, np.ones(MLP.n_params()), loss="hinge")
    with pytest.raises(ValueError, match="number of parameters"):
        hvp(MLP, p, x, y, np.ones(3))
    with pytest.raises(ValueError, match="x has shape"):
        hvp(MLP, p, x[:, :, :2], y, np.ones(MLP.n_params()))
    assert hessian_nbytes(1000) == 8_000_000


def test_float32_params_are_promoted_to_float64():
    p, x, y, rng = _case(MLP, 23)
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    v = rng.standard_normal(MLP.n_params())
    out = hvp(MLP, p32, x.astype(np.float32), y, v)
    assert out.dtype == np.float64
    p_back = {k: v.astype(np.float64) for k, v in p32.items()}
    np.testing.assert_allclose(
        out, hvp(MLP, p_back, x.astype(np.float32).astype(np.float64), y, v), rtol=1e-13
    )
