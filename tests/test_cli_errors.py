"""Every refusal is clean: each subcommand, given bad input, exits with status 2 before any work, names the
offending option, prints no traceback, and loses no file. Found by trying refdns as a new user would
(the issue "Nothing lost, every refusal clean"); each row failed on the main of that day."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refdns import checkpoint
from refdns.cli import main
from refdns.nets import get_spec
from refdns.run import TrainConfig, new_run
from tests.conftest import data_dir


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    """A real (tiny) LeNet-300-100 checkpoint."""
    path = tmp_path_factory.mktemp("ck") / "ck.h5"
    state = new_run(get_spec("lenet-300-100"), 64, TrainConfig(batch_size=8), seed=0)
    checkpoint.save(path, state, method="dense", config={"net": "lenet-300-100"})
    return path


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse refuses a malformed number itself, with status 2
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, option: str, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, err)
    assert option in err, err
    assert "Traceback" not in err
    return err


DATA = ["--data-dir", str(data_dir() or "/nonexistent")]


@pytest.mark.parametrize("argv, option", [
    (["train", "--net", "lenet-5", "--batch-size", "0"], "--batch-size"),
    (["train", "--net", "lenet-5", "--iterations", "0"], "--iterations"),
    (["train", "--net", "lenet-5", "--seed", "-1"], "--seed"),
    (["train", "--net", "lenet-5", "--base-lr", "nan"], "--base-lr"),
    (["train", "--net", "lenet-5", "--test-interval", "-3"], "--test-interval"),
    (["dns", "--net", "lenet-5", "--from", "DIR"], "--from"),
    (["dns", "--net", "lenet-5", "--from", "CK", "--c-rate", "conv9=2"], "--c-rate"),
    (["dns", "--net", "lenet-300-100", "--from", "CK", "--update-every", "5"], "distiller"),
    (["dns", "--net", "lenet-300-100", "--from", "CK", "--sensitivity-multiplier", "2"], "distiller"),
    (["reproduce", "--net", "lenet-5", "--dense-iterations", "0"], "--dense-iterations"),
    (["reproduce", "--net", "lenet-5", "--dense-from", "CK", "--dense-iterations", "500"], "--dense-from"),
    (["reproduce", "--net", "lenet-5", "--method", "han", "--recipe", "authors"], "recipe 'authors'"),
    (["reproduce", "--net", "lenet-5", "--method", "han", "--iterations", "5"], "--iterations"),
    (["reproduce", "--net", "lenet-5", "--method", "magnitude", "--c-rate", "3"], "--c-rate"),
    (["reproduce", "--net", "lenet-5", "--out-dir", "CK"], "--out-dir"),
    (["golden", "--net", "lenet-5", "--max-elements", "0", "-o", "OUT"], "--max-elements"),
    (["golden", "--net", "lenet-5", "--max-elements", "-1", "-o", "OUT"], "--max-elements"),
    (["golden", "--net", "lenet-5", "--steps", "0", "-o", "OUT"], "--steps"),
    (["import", "X.npz", "--net", "lenet-5", "--n-train", "0", "-o", "OUT"], "--n-train"),
    (["import", "X.npz", "--net", "lenet-5", "--n-train", "-5", "-o", "OUT"], "--n-train"),
    (["import", "X.npz", "--net", "lenet-5", "-o", "OUT"], "npz"),
    (["eval", "DIR"], "checkpoint"),
    (["eval", "MISSING"], "checkpoint"),
    (["infer", "DIR"], "checkpoint"),
    (["infer", "CK", "--batch-size", "0"], "--batch-size"),
    (["export", "DIR", "-o", "OUT"], "checkpoint"),
    (["verify", "DIR", "CK"], "golden"),
])
def test_bad_input_is_refused_with_status_2_naming_the_option(argv, option, ck, tmp_path, capsys):
    subst = {"DIR": tmp_path, "CK": ck, "OUT": tmp_path / "out.h5", "MISSING": tmp_path / "nope.h5",
             "X.npz": tmp_path / "x.npz"}
    before = set(tmp_path.iterdir())
    data = DATA if argv[0] in ("train", "dns", "reproduce", "golden", "eval", "infer") else []
    refused(capsys, option, *[subst.get(a, a) for a in argv], *data)
    assert set(tmp_path.iterdir()) == before  # nothing written


@settings(max_examples=15, deadline=None)
@given(n=st.integers(max_value=0))
def test_every_count_option_refuses_numbers_below_one(n):
    for argv in (["train", "--net", "lenet-5", "--batch-size", str(n)],
                 ["golden", "--net", "lenet-5", "--steps", str(n), "-o", "x.h5"],
                 ["infer", "x.h5", "--batch-size", str(n)]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


def test_batch_larger_than_the_training_set_is_refused_before_training(tmp_path, capsys, mnist):
    out = tmp_path / "m.h5"
    refused(capsys, "--batch-size 70000", "train", "--net", "lenet-300-100", "--batch-size", "70000",
            "--iterations", "1", "--out", out, *DATA)
    assert not out.exists()


# ---- outputs: nothing lost -------------------------------------------------------------------------------

def test_output_that_is_an_input_is_refused_and_the_input_survives(ck, tmp_path, capsys):
    before = ck.read_bytes()
    refused(capsys, "same file", "export", ck, "-o", ck, "--force")
    assert ck.read_bytes() == before
    link = tmp_path / "link.h5"
    link.symlink_to(ck)
    refused(capsys, "same file", "export", ck, "-o", link, "--force")  # the same file through a link
    assert ck.read_bytes() == before and checkpoint.load(ck)


def test_two_outputs_of_one_command_may_not_be_the_same_file(tmp_path, capsys):
    x = tmp_path / "x"
    refused(capsys, "same file", "train", "--net", "lenet-300-100", "--out", x, "--json", x, *DATA)
    assert not x.exists()


def test_existing_output_needs_force(ck, tmp_path, capsys):
    out = tmp_path / "w.npz"
    out.write_bytes(b"precious")
    err = refused(capsys, "--force", "export", ck, "-o", out)
    assert out.read_bytes() == b"precious" and "exists" in err
    code, _, err = run(capsys, "export", ck, "-o", out, "--force")
    assert code == 0, err and np.load(out)


@pytest.mark.parametrize("target", ["/dev/full", "/dev/null"])
def test_an_output_that_is_not_a_regular_file_is_refused(ck, target, capsys):
    refused(capsys, "not a regular file", "export", ck, "-o", target, "--force")
    assert stat.S_ISCHR(os.stat(target).st_mode)


def test_unwritable_output_location_is_refused_before_any_work(tmp_path, capsys):
    refused(capsys, "--out", "train", "--net", "lenet-300-100", "--out", "/proc/x.h5", *DATA)
    refused(capsys, "--out", "train", "--net", "lenet-300-100", "--out", "", *DATA)
    refused(capsys, "--out", "train", "--net", "lenet-300-100", "--out", tmp_path, *DATA)  # a folder
    f = tmp_path / "file"
    f.write_text("x")
    refused(capsys, "--out-dir", "reproduce", "--net", "lenet-300-100", "--out-dir", f / "sub", *DATA)


def test_symlinked_output_is_written_through(ck, tmp_path, capsys):
    target = tmp_path / "real.npz"
    target.write_bytes(b"old")
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    code, _, err = run(capsys, "export", ck, "-o", link, "--force")
    assert code == 0, err
    assert link.is_symlink() and np.load(target)["ip1.weight"].shape == (300, 784)


def test_outputs_respect_the_umask_and_stale_temporaries_are_swept(ck, tmp_path, capsys):
    stale = tmp_path / ".w.npz.abc123.tmp"
    stale.write_bytes(b"left by a killed writer")
    old = os.umask(0o022)
    try:
        code, _, err = run(capsys, "export", ck, "-o", tmp_path / "w.npz")
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE(os.stat(tmp_path / "w.npz").st_mode) == 0o644
    assert not stale.exists()


def test_json_output_is_strict_json(tmp_path, capsys, mnist):
    """`train --iterations 0` wrote "test_error": NaN (not JSON); now it is refused, and a JSON never holds NaN."""
    import json

    from refdns.cli import write_json

    write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=pytest.fail) == {"a": None, "b": [None, 1.0]}


def test_an_unexpected_failure_is_one_line_unless_debug(monkeypatch, ck, capsys):
    import refdns.cli.analysis as analysis

    def boom(args):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(analysis, "cmd_eval", boom)  # main() builds its parser after the patch
    code, _, err = run(capsys, "eval", ck)
    assert code == 1 and "kaboom" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["--debug", "eval", str(ck)])


def test_every_option_of_every_command_has_help_and_shows_its_default():
    """--help once showed almost no defaults, and --gamma, --power, --dataset, --reading had no text."""
    import argparse

    from refdns.cli import build_parser

    parser = build_parser()
    assert "note" not in parser.description.lower() and "train" in parser.description
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            if not a.help:
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
        text = p.format_help()
        if name in ("train", "reproduce", "golden"):
            assert "(default: 0)" in text, name  # --seed's default is shown
    assert not missing, missing
