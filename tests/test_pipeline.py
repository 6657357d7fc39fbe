"""Whole experiments: the Experiment and the recipes it resolves, zero-iteration runs, one-shot pruning
without retraining, and the JSON figures the CLI writes."""

import os
import signal

import numpy as np
import pytest

from refdns.errors import ConfigError
from refdns.nets.sequential import init_params
from refdns.pipeline import Data, run_training
from refdns.run import TrainConfig
from tests.prune.tiny import TINY, make, tiny_batch

def test_one_shot_without_retraining_zeroes_the_pruned_weights(rng):
    x, y = tiny_batch(rng, 16)
    data = Data(x, y, x, y)
    params = init_params(TINY, rng=rng)
    state, _ = run_training(
        TINY,
        data,
        TrainConfig(iterations=0, batch_size=4),
        seed=0,
        method=make("magnitude", 0.25, 0.5),
        params=params,
    )
    assert np.count_nonzero(state.masks["fc1.weight"]) == round(0.25 * 54)
    assert np.all(state.params["fc1.weight"][~state.masks["fc1.weight"]] == 0)
    assert np.array_equal(
        state.params["fc1.weight"] != 0, state.masks["fc1.weight"] & (params["fc1.weight"] != 0)
    )
    assert state.iteration == 0 and len(state.history.mask_updates) == 2


def test_zero_iterations_of_surgery_change_nothing(rng):
    """`dns --iterations 0` once pruned to 0.41% kept: a non-one-shot method must change nothing."""
    from refdns.prune.dns import DNS, DNSConfig, DNSLayerConfig

    x, y = tiny_batch(rng, 16)
    params = init_params(TINY, rng=rng)
    method = DNS(DNSConfig(layers={"fc1": DNSLayerConfig(c_rate=5.0), "fc2": DNSLayerConfig(c_rate=5.0)}))
    state, _ = run_training(TINY, Data(x, y, x, y), TrainConfig(iterations=0, batch_size=4), seed=0,
                            method=method, params=params)
    assert all(m.all() for m in state.masks.values())
    assert all(np.array_equal(state.params[k], params[k]) for k in params)
    assert state.history.mask_updates == []


def test_experiment_resolves_the_recipe_and_overrides():
    from refdns.pipeline import experiment

    exp = experiment("lenet-300-100", "dns")
    assert exp.train.iterations == 40_000 and exp.train.sgd.base_lr == 0.02 and exp.dense.sgd.base_lr == 0.01
    assert exp.method.config.layers["ip1"].c_rate == 5.0
    exp = experiment("lenet-300-100", "dns", recipe="authors", iterations=7, sgd={"base_lr": 0.5})
    assert exp.train.iterations == 7 and exp.train.sgd.base_lr == 0.5 and exp.dense.sgd.base_lr == 0.01
    assert exp.method.config.layers["ip1"].c_rate == 3.0
    han = experiment("lenet-5", "han", overrides={"rounds": 2})
    assert han.train.iterations == 2 * han.method.config.round_iterations  # Han's own schedule
    mag = experiment("lenet-5", "magnitude", overrides={"retrain_iterations": 0})
    assert mag.train.iterations == 0 and mag.method.one_shot


@pytest.mark.parametrize("kwargs, match", [
    (dict(net="lenet-5", method="han", recipe="authors"), "recipe 'authors' does not exist for --method han"),
    (dict(net="lenet-5", method="obd"), "has no recipe"),
    (dict(net="lenet-5", method="nope"), "is not one of"),
    (dict(net="lenet-6", method="dns"), "lenet-6"),
    (dict(net="lenet-5", method="dns", seed=-1), "seed=-1"),
    (dict(net="lenet-5", method="dns", dense_iterations=0), "at least 1 iteration"),
    (dict(net="lenet-5", method="dns", overrides={"reading": "caffe", "update_every": 5}), "distiller"),
    (dict(net="lenet-5", method=None, overrides={"rounds": 2}), "need a pruning method"),
])
def test_experiment_refuses_nonsense_before_any_work(kwargs, match):
    from refdns.pipeline import experiment

    with pytest.raises((ConfigError, ValueError), match=match):
        experiment(**kwargs)


def test_reproduce_returns_both_phases_and_the_json_the_cli_writes(mnist, tmp_path):
    import json

    from refdns import checkpoint
    from refdns.pipeline import experiment, reproduce, result_json

    exp = experiment("lenet-300-100", "dns", iterations=30, dense_iterations=40, test_interval=0)
    data = Data(*mnist)
    result = reproduce(exp, data, dense_out=tmp_path / "d.h5", out=tmp_path / "p.h5")
    assert result.dense.iterations == 40 and result.pruned.iterations == 30 and result.iterations == 70
    fig = json.loads(json.dumps(result_json(result), allow_nan=False))
    assert fig["pruning_seconds"] == result.pruned.seconds and "surgery_seconds" not in fig
    assert fig["dense_iterations"] == 40 and fig["iterations"] == 70 and fig["method"] == "dns"
    assert set(fig["thresholds"]) >= {"ip1.a", "ip1.b"} and fig["kept"] == result.summary["kept"]
    assert checkpoint.load(tmp_path / "p.h5").state.iteration == 30
    # The same experiment from the dense checkpoint it left gives the same pruned net, bit for bit.
    again = reproduce(experiment("lenet-300-100", "dns", iterations=30, dense_from=str(tmp_path / "d.h5"),
                                 test_interval=0), data)
    assert all(np.array_equal(again.pruned.state.params[k], result.pruned.state.params[k])
               for k in result.pruned.state.params)
    assert again.dense.seconds is None and again.dense.test_error == result.dense.test_error


def test_ctrl_c_leaves_a_resumable_checkpoint_and_resume_is_bit_exact(mnist, tmp_path, monkeypatch):
    """Ctrl-C used to throw the run away; now it leaves <target>.partial.h5 and resume finishes the very
    run an uninterrupted one would have made."""
    from refdns import checkpoint
    from refdns import train as train_module
    from refdns.pipeline import RunInterrupted, experiment, partial_path, reproduce, resume

    data = Data(*mnist)
    exp = experiment("lenet-300-100", "dns", iterations=40, dense_iterations=30, test_interval=0)
    whole = reproduce(exp, data, dense_out=tmp_path / "a-dense.h5", out=tmp_path / "a.h5")

    real_step = train_module.train_step
    calls = {"n": 0}

    def step(state, *a, **kw):  # a real Ctrl-C (SIGINT) during the 47th step of the run (the surgery's 17th)
        calls["n"] += 1
        if calls["n"] == 47:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(state, *a, **kw)

    monkeypatch.setattr(train_module, "train_step", step)
    out = tmp_path / "b.h5"
    with pytest.raises(RunInterrupted) as info:
        reproduce(exp, data, dense_out=tmp_path / "b-dense.h5", out=out)
    monkeypatch.setattr(train_module, "train_step", real_step)
    assert info.value.checkpoint == partial_path(out) and not out.exists()
    assert checkpoint.load(info.value.checkpoint).state.iteration == 17  # the step under way finished
    phase = resume(info.value.checkpoint, data)
    assert phase.checkpoint == out and not partial_path(out).exists()
    a, b = whole.pruned.state, checkpoint.load(out).state
    assert b.iteration == 40
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]) and np.array_equal(a.masks[k], b.masks[k])
        assert np.array_equal(a.velocity[k], b.velocity[k])
    assert [r.to_dict() for r in a.history.mask_updates] == [r.to_dict() for r in b.history.mask_updates]
