"""The real console entry point, run as a user would (a subprocess), on real MNIST."""

import json
import os
import subprocess
import sys

import numpy as np

from refdns import checkpoint
from tests.conftest import require_data


def run_cli(*args, cwd=None):
    d = require_data()
    env = dict(os.environ, REFDNS_DATA=str(d))
    return subprocess.run([sys.executable, "-m", "refdns", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_train_writes_checkpoint_and_json(tmp_path):
    out, js = tmp_path / "m.h5", tmp_path / "m.json"
    r = run_cli("train", "--net", "lenet-300-100", "--iterations", "60", "--test-interval", "30",
                "--out", str(out), "--json", str(js), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "iter     30" in r.stderr and "test error" in r.stderr
    figures = json.loads(js.read_text())
    assert figures["iterations"] == 60 and 0.0 <= figures["test_error"] < 0.5 and figures["seconds"] > 0
    ck = checkpoint.load(out)
    assert ck.state.iteration == 60 and ck.config["train"]["iterations"] == 60


def test_nonsense_setting_gives_a_clear_error_and_writes_nothing(tmp_path):
    out = tmp_path / "m.h5"
    r = run_cli("train", "--net", "lenet-5", "--base-lr", "-1", "--out", str(out))
    assert r.returncode == 2
    assert "argument --base-lr: -1.0 must be a finite number > 0" in r.stderr
    assert not out.exists()


def test_missing_data_says_where_it_looked(tmp_path):
    env = dict(os.environ, REFDNS_DATA=str(tmp_path / "nowhere"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "refdns", "train", "--net", "lenet-5", "--no-download"],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert "nowhere" in r.stderr


def test_reproduce_runs_dense_then_surgery_and_reports_the_paper_table(tmp_path):
    js = tmp_path / "r.json"
    r = run_cli("reproduce", "--net", "lenet-300-100", "--dense-iterations", "150", "--iterations", "150",
                "--test-interval", "0", "--out-dir", str(tmp_path), "--json", str(js), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "| ip1 |" in r.stdout and "compression" in r.stdout and "mask churn" in r.stdout
    assert "data order shuffled" in r.stdout and "draws" not in r.stdout  # issue 16: under the paper table
    fig = json.loads(js.read_text())
    for key in ("test_error", "dense_test_error", "kept_fraction", "seconds", "layers", "churn", "thresholds"):
        assert key in fig
    assert 0 < fig["kept_fraction"] < 1 and fig["config"]["train"]["sgd"]["base_lr"] == 0.02  # the recipe's lr
    assert sum(v["kept"] for v in fig["layers"].values()) == fig["kept"]
    ck = checkpoint.load(tmp_path / "lenet-300-100-dns.h5")
    assert ck.method == "dns" and "ip1.a" in ck.state.method_state

    # dns from the dense checkpoint the pipeline left, with the authors' settings and one layer overridden
    js2 = tmp_path / "d.json"
    r = run_cli("dns", "--net", "lenet-300-100", "--from", str(tmp_path / "lenet-300-100-dense.h5"),
                "--recipe", "authors", "--c-rate", "ip3=1.5", "--iterations", "50", "--test-interval", "0",
                "--out", str(tmp_path / "d.h5"), "--json", str(js2), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "data order shuffled" in r.stdout
    fig = json.loads(js2.read_text())
    assert fig["config"]["method"]["layers"]["ip3"]["c_rate"] == 1.5
    assert fig["config"]["method"]["layers"]["ip1"]["c_rate"] == 3.0
    assert fig["config"]["train"]["sgd"]["base_lr"] == 0.01


def test_dns_refuses_a_checkpoint_of_another_net(tmp_path):
    out = tmp_path / "m.h5"
    assert run_cli("train", "--net", "lenet-300-100", "--iterations", "2", "--test-interval", "0",
                   "--out", str(out), "--no-progress").returncode == 0
    r = run_cli("dns", "--net", "lenet-5", "--from", str(out), "--no-progress")
    assert r.returncode == 2 and "holds a lenet-300-100" in r.stderr


def test_ctrl_c_during_train_leaves_a_resumable_checkpoint(tmp_path):
    """Ctrl-C used to exit 130 and throw the run away; now it leaves runs/<name>.partial.h5 and says how to
    resume, and `refdns resume` finishes the very run an uninterrupted one makes."""
    import signal
    import time

    d = require_data()
    env = dict(os.environ, REFDNS_DATA=str(d), OPENBLAS_NUM_THREADS="1")
    args = ["train", "--net", "lenet-300-100", "--iterations", "3000", "--test-interval", "100", "--no-progress"]
    p = subprocess.Popen([sys.executable, "-m", "refdns", *args, "--out", str(tmp_path / "m.h5")],
                         stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stderr:  # wait until training is under way
        if line.startswith("iter "):
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    assert p.wait(timeout=120) == 130, err
    partial = tmp_path / "m.partial.h5"
    assert f"refdns resume {partial}" in err and partial.exists() and not (tmp_path / "m.h5").exists()
    stopped_at = checkpoint.load(partial).state.iteration
    assert 0 < stopped_at < 3000
    r = run_cli("resume", str(partial), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert not partial.exists()
    r = run_cli(*args, "--out", str(tmp_path / "whole.h5"))
    assert r.returncode == 0, r.stderr
    a, b = checkpoint.load(tmp_path / "m.h5").state, checkpoint.load(tmp_path / "whole.h5").state
    assert a.iteration == b.iteration == 3000
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
