"""The one-pass DNS mask update against its twin, refdns.prune.dns.hysteresis, exactly."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from refdns.kernels.hysteresis import hysteresis_update, hysteresis_update_ref

BAND = (0.25, 0.5)
# The band's own values appear often, so the boundaries |w| == a and |w| == b are exercised every run.
ELEMENTS = st.one_of(st.sampled_from([0.0, BAND[0], -BAND[0], BAND[1], -BAND[1], 0.3, -0.3]),
                     st.floats(-1.0, 1.0, width=32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("inclusive_prune", [True, False])
@given(data=st.data())
def test_kernel_matches_the_numpy_twin_exactly(dtype, inclusive_prune, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=12))
    w = data.draw(hnp.arrays(dtype, shape, elements=ELEMENTS, fill=st.nothing()))
    mask = data.draw(hnp.arrays(bool, shape))
    # 1/3 is not a float32: rounded as NumPy rounds it
    a, b = data.draw(st.sampled_from([BAND, (0.0, 0.0), (0.3, 0.3), (0.1, 1.0 / 3.0)]))
    m1, m2 = mask.copy(), mask.copy()
    counts = hysteresis_update(m1, w, a, b, inclusive_prune=inclusive_prune)
    assert counts == hysteresis_update_ref(m2, w, a, b, inclusive_prune=inclusive_prune)
    assert np.array_equal(m1, m2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_boundaries_caffe_and_distiller(dtype):
    a, b = 0.9, 1.1  # not representable in float32: rounded as NumPy rounds them
    w = np.array([0.9, -0.9, 1.1, -1.1, 1.0, 1.0, np.nan], dtype=dtype)
    mask = np.array([True, True, False, False, True, False, True])
    caffe = mask.copy()
    # |w| == a prunes, |w| == b does not splice, a NaN weight is pruned
    assert hysteresis_update(caffe, w, a, b) == (3, 0, 1)
    assert caffe.tolist() == [False, False, False, False, True, False, False]
    distiller = mask.copy()
    assert hysteresis_update(distiller, w, a, b, inclusive_prune=False) == (1, 2, 5)
    assert distiller.tolist() == [True, True, True, True, True, False, False]


def test_bad_input_is_refused_by_name():
    with pytest.raises(TypeError, match="mask"):
        hysteresis_update(np.ones(3, np.uint8), np.zeros(3, np.float32), 0.1, 0.2)
    with pytest.raises(ValueError, match="w.shape"):
        hysteresis_update(np.ones(3, bool), np.zeros(4, np.float32), 0.1, 0.2)
