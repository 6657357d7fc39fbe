"""`refdns reproduce --method han|magnitude|random`, run as a user would, on real MNIST (short runs)."""

import json

import pytest

from refdns import checkpoint
from tests.test_cli import run_cli


def test_reproduce_han_end_to_end(tmp_path):
    js = tmp_path / "han.json"
    r = run_cli(
        "reproduce",
        "--net",
        "lenet-300-100",
        "--method",
        "han",
        "--dense-iterations",
        "40",
        "--rounds",
        "2",
        "--round-iterations",
        "15",
        "--quality",
        "ip1=1.0,ip2=0.8,ip3=0.5",
        "--test-interval",
        "0",
        "--out-dir",
        str(tmp_path),
        "--json",
        str(js),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "| ip1 |" in r.stdout and "compression" in r.stdout
    f = json.loads(js.read_text())
    assert f["iterations"] == 70 and f["pruning_iterations"] == 30 and f["dense_iterations"] == 40
    assert 0.0 < f["kept_fraction"] < 1.0 and f["test_error"] < 0.9 and f["dense_test_error"] < 0.9
    assert f["seconds"] > 0 and f["method"] == "han"
    ck = checkpoint.load(tmp_path / "lenet-300-100-han.h5")
    assert ck.method == "han" and ck.state.iteration == 30 and int(ck.state.method_state["round"]) == 2
    assert ck.config["method"]["quality"] == {"ip1": 1.0, "ip2": 0.8, "ip3": 0.5}
    for k, m in ck.state.masks.items():  # pruned weights were held at exactly zero
        assert (ck.state.params[k][~m] == 0).all()


def test_reproduce_magnitude_without_retraining_from_a_dense_checkpoint(tmp_path):
    dense = tmp_path / "d.h5"
    r = run_cli("train", "--net", "lenet-300-100", "--iterations", "30", "--out", str(dense), "--no-progress")
    assert r.returncode == 0, r.stderr
    js = tmp_path / "m.json"
    r = run_cli(
        "reproduce",
        "--net",
        "lenet-300-100",
        "--method",
        "magnitude",
        "--dense-from",
        str(dense),
        "--iterations",
        "0",
        "--density",
        "ip1=0.1,ip2=0.2,ip3=0.5",
        "--out-dir",
        str(tmp_path),
        "--json",
        str(js),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    f = json.loads(js.read_text())
    assert f["iterations"] == 30 and f["pruning_iterations"] == 0
    assert f["layers"]["ip1"]["kept_weights"] == round(0.1 * 784 * 300)
    assert f["layers"]["ip3"]["kept_weights"] == 500


def test_flags_of_another_method_are_refused(tmp_path, capsys):
    from refdns.cli import main

    for argv, flag in (
        (["--method", "random", "--quality", "1.5"], "--quality"),
        (["--method", "han", "--iterations", "100"], "--rounds"),
        (["--method", "dns", "--density", "0.1"], "--density"),
        (["--method", "magnitude", "--density", "ip9=0.1"], "ip9"),
    ):
        assert main(["reproduce", "--net", "lenet-300-100", "--out-dir", str(tmp_path), *argv]) == 2
        assert flag in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_reproduce_offers_only_methods_with_a_recipe():
    """OBD and OBS need Hessian data; offering them to reproduce would end in a traceback."""
    from refdns.cli import build_parser
    from refdns.prune.base import reproducible_methods

    assert set(reproducible_methods()) == {"dns", "gmp", "han", "magnitude", "random", "ssl", "structured"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "--net", "lenet-5", "--method", "obd"])


def test_run_file_with_ssl_removes_groups_and_the_result_thins(tmp_path):
    """SSL chosen like every method (a run file's [method] name), short and strong: neurons go, and
    `refdns thin` cuts them out of the checkpoint it wrote."""
    rf = tmp_path / "ssl.toml"
    rf.write_text('net = "lenet-300-100"\nseeds = "0"\n[dense]\niterations = 60\ntest_interval = 0\n'
                  '[method]\nname = "ssl"\nrecipe = "refdns"\nlambda_filter = 0.03\nlambda_channel = 0.03\n'
                  'threshold = 0.15\niterations = 160\nprune_interval = 80\nfinetune_iterations = 10\n'
                  '[train]\niterations = 170\ntest_interval = 0\n')
    r = run_cli("run", str(rf), "--out-dir", str(tmp_path / "out"), "--no-progress")
    assert r.returncode == 0, r.stderr
    ck = checkpoint.load(tmp_path / "out" / "seed0-ssl.h5")
    assert ck.method == "ssl" and int(ck.state.method_state["removals"]) == 2
    assert any(u.layer == "ip1" and u.pruned > 0 for u in ck.state.history.mask_updates)
    r = run_cli("thin", str(tmp_path / "out" / "seed0-ssl.h5"), "-o", str(tmp_path / "small.h5"))
    assert r.returncode == 0, r.stderr
    assert "lenet-300-100-thin-" in r.stdout
