"""The fused Caffe SGD kernel against its NumPy twin: bit-identical, not merely close."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from refdns.kernels.sgd import sgd_update, sgd_update_ref

from refdns.optim import SGDConfig, sgd_step
from tests.strategies import finite_floats


@st.composite
def blobs(draw, dtype):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=6))
    arr = lambda: draw(hnp.arrays(dtype, shape, elements=finite_floats(4.0, dtype=dtype), fill=st.nothing()))  # noqa: E731
    return arr(), arr(), arr()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data(), decay=st.sampled_from([0.0, 5e-4, 1e-2]), scale=st.floats(1e-4, 0.1),
       momentum=st.sampled_from([0.0, 0.9]))
def test_kernel_is_bit_identical_to_the_numpy_formula(dtype, data, decay, scale, momentum):
    w, g, v = data.draw(blobs(dtype))
    w1, v1 = w.copy(), v.copy()
    sgd_update(w1, g.copy(), v1, decay=decay, scale=scale, momentum=momentum)
    w2, v2 = w.copy(), v.copy()
    sgd_update_ref(w2, g.copy(), v2, decay=decay, scale=scale, momentum=momentum)
    assert w1.dtype == w2.dtype == dtype
    bits = lambda a: a.reshape(-1).view(np.uint8)  # noqa: E731 -- compares signed zeros and NaN payloads too
    np.testing.assert_array_equal(bits(w1), bits(w2))
    np.testing.assert_array_equal(bits(v1), bits(v2))


def test_sgd_step_equals_the_numpy_path_bit_for_bit_over_many_steps(rng):
    """Ten Caffe steps with bias lr_mult 2 and an inv schedule: the training path stays bit-exact."""
    cfg = SGDConfig()
    shapes = {"ip1.weight": (30, 17), "ip1.bias": (30,), "ip2.weight": (4, 30), "ip2.bias": (4,)}
    w = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in shapes.items()}
    v = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    w_ref, v_ref = {k: a.copy() for k, a in w.items()}, {k: a.copy() for k, a in v.items()}
    for it in range(10):
        g = {k: rng.normal(0, 1, s).astype(np.float32) for k, s in shapes.items()}
        lr = sgd_step(cfg, w, {k: a.copy() for k, a in g.items()}, v, it)
        for k in shapes:
            mult = 2.0 if k.endswith("bias") else 1.0
            sgd_update_ref(w_ref[k], g[k].copy(), v_ref[k], decay=cfg.weight_decay, scale=lr * mult,
                           momentum=cfg.momentum)
    for k in shapes:
        assert np.array_equal(w[k], w_ref[k]) and np.array_equal(v[k], v_ref[k]), k


def test_bad_input_is_refused_by_name():
    w = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="g is float64"):
        sgd_update(w, np.zeros(3), np.zeros(3, np.float32), decay=0, scale=1, momentum=0)
    with pytest.raises(TypeError, match="v.dtype"):
        sgd_update(w, w.copy(), np.zeros(3, np.int32), decay=0, scale=1, momentum=0)
    with pytest.raises(ValueError, match="C-contiguous"):
        sgd_update(np.zeros((3, 2), np.float32).T, np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32),
                   decay=0, scale=1, momentum=0)
