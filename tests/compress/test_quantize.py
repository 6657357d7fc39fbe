"""Weight sharing (Deep Compression sec. 3): k-means with linear initialisation, fallbacks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refdns.compress.quantize import (
    DEFAULT_BITS,
    QuantizedLayer,
    dequantize_net,
    layer_bits,
    linear_init,
    quantize_net,
    quantize_weights,
)
from refdns.errors import CompressError, ConfigError
from refdns.nets import get_spec, init_params


def pruned_layer(rng, shape=(40, 50), density=0.3):
    w = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return w, rng.random(shape) < density


def test_codebook_is_sorted_distinct_used_and_small_enough(rng):
    w, mask = pruned_layer(rng)
    for bits in (1, 2, 3, 5, 8):
        codebook, idx = quantize_weights(w, mask, bits)
        assert codebook.dtype == np.float32 and idx.dtype == np.int32
        assert 1 <= codebook.size <= 2**bits
        assert np.all(np.diff(codebook) > 0)
        assert idx.shape == (mask.sum(),)
        assert np.array_equal(np.unique(idx), np.arange(codebook.size))  # every centroid used


def test_each_kept_weight_gets_its_nearest_centroid(rng):
    w, mask = pruned_layer(rng)
    codebook, idx = quantize_weights(w, mask, 4)
    dist = np.abs(w[mask].astype(np.float64)[:, None] - codebook.astype(np.float64)[None, :])  # (nnz, K)
    assert np.all(dist[np.arange(idx.size), idx] <= dist.min(axis=1))


def test_converged_centroids_are_their_members_means(rng):
    w, mask = pruned_layer(rng, shape=(20, 30))
    codebook, idx = quantize_weights(w, mask, 3, max_iter=10_000)
    means = np.bincount(idx, weights=w[mask].astype(np.float64)) / np.bincount(idx)
    np.testing.assert_allclose(codebook, means, rtol=1e-6, atol=1e-7)  # float32 rounding of the mean


def test_kmeans_beats_its_linear_initialisation(rng):
    w, mask = pruned_layer(rng)
    kept = w[mask].astype(np.float64)
    codebook, idx = quantize_weights(w, mask, 3)
    init = linear_init(kept, 8)
    init_err = np.min((kept[:, None] - init[None, :]) ** 2, axis=1).mean()
    assert np.mean((kept - codebook[idx]) ** 2) < init_err


def test_linear_init_spans_min_to_max():
    v = np.array([0.5, -2.0, 3.0, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(linear_init(v, 6), [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])


def test_deterministic(rng):
    w, mask = pruned_layer(rng)
    a = quantize_weights(w, mask, 5)
    b = quantize_weights(w.copy(), mask.copy(), 5)
    assert np.array_equal(a[0].view(np.uint32), b[0].view(np.uint32)) and np.array_equal(a[1], b[1])


def test_pruned_weights_are_ignored(rng):
    w, mask = pruned_layer(rng)
    w2 = w.copy()
    w2[~mask] = 123.0  # a large pruned weight must not stretch the linear initialisation
    for x, y in zip(quantize_weights(w, mask, 4), quantize_weights(w2, mask, 4), strict=True):
        assert np.array_equal(x, y)


@given(st.integers(1, 6), st.integers(0, 40), st.integers(0, 2**32 - 1))
def test_few_distinct_values_are_kept_exactly(bits, n_distinct, seed):
    """Fallback: at most 2^bits distinct kept values (e.g. fewer kept weights than clusters) -> exact."""
    rng = np.random.default_rng(seed)
    n_distinct = min(n_distinct, 2**bits)
    values = rng.standard_normal(n_distinct).astype(np.float32)
    w = rng.choice(values, size=(9, 11)) if n_distinct else np.zeros((9, 11), dtype=np.float32)
    mask = rng.random(w.shape) < 0.5 if n_distinct else np.zeros(w.shape, dtype=bool)
    codebook, idx = quantize_weights(w, mask, bits)
    assert codebook.size == np.unique(w[mask]).size
    assert np.array_equal(codebook[idx], w[mask])


def test_fewer_kept_weights_than_clusters():
    w = np.array([[0.3, -0.1, 0.7]], dtype=np.float32)
    codebook, idx = quantize_weights(w, np.array([[True, False, True]]), 8)
    np.testing.assert_array_equal(codebook, np.array([0.3, 0.7], dtype=np.float32))
    np.testing.assert_array_equal(idx, [0, 1])


def test_empty_layer_gives_an_empty_codebook(rng):
    w, _ = pruned_layer(rng)
    codebook, idx = quantize_weights(w, np.zeros(w.shape, dtype=bool), 5)
    assert codebook.shape == (0,) and codebook.dtype == np.float32
    assert idx.shape == (0,) and idx.dtype == np.int32


@pytest.mark.parametrize("bits", [0, 17, -1, 2.0, True, "5", None])
def test_bits_out_of_range_is_a_config_error(bits, rng):
    w, mask = pruned_layer(rng)
    with pytest.raises(ConfigError, match="bits"):
        quantize_weights(w, mask, bits)


def test_bits_sixteen_is_allowed(rng):
    w, mask = pruned_layer(rng, shape=(5, 5))
    codebook, idx = quantize_weights(w, mask, 16)  # fewer weights than clusters: the exact fallback
    assert np.array_equal(codebook[idx], w[mask])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(bad, rng):
    w, mask = pruned_layer(rng)
    w[3, 4] = bad
    with pytest.raises(CompressError, match=r"NaN or Inf \(first at \(3, 4\)"):
        quantize_weights(w, mask, 5, name="ip1.weight")


def test_mask_must_be_bool_of_the_weights_shape(rng):
    w, mask = pruned_layer(rng)
    with pytest.raises(CompressError, match="bool"):
        quantize_weights(w, mask.astype(np.uint8), 5)
    with pytest.raises(CompressError, match="shape"):
        quantize_weights(w, mask[:, :-1], 5)


def test_layer_bits_defaults_and_overrides():
    spec = get_spec("lenet-5")
    assert layer_bits(spec) == {"conv1": 8, "conv2": 8, "ip1": 5, "ip2": 5}
    assert layer_bits(spec, {"ip2": 3}) == {"conv1": 8, "conv2": 8, "ip1": 5, "ip2": 3}
    assert DEFAULT_BITS == {"conv": 8, "dense": 5}
    with pytest.raises(ConfigError, match="ip9"):
        layer_bits(spec, {"ip9": 4})
    with pytest.raises(ConfigError, match="ip1"):
        layer_bits(spec, {"ip1": 17})


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_quantize_net_keeps_the_mask_and_bias(name, rng):
    spec = get_spec(name)
    params = init_params(spec, rng=rng)
    masks = {}
    for k, v in params.items():
        params[k] = (rng.standard_normal(v.shape) * 0.05).astype(np.float32)
        masks[k] = rng.random(v.shape) < (0.05 if v.ndim > 1 else 0.8)
    layers = quantize_net(spec, params, masks, bits={spec.layer_names[-1]: 2})
    assert [la.name for la in layers] == list(spec.layer_names)
    q_params, q_masks = dequantize_net(layers)
    for la in layers:
        assert la.n_clusters <= 2**la.bits
        assert la.bits == (2 if la.name == spec.layer_names[-1] else DEFAULT_BITS[la.kind])
    for k in params:
        assert np.array_equal(q_masks[k], masks[k])
        if k.endswith(".bias"):
            assert np.array_equal(q_params[k], params[k])
        else:
            assert np.all(q_params[k][~masks[k]] == 0)
    for la in layers:  # each kept weight became its nearest centroid
        kept = params[f"{la.name}.weight"][la.mask].astype(np.float64)
        err = np.abs(kept - q_params[f"{la.name}.weight"][la.mask])
        assert np.all(err <= np.abs(kept[:, None] - la.codebook[None, :]).min(axis=1))


def test_quantize_net_without_masks_keeps_everything(rng):
    spec = get_spec("lenet-300-100")
    params = init_params(spec, rng=rng)
    params = {k: v for k, v in params.items()}
    layers = quantize_net(spec, params, bits={"ip1": 1}, max_iter=3)
    assert all(la.mask.all() and la.bias_mask.all() for la in layers)
    assert layers[0].n_clusters <= 2


def test_quantized_layer_validates(rng):
    ok = dict(name="ip1", kind="dense", bits=2, codebook=np.array([0.1, 0.2], dtype=np.float32),
              indices=np.array([0, 1], dtype=np.int32), mask=np.array([[True, False], [False, True]]),
              bias=np.zeros(2, dtype=np.float32), bias_mask=np.ones(2, dtype=bool))
    QuantizedLayer(**ok)
    for change, match in [({"kind": "pool"}, "kind"), ({"bits": 0}, "bits"),
                          ({"codebook": np.zeros(5, dtype=np.float32)}, "do not fit"),
                          ({"codebook": np.array([np.nan, 0], dtype=np.float32)}, "NaN"),
                          ({"indices": np.array([0, 2], dtype=np.int32)}, "outside"),
                          ({"indices": np.array([0], dtype=np.int32)}, "keeps 2"),
                          ({"mask": np.ones((2, 2, 1, 1), dtype=bool)}, "2-D"),
                          ({"bias": np.zeros(3, dtype=np.float32)}, "bias"),
                          ({"bias_mask": np.ones(2, dtype=np.uint8)}, "bias_mask")]:
        with pytest.raises((CompressError, ConfigError), match=match):
            QuantizedLayer(**{**ok, **change})
