"""The validation split (select_on) and the thread setting of an experiment."""

import numpy as np
import pytest

from refdns.errors import ConfigError
from refdns.pipeline import VALIDATION_SIZE, Data, experiment, reproduce, selection_data


def _fake(n_train=12_000, n_test=50):
    x = np.arange(n_train, dtype=np.float32).reshape(n_train, 1)
    return Data(x, np.arange(n_train) % 10, np.zeros((n_test, 1), np.float32), np.zeros(n_test, np.int64))


def test_validation_is_the_last_10000_training_images_and_training_never_sees_them():
    data = _fake()
    sel = selection_data(data, "validation")
    assert VALIDATION_SIZE == 10_000
    assert len(sel.x_train) == 2_000 and len(sel.x_test) == 10_000
    assert np.array_equal(sel.x_test[:, 0], np.arange(2_000, 12_000))  # fixed: the tail, no shuffle
    assert not set(sel.x_train[:, 0]) & set(sel.x_test[:, 0])
    assert selection_data(data, "test") is data
    with pytest.raises(ConfigError, match="select_on"):
        selection_data(data, "train")
    with pytest.raises(ConfigError, match="validation"):
        selection_data(_fake(n_train=10_000), "validation")


def test_experiment_refuses_bad_threads_and_protocols():
    with pytest.raises(ConfigError, match="select_on"):
        experiment("lenet-300-100", "dns", select_on="tset")
    with pytest.raises(ConfigError, match="threads"):
        experiment("lenet-300-100", "dns", threads=0)


def test_validation_run_reads_the_test_set_once_at_the_end_and_records_both(mnist, tmp_path):
    from refdns import checkpoint
    from refdns.train import evaluate

    data = Data(*mnist)
    exp = experiment("lenet-300-100", "dns", iterations=20, dense_iterations=30, test_interval=10,
                     select_on="validation", threads=1)
    result = reproduce(exp, data, dense_out=tmp_path / "d.h5", out=tmp_path / "p.h5")
    val = selection_data(data, "validation")
    st = result.pruned.state
    assert result.pruned.validation_error == evaluate(st, val.x_test, val.y_test)
    assert result.pruned.test_error == evaluate(st, data.x_test, data.y_test)
    # every error measured during the run (the history) is a validation error
    assert st.history.test_error[-1] == (20, result.pruned.validation_error)
    ck = checkpoint.load(tmp_path / "p.h5")
    assert ck.config["select_on"] == "validation" and ck.config["threads"] == 1
    assert ck.config["validation_error"] == result.pruned.validation_error
    assert ck.config["dense"]["iterations"] == 30
    assert result.summary["select_on"] == "validation"
    # a dense net trained on all 60,000 images cannot seed a validation-protocol run
    full = reproduce(experiment("lenet-300-100", None, dense_iterations=5, test_interval=0), data,
                     out=tmp_path / "full.h5")
    assert full.dense.iterations == 5
    with pytest.raises(ConfigError, match="validation"):
        reproduce(experiment("lenet-300-100", "dns", iterations=1, dense_from=str(tmp_path / "full.h5"),
                             select_on="validation"), data)


def test_too_many_threads_are_refused_naming_the_setting(mnist):
    import numba

    exp = experiment("lenet-300-100", None, dense_iterations=1, threads=numba.config.NUMBA_NUM_THREADS + 1)
    with pytest.raises(ConfigError, match="threads"):
        reproduce(exp, Data(*mnist))


def test_an_interrupted_validation_run_resumes_on_the_same_split_bit_exactly(mnist, tmp_path, monkeypatch):
    import os
    import signal

    from refdns import checkpoint
    from refdns import train as train_module
    from refdns.pipeline import RunInterrupted, resume

    data = Data(*mnist)
    exp = experiment("lenet-300-100", "dns", iterations=20, dense_iterations=10, test_interval=10,
                     select_on="validation")
    whole = reproduce(exp, data, dense_out=tmp_path / "a-dense.h5", out=tmp_path / "a.h5")
    real_step, calls = train_module.train_step, {"n": 0}

    def step(state, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 18:  # the surgery's 8th step
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(state, *a, **kw)

    monkeypatch.setattr(train_module, "train_step", step)
    with pytest.raises(RunInterrupted) as info:
        reproduce(exp, data, dense_out=tmp_path / "b-dense.h5", out=tmp_path / "b.h5")
    monkeypatch.setattr(train_module, "train_step", real_step)
    phase = resume(info.value.checkpoint, data)
    a, b = whole.pruned.state, checkpoint.load(tmp_path / "b.h5").state
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert a.history.test_error == b.history.test_error  # measured on the same validation images
    assert phase.validation_error == whole.pruned.validation_error
    assert phase.test_error == whole.pruned.test_error
