import numpy as np
import pytest

from refdns.errors import NonFiniteError
from refdns.nets import get_spec
from refdns.optim import SGDConfig
from refdns.run import TrainConfig, new_run
from refdns.train import evaluate, train


def test_same_seed_same_run_different_seed_different_run(mnist):
    x, y = mnist[0][:2000], mnist[1][:2000]
    spec = get_spec("lenet-300-100")
    cfg = TrainConfig(iterations=20, test_interval=0)
    a = train(new_run(spec, len(x), cfg, seed=1), x, y, cfg)
    b = train(new_run(spec, len(x), cfg, seed=1), x, y, cfg)
    c = train(new_run(spec, len(x), cfg, seed=2), x, y, cfg)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["ip1.weight"], c.params["ip1.weight"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_diverging_run_raises_a_named_error_with_the_step(mnist):
    x, y = mnist[0][:512], mnist[1][:512]
    spec = get_spec("lenet-300-100")
    cfg = TrainConfig(iterations=50, test_interval=0, sgd=SGDConfig(base_lr=1e4, lr_policy="fixed"))
    with pytest.raises(NonFiniteError) as info:
        train(new_run(spec, len(x), cfg, seed=0), x, y, cfg)
    assert info.value.step is not None and info.value.where == "loss"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "iterations", "bound"), [("lenet-300-100", 300, 0.12), ("lenet-5", 200, 0.15)])
def test_short_real_mnist_training_learns(mnist, name, iterations, bound):
    """A few hundred Caffe iterations on real MNIST: far below the 90% error of chance."""
    x_train, y_train, x_test, y_test = mnist
    spec = get_spec(name)
    cfg = TrainConfig(iterations=iterations, test_interval=0)
    state = train(new_run(spec, len(x_train), cfg, seed=0), x_train, y_train, cfg,
                  x_test=x_test[:2000], y_test=y_test[:2000])
    err = state.history.test_error[-1][1]
    assert err < bound, err
    assert err == evaluate(state, x_test[:2000], y_test[:2000])
    assert state.history.loss[-1][1] < state.history.loss[0][1]
