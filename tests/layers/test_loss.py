"""Softmax cross-entropy: gradient, agreement with -log softmax, stability, dtype, label validation."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.layers import softmax, softmax_cross_entropy
from tests.gradcheck import numerical_gradient, rel_error
from tests.strategies import float_arrays
from tests.tolerances import GRADCHECK_RTOL, assert_close


@st.composite
def logits_and_labels(draw, bound=5.0, dtype=np.float64):
    n, m = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    logits = draw(float_arrays((n, m), bound=bound, dtype=dtype))
    y = np.array(draw(st.lists(st.integers(0, m - 1), min_size=n, max_size=n)), dtype=np.int64)
    return logits, y


@given(logits_and_labels())
def test_gradient_matches_central_differences(case):
    logits, y = case
    _, dlogits = softmax_cross_entropy(logits, y)
    numeric = numerical_gradient(lambda z: softmax_cross_entropy(z, y)[0], logits)
    assert rel_error(dlogits, numeric) < GRADCHECK_RTOL


@given(logits_and_labels())
def test_equals_mean_negative_log_softmax(case):
    logits, y = case
    loss, dlogits = softmax_cross_entropy(logits, y)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # naive: fine for |logits| <= 5
    n = len(y)
    assert loss == pytest.approx(-np.log(p[np.arange(n), y]).mean(), rel=1e-12, abs=1e-12)
    onehot = np.eye(logits.shape[1])[y]
    assert_close(dlogits, (p - onehot) / n)
    assert_close(softmax(logits), p)


@given(logits_and_labels(), st.floats(-1e4, 1e4))
def test_invariant_to_adding_a_constant(case, c):
    logits, y = case
    loss, dlogits = softmax_cross_entropy(logits, y)
    loss_c, dlogits_c = softmax_cross_entropy(logits + c, y)
    # Adding c rounds each logit at the ulp of c (~2e-12 for 1e4): compare with that allowance.
    tol = 1e-15 * (abs(c) + 10) * 100
    assert loss_c == pytest.approx(loss, abs=tol)
    np.testing.assert_allclose(dlogits_c, dlogits, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    y = np.array([1, 0, 2])
    loss, dlogits = softmax_cross_entropy(logits, y)
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    # rows: -log p = 1e4, log 2, log 3
    assert loss == pytest.approx((1e4 + np.log(2) + np.log(3)) / 3, rel=1e-6)
    p = softmax(logits)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[2], [1 / 3] * 3, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_types(rng, dtype):
    logits = rng.standard_normal((8, 10)).astype(dtype)
    y = rng.integers(0, 10, 8)
    loss, dlogits = softmax_cross_entropy(logits, y)
    assert type(loss) is float
    assert dlogits.dtype == dtype and dlogits.shape == logits.shape
    assert softmax(logits).dtype == dtype


def test_float32_agrees_with_float64(rng):
    logits = rng.standard_normal((64, 10)) * 3
    y = rng.integers(0, 10, 64)
    loss64, d64 = softmax_cross_entropy(logits, y)
    loss32, d32 = softmax_cross_entropy(logits.astype(np.float32), y)
    assert loss32 == pytest.approx(loss64, rel=1e-6)
    assert_close(d32, d64, dtype=np.float32)


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_any_integer_label_dtype(label_dtype):
    logits = np.zeros((2, 3))
    loss, _ = softmax_cross_entropy(logits, np.array([0, 2], dtype=label_dtype))
    assert loss == pytest.approx(np.log(3))


def test_inputs_are_not_mutated(rng):
    logits = rng.standard_normal((4, 5))
    y = np.array([0, 4, 2, 2])
    logits0, y0 = logits.copy(), y.copy()
    softmax_cross_entropy(logits, y)
    softmax(logits)
    np.testing.assert_array_equal(logits, logits0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize(
    ("logits_shape", "y", "name"),
    [
        ((3, 4), [0, 1, 4], "y"),
        ((3, 4), [0, -1, 2], "y"),
        ((3, 4), [0, 1], "y"),
        ((3, 4), [[0, 1, 2]], "y"),
        ((12,), [0], "logits"),
        ((0, 4), [], "logits"),
        ((3, 0), [0, 0, 0], "logits"),
    ],
)
def test_bad_shapes_and_labels_raise_value_error(logits_shape, y, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        softmax_cross_entropy(np.zeros(logits_shape), np.array(y, dtype=np.int64))


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match=r"^y\b"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match=r"^y\b"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([True, False]))
    with pytest.raises(TypeError, match=r"^y\b"):
        softmax_cross_entropy(np.zeros((2, 3)), [0, 1])
    with pytest.raises(TypeError, match=r"^logits\b"):
        softmax_cross_entropy(np.zeros((2, 3), dtype=np.int64), np.array([0, 1]))
    with pytest.raises(TypeError, match=r"^logits\b"):
        softmax(np.zeros(3, dtype=np.float16))
