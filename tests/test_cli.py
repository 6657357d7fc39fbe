"""The real console entry point, run as a user would (a subprocess), on real MNIST."""

import json
import os
import subprocess
import sys

import pytest

from refdns import checkpoint
from tests.conftest import data_dir


def run_cli(*args, cwd=None):
    d = data_dir()
    if d is None:
        pytest.skip("no MNIST copy: set REFDNS_DATA")
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
    assert "base_lr=-1.0 must be > 0" in r.stderr
    assert not out.exists()


def test_missing_data_says_where_it_looked(tmp_path):
    env = dict(os.environ, REFDNS_DATA=str(tmp_path / "nowhere"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "refdns", "train", "--net", "lenet-5", "--no-download"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "nowhere" in r.stderr
