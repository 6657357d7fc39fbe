import numpy as np
import pytest

from refdns.nets import bias_key, get_spec, init_params, loss_and_grads, weight_key
from refdns.nets.sequential import check_params, forward


@pytest.mark.parametrize(("name", "count"), [("lenet-300-100", 266_610), ("lenet-5", 431_080)])
def test_parameter_counts_match_the_caffe_models(name, count):
    assert get_spec(name).n_params() == count


def test_layer_names_are_caffes():
    assert get_spec("lenet-5").layer_names == ("conv1", "conv2", "ip1", "ip2")
    assert get_spec("lenet-300-100").layer_names == ("ip1", "ip2", "ip3")


def test_unknown_net_is_a_named_error():
    with pytest.raises(ValueError, match="lenet-300-100"):
        get_spec("lenet-4")


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_xavier_init_follows_caffe(name, rng):
    spec = get_spec(name)
    params = init_params(spec, rng=rng)
    for op in spec.layers:
        w = params[weight_key(op.name)]
        scale = np.sqrt(3.0 / op.fan_in)
        assert w.dtype == np.float32
        assert np.abs(w).max() <= scale
        assert np.abs(w).max() > 0.9 * scale  # fills the whole range, not a narrower one
        assert abs(float(w.std()) - scale / np.sqrt(3)) < 0.1 * scale  # std of U(-s, s) is s/sqrt(3)
        assert not params[bias_key(op.name)].any()
    again = init_params(spec, rng=np.random.default_rng(20161205))
    assert all(np.array_equal(params[k], again[k]) for k in params)


def test_check_params_names_the_bad_entry(rng):
    spec = get_spec("lenet-300-100")
    params = init_params(spec, rng=rng)
    params["ip2.weight"] = params["ip2.weight"][:, :10]
    with pytest.raises(ValueError, match="ip2.weight"):
        check_params(spec, params)


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_forward_keeps_dtype_and_shape(name, rng):
    spec = get_spec(name)
    for dtype in (np.float32, np.float64):
        params = init_params(spec, rng=rng, dtype=dtype)
        x = rng.random((3, 1, 28, 28)).astype(dtype)
        logits, cache = forward(spec, params, x, keep_outputs=True)
        assert logits.shape == (3, 10) and logits.dtype == dtype
        assert len(cache.outputs) == len(spec.ops)


def test_forward_rejects_wrong_input_shape(rng):
    spec = get_spec("lenet-5")
    params = init_params(spec, rng=rng)
    with pytest.raises(ValueError, match="x has shape"):
        forward(spec, params, np.zeros((2, 784), np.float32))


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet-5"])
def test_whole_net_gradient_matches_central_differences(name, rng):
    """The composed backward, checked in float64 on a sample of entries of every parameter."""
    spec = get_spec(name)
    params = init_params(spec, rng=rng, dtype=np.float64)
    for k in params:
        if k.endswith(".bias"):
            params[k] = rng.normal(0, 0.1, params[k].shape)
    x = rng.normal(size=(4, 1, 28, 28))  # continuous values: no max-pool ties, ReLU kinks of measure zero
    y = rng.integers(0, 10, size=4)
    _, grads = loss_and_grads(spec, params, x, y)
    h = 1e-6
    for k, p in params.items():
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, size=min(12, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + h
            lp, _ = loss_and_grads(spec, params, x, y)
            flat[i] = old - h
            lm, _ = loss_and_grads(spec, params, x, y)
            flat[i] = old
            num = (lp - lm) / (2 * h)
            ana = grads[k].reshape(-1)[i]
            assert abs(num - ana) <= 1e-6 * max(abs(num), abs(ana), 1e-3) + 1e-9, (k, i, num, ana)
