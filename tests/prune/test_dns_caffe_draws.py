"""DNS with ``draws="caffe"``: the authors' glibc rand() stream and float32 arithmetic; bit-exact resume."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns import checkpoint
from refdns.caffe.glibc_rand import GlibcRand
from refdns.errors import ConfigError
from refdns.nets import get_spec
from refdns.nets.sequential import NetSpec, Op, init_params
from refdns.prune.dns import DNS, DNSConfig, DNSLayerConfig, caffe_fires, caffe_thresholds_f32, default_config
from refdns.run import TrainConfig, new_run
from refdns.train import train

TINY = NetSpec(
    name="tiny",
    input_shape=(1, 3, 3),
    n_classes=3,
    ops=(
        Op("flatten"),
        Op("dense", "fc1", w_shape=(5, 9), b_shape=(5,)),
        Op("relu"),
        Op("dense", "fc2", w_shape=(3, 5), b_shape=(3,)),
        Op("relu"),
        Op("dense", "fc3", w_shape=(3, 3), b_shape=(3,)),
    ),
)
# glibc rand() after srand(1) (the never-seeded stream): the first values every glibc program prints
GLIBC_SEED1 = [1804289383, 846930886, 1681692777, 1714636915, 1957747793, 424238335]


def caffe_dns(gamma=0.0, iter_stop=10**6, srand_seed=1):
    lc = DNSLayerConfig(c_rate=0.5, gamma=gamma, power=1.0, iter_stop=iter_stop)
    return DNS(DNSConfig(layers={n: lc for n in ("fc1", "fc2", "fc3")}, draws="caffe", srand_seed=srand_seed))


def _tiny(rng):
    params = {
        k: rng.normal(0, 1, v.shape).astype(np.float32)
        for k, v in init_params(TINY, rng=rng, dtype=np.float32).items()
    }
    return params, {k: np.ones(v.shape, bool) for k, v in params.items()}


def test_draws_are_glibc_rand_in_layer_order(rng):
    """Each update takes one draw per layer, fc1 fc2 fc3, from the srand(1) stream; sigma(1) = 1/(1+gamma)."""
    params, masks = _tiny(rng)
    gamma = 1 / 0.6 - 1  # sigma(1) = 0.6: fires for r < 0.6
    method = caffe_dns(gamma=gamma)
    state = method.init_state(TINY, params)
    r = np.array(GLIBC_SEED1, dtype=np.float64) / 2**31
    for it, draws in ((1, r[:3]), (1, r[3:])):
        records = method.update_masks(it, params, masks, state, np.random.default_rng(0))
        fired = [n for n, d in zip(("fc1", "fc2", "fc3"), draws, strict=True) if d < 0.6]
        assert [rec.layer for rec in records] == fired
    g = GlibcRand(1)
    g.rand_n(6)
    assert (
        np.array_equal(state["rand.table"], g.get_state().table)
        and int(state["rand.pos"]) == g.get_state().pos
    )


def test_draws_are_taken_after_iter_stop(rng):
    params, masks = _tiny(rng)
    method = caffe_dns(gamma=0.0, iter_stop=5)
    state = method.init_state(TINY, params)
    assert method.update_masks(7, params, masks, state, np.random.default_rng(0)) == []
    g = GlibcRand(1)
    g.rand_n(3)
    assert np.array_equal(state["rand.table"], g.get_state().table)


def test_srand_seed_picks_another_stream(rng):
    params, _ = _tiny(rng)
    state = caffe_dns(srand_seed=7).init_state(TINY, params)
    assert np.array_equal(state["rand.table"], GlibcRand(7).get_state().table)


def test_numpy_draws_keep_no_rand_state(rng):
    params, _ = _tiny(rng)
    lc = DNSLayerConfig(c_rate=0.5)
    assert DNS(DNSConfig(layers={n: lc for n in ("fc1", "fc2", "fc3")})).init_state(TINY, params) == {}


def test_caffe_fires_compares_in_float32():
    lc = DNSLayerConfig(gamma=1e-3, power=1.0, iter_stop=8000)
    # powf(1 + 0.001f*it, -1) rounded to float32; a draw equal to it does not fire (strict >)
    it = 1234
    prob = np.float32(1.0 / float(np.float32(1) + np.float32(1e-3) * np.float32(it)))
    assert not caffe_fires(lc, it, prob)
    assert caffe_fires(lc, it, np.nextafter(prob, np.float32(0)))
    assert not caffe_fires(lc, 8000, np.float32(0))


def _thresholds_c_loop(w, b, c_rate):
    """The fork's loop, literally, in float32 scalars."""
    f32 = np.float32
    mu, std, n = f32(0), f32(0), 0
    for v in list(w.ravel()) + list(b.ravel()):
        mu = f32(mu + abs(v))
        std = f32(std + f32(v * v))
        n += v != 0
    mu = f32(mu / f32(n))
    std = f32(std - f32(f32(n) * mu) * mu)
    std = np.sqrt(f32(std / f32(n)))
    return float(max(f32(mu + f32(c_rate) * std), f32(0)))


@given(seed=st.integers(0, 2**32 - 1), c_rate=st.sampled_from([0.5, 1.0, 2.5, 3.0, 4.0]))
def test_float32_statistics_are_the_c_loops(seed, c_rate):
    rng = np.random.default_rng(seed)
    w = (rng.normal(0, 0.05, (40, 30)) * (rng.random((40, 30)) < 0.8)).astype(np.float32)
    b = rng.normal(0, 0.05, 30).astype(np.float32)
    ones = (np.ones(w.shape, bool), np.ones(b.shape, bool))
    got = caffe_thresholds_f32(w, b, *ones, c_rate, (0.9, 1.1))
    t = _thresholds_c_loop(w, b, c_rate)
    assert got["t"] == t
    # a float32 |w| is pruned at <= a and spliced at > b exactly when the double comparisons say so
    probe = np.abs(w).ravel()
    near = np.float32([np.nextafter(np.float32(got[k]), np.float32(d)) for k in "ab" for d in (0, 1)])
    for x in np.concatenate([probe, near, np.float32([got["a"], got["b"]])]):
        assert (x <= np.float32(got["a"])) == (float(x) <= 0.9 * t)
        assert (x > np.float32(got["b"])) == (float(x) > 1.1 * t)


def test_config_errors_are_named():
    with pytest.raises(ConfigError, match="draws='mt'"):
        default_config("lenet-300-100", draws="mt")
    with pytest.raises(ConfigError, match="reading='caffe'"):
        default_config("lenet-300-100", draws="caffe", reading="distiller")
    with pytest.raises(ConfigError, match="srand_seed"):
        default_config("lenet-300-100", draws="caffe", srand_seed=-1)


@pytest.fixture
def small(mnist):
    return mnist[0][:3000], mnist[1][:3000]


def test_resume_mid_run_is_bit_exact_with_caffe_draws(small, tmp_path):
    """N steps, save, load, N more == 2N straight: params, masks, velocity, surgery records, rand() state."""
    x, y = small
    method = DNS(default_config("lenet-300-100", draws="caffe"))
    method = method.with_overrides(
        layers={n: DNSLayerConfig(c_rate=1.0, gamma=0.5, iter_stop=1000) for n in ("ip1", "ip2", "ip3")}
    )
    cfg = TrainConfig(iterations=30, test_interval=0, data_order="caffe")
    spec = get_spec("lenet-300-100")

    def fresh():
        return new_run(spec, len(x), cfg, seed=5)

    straight = train(fresh(), x, y, cfg, method=method)
    half = train(fresh(), x, y, cfg, method=method, until=13)
    ck = checkpoint.load(
        checkpoint.save(tmp_path / "half.h5", half, method="dns", config=method.config_dict())
    )
    resumed = train(ck.state, x, y, cfg, method=method)
    for group in ("params", "masks", "velocity"):
        a, b = getattr(straight, group), getattr(resumed, group)
        assert all(np.array_equal(a[k], b[k]) for k in a), group
    assert straight.history.mask_updates == resumed.history.mask_updates
    for k, v in straight.method_state.items():
        assert np.array_equal(v, resumed.method_state[k]), k
    fired = {(r.iteration, r.layer) for r in straight.history.mask_updates}
    assert 3 < len(fired) < 3 * 30  # some layers update, some do not: the draws matter
    assert any(r.iteration >= 13 for r in straight.history.mask_updates)
