import numpy as np
import pytest

from refdns.errors import ConfigError
from refdns.optim import SGDConfig, learning_rate, sgd_step


def test_inv_policy_matches_caffe_formula():
    cfg = SGDConfig()
    for it in (0, 1, 100, 9999):
        assert learning_rate(cfg, it) == pytest.approx(0.01 * (1 + 1e-4 * it) ** -0.75, rel=1e-12)
    assert learning_rate(SGDConfig(lr_policy="fixed"), 5000) == 0.01


def test_sgd_step_is_caffes_update(rng):
    """v = m v + lr * lr_mult * (g + wd * decay_mult * w); w -= v, with bias lr_mult 2."""
    cfg = SGDConfig(base_lr=0.1, momentum=0.9, weight_decay=0.01, lr_policy="fixed")
    w = {"ip1.weight": rng.normal(size=(3, 4)), "ip1.bias": rng.normal(size=3)}
    v = {k: rng.normal(size=a.shape) for k, a in w.items()}
    g = {k: rng.normal(size=a.shape) for k, a in w.items()}
    expected = {}
    for k in w:
        mult = 2.0 if k.endswith("bias") else 1.0
        v_new = 0.9 * v[k] + 0.1 * mult * (g[k] + 0.01 * w[k])
        expected[k] = (w[k] - v_new, v_new)
    sgd_step(cfg, w, {k: a.copy() for k, a in g.items()}, v, 0)
    for k in w:
        np.testing.assert_allclose(w[k], expected[k][0], rtol=1e-12)
        np.testing.assert_allclose(v[k], expected[k][1], rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [{"base_lr": 0.0}, {"base_lr": float("nan")}, {"momentum": 1.5}, {"lr_policy": "cosine"},
     {"weight_decay": -1.0}, {"stepsize": 0}],
)
def test_nonsense_settings_are_refused_by_name(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ConfigError, match=name):
        SGDConfig(**kwargs)
