"""`refdns golden --run EXPERIMENT.toml`: a golden trace of the experiment a run file describes, through the
real command line on real MNIST: its steps are `refdns run`'s, bad run files and clobbering outputs are
refused before any work, and the trace verifies against itself."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from refdns import checkpoint, cli, runfile
from refdns.golden import verify
from tests.conftest import require_data

# LeNet-300-100 DNS with user-chosen settings: 3 dense iterations, then 4 DNS iterations of batch 16 at lr
# 0.05 with thresholds low enough (c_rate -0.5) that the masks move, file order (data_order "caffe")
TINY = """net = "lenet-300-100"
seeds = [3, 4]
[dense]
iterations = 3
batch_size = 16
test_interval = 0
data_order = "caffe"
[method]
name = "dns"
recipe = "refdns"
[method.layers.ip1]
c_rate = -0.5
[method.layers.ip2]
c_rate = -0.5
[method.layers.ip3]
c_rate = -0.5
[train]
iterations = 4
batch_size = 16
test_interval = 0
data_order = "caffe"
[train.sgd]
base_lr = 0.05
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _golden(*args) -> list[str]:
    return ["golden", *args, "--data-dir", str(require_data()), "--no-download"]


def test_the_trace_of_a_run_file_is_its_run_step_for_step_and_verifies_against_itself(tiny, tmp_path, capsys):
    out = tmp_path / "g.h5"
    assert cli.main(_golden("--run", str(tiny), "-o", str(out), "--max-elements", "1000000")) == 0
    printed = capsys.readouterr().out
    assert "lenet-300-100, dns, 4 steps of batch 16, seed 3" in printed
    assert cli.main(["verify", str(out), str(out)]) == 0
    assert "PASS" in capsys.readouterr().out
    assert verify(out, out).ok

    exp, _ = runfile.read(tiny)
    with h5py.File(out) as f:
        assert (f.attrs["method"], int(f.attrs["steps"]), int(f.attrs["seed"])) == ("dns", 4, 3)
        config = json.loads(f.attrs["config"])
        assert config["run"] == json.loads(json.dumps(runfile.to_dict(exp)))  # the resolved run file
        assert config["train"]["data_order"] == "caffe" and config["train"]["sgd"]["base_lr"] == 0.05
        assert config["method"]["layers"]["ip2"]["c_rate"] == -0.5
        last = f["steps/0003"]
        params = {f"{n}.{k}": last[f"params/{n}/{k}"][()] for n in last["params"] for k in last["params"][n]}
        masks = {f"{n}.{k}": last[f"masks/{n}/{k}"][()] for n in last["masks"] for k in last["masks"][n]}
        inputs0 = f["steps/0000/inputs"][()]
        pruned = sum(int(f[f"steps/{t:04d}/surgery/pruned"][()].sum()) for t in range(4))
    assert 0 < pruned < sum(m.size for k, m in masks.items() if k.endswith(".weight"))

    # `refdns run` on the same file: its checkpoint after 4 iterations is the trace's last step, bit for bit
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(tiny), "--seeds", "3", "--out-dir", str(run_dir), "--data-dir",
                     str(require_data()), "--no-download"]) == 0
    capsys.readouterr()
    state = checkpoint.load(run_dir / "seed3-dns.h5").state
    assert state.iteration == 4
    for k in state.params:
        np.testing.assert_array_equal(params[k], state.params[k], err_msg=k)
        np.testing.assert_array_equal(masks[k].astype(bool), state.masks[k], err_msg=k)
    # data_order "caffe": the pruning phase's first batch is the first 16 training images, in file order
    from refdns.datasets import load_mnist

    x, _ = load_mnist("train", data_dir=require_data(), download=False)
    np.testing.assert_array_equal(inputs0, x[:16])


def test_steps_and_seed_choose_a_prefix_of_another_seeds_run(tiny, tmp_path, capsys):
    out = tmp_path / "g2.h5"
    assert cli.main(_golden("--run", str(tiny), "-o", str(out), "--steps", "2", "--seed", "4")) == 0
    assert "2 steps of batch 16, seed 4" in capsys.readouterr().out
    with h5py.File(out) as f:
        assert int(f.attrs["steps"]) == 2 and int(f.attrs["seed"]) == 4 and "steps/0002" not in f


def test_a_dense_run_file_traces_its_dense_phase(tmp_path, capsys):
    path = tmp_path / "dense.toml"
    path.write_text('net = "lenet-5"\n[dense]\niterations = 2\nbatch_size = 4\ntest_interval = 0\n')
    out = tmp_path / "d.h5"
    assert cli.main(_golden("--run", str(path), "-o", str(out))) == 0
    assert "lenet-5, dense, 2 steps of batch 4, seed 0" in capsys.readouterr().out
    with h5py.File(out) as f:
        assert f.attrs["method"] == "dense" and f["steps/0001/inputs"].shape == (4, 1, 28, 28)
    assert cli.main(["verify", str(out), str(out)]) == 0


@pytest.mark.parametrize(("text", "named"), [
    ('net = "lenet-300-100"\ncolour = 3\n', "colour"),
    ('net = "lenet-300-100"\n[method]\nname = "dns"\nrecipe = "refdns"\nc_rate = 3\n', "method.c_rate"),
    ('net = "lenet-300-100"\n[train]\niterations = 3\n', "[method]"),
    ("net = [\n", "not valid TOML"),
])
def test_a_bad_run_file_is_refused_by_name_before_any_work(tmp_path, capsys, text, named):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    out = tmp_path / "never.h5"
    empty = tmp_path / "no-data"
    empty.mkdir()  # had it read data first, the error would name the missing MNIST files instead
    argv = ["golden", "--run", str(bad), "-o", str(out), "--data-dir", str(empty), "--no-download"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "bad.toml" in err and "mnist" not in err.lower()
    assert not out.exists()


@pytest.mark.parametrize(("argv", "named"), [
    (["--steps", "5"], "--steps 5 is more than the run's 4 dns iterations"),
    (["--net", "lenet-5"], "drop --net"),
    (["--method", "han"], "drop --method"),
    (["--batch-size", "2"], "drop --batch-size"),
    (["--dataset", "fashion-mnist"], "drop --dataset"),
])
def test_settings_the_run_file_owns_are_refused(tiny, tmp_path, capsys, argv, named):
    out = tmp_path / "never.h5"
    assert cli.main(["golden", "--run", str(tiny), "-o", str(out), *argv]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_an_output_that_would_clobber_an_input_is_refused(tiny, tmp_path, capsys):
    before = tiny.read_text()
    assert cli.main(["golden", "--run", str(tiny), "-o", str(tiny), "--force"]) == 2
    assert "same file as the input --run" in capsys.readouterr().err
    assert tiny.read_text() == before
    # the dense checkpoint a run file starts from is an input too
    dense = tmp_path / "dense.h5"
    dense.write_bytes(b"not touched")
    from_ck = tmp_path / "from.toml"
    from_ck.write_text(f'net = "lenet-300-100"\n[dense]\nfrom = "{dense}"\n[method]\nname = "dns"\n'
                       'recipe = "refdns"\n[train]\niterations = 2\n')
    assert cli.main(["golden", "--run", str(from_ck), "-o", str(dense), "--force"]) == 2
    assert "same file as the input dense.from" in capsys.readouterr().err
    assert dense.read_bytes() == b"not touched"
    # and an existing output needs --force
    taken = tmp_path / "taken.h5"
    taken.write_bytes(b"x")
    assert cli.main(["golden", "--run", str(tiny), "-o", str(taken)]) == 2
    assert "--force" in capsys.readouterr().err and taken.read_bytes() == b"x"


def test_golden_without_run_still_needs_a_net(tmp_path, capsys):
    assert cli.main(["golden", "-o", str(tmp_path / "x.h5")]) == 2
    assert "--net" in capsys.readouterr().err


def test_a_long_run_is_traced_for_its_first_steps_unless_told(tmp_path, capsys):
    """Each traced step stores its whole batch: the default stops at golden.RUN_STEPS, and says so."""
    from refdns.golden import RUN_STEPS

    path = tmp_path / "long.toml"
    path.write_text(f'net = "lenet-300-100"\n[dense]\niterations = {RUN_STEPS + 5}\nbatch_size = 2\n'
                    "test_interval = 0\n")
    out = tmp_path / "l.h5"
    assert cli.main(_golden("--run", str(path), "-o", str(out))) == 0
    printed = capsys.readouterr().out
    assert f"the first {RUN_STEPS} of the run's {RUN_STEPS + 5} dense iterations" in printed
    with h5py.File(out) as f:
        assert int(f.attrs["steps"]) == RUN_STEPS
