"""Run files: the TOML schema, its refusals, the built-in recipes, and show / rerun / run on the CLI."""

import dataclasses

import pytest

from refdns import runfile
from refdns.errors import ConfigError
from refdns.nets import NETS
from refdns.pipeline import experiment
from refdns.prune.base import reproducible_methods


def same(a, b) -> bool:
    """Two experiments are the same when every field is, the method's config compared as a dataclass."""
    fields = [f.name for f in dataclasses.fields(a) if f.name != "method"]
    if any(getattr(a, f) != getattr(b, f) for f in fields):
        return False
    if (a.method is None) != (b.method is None):
        return False
    return a.method is None or (type(a.method) is type(b.method) and a.method.config == b.method.config)


CASES = [(net, m) for net in sorted(NETS) for m in reproducible_methods()]


@pytest.mark.parametrize("net, method", CASES)
def test_each_builtin_recipe_file_is_what_experiment_resolves(net, method):
    recipes = runfile.builtin_recipes()
    name = f"{net}-{method}"
    assert name in recipes, f"refdns/recipes/{name}.toml is missing"
    exp, seeds = runfile.read(name)
    assert seeds == (0, 1, 2, 3, 4)
    assert same(exp, experiment(net, method)), f"{name}.toml differs from experiment({net!r}, {method!r})"
    assert recipes[name].read_text() == runfile.recipe_text(net, method), (
        "a recipe changed: python -c \"from refdns.runfile import write_builtin_recipes; "
        "write_builtin_recipes('refdns/recipes')\"")


@pytest.mark.parametrize("exp", [
    experiment("lenet-5", "dns", overrides={"reading": "distiller", "update_every": 3}, iterations=123,
               sgd={"base_lr": 0.005, "lr_policy": "fixed"}, select_on="validation", threads=2, seed=7),
    experiment("lenet-300-100", "han", overrides={"rounds": 2, "round_iterations": 10}),
    experiment("lenet-300-100", "magnitude", overrides={"scope": "global", "density": 0.1, "densities": None}),
    experiment("lenet-300-100", None, dense_iterations=77, batch_size=32),
    experiment("lenet-5", "random", dense_from="runs/dense.h5"),
])
def test_experiment_to_toml_and_back_is_the_same_experiment(exp):
    text = runfile.dumps(runfile.to_dict(exp, seeds=[exp.seed, 11]))
    again, seeds = runfile.from_dict(runfile.loads(text))
    assert seeds == (exp.seed, 11)
    assert same(again, exp)


def test_a_short_file_starts_from_the_recipe_and_changes_only_what_it_says():
    exp, seeds = runfile.from_dict(runfile.loads(
        'net = "lenet-300-100"\nseeds = "0-2"\n[method]\nname = "dns"\nrecipe = "refdns"\n'
        "[method.layers.ip2]\nc_rate = 2.0\n"))
    base = experiment("lenet-300-100", "dns")
    assert seeds == (0, 1, 2)
    assert exp.method.config.layers["ip2"].c_rate == 2.0
    assert exp.method.config.layers["ip1"] == base.method.config.layers["ip1"]
    assert exp.train == base.train and exp.dense == base.dense


BAD = [
    ('net = "lenet-5"\ncolour = 3\n', "colour"),
    ('net = "lenet-6"\n', "net="),
    ('net = "lenet-5"\nthreads = "2"\n', "threads"),
    ('net = "lenet-5"\nthreads = 0\n', "threads"),
    ('net = "lenet-5"\nseeds = [0, 0]\n', "seeds"),
    ('net = "lenet-5"\nseeds = "4-1"\n', "seeds"),
    ('net = "lenet-5"\nselect_on = "train"\n', "select_on"),
    ('net = "lenet-5"\n[dense]\niterations = 1.5\n', "iterations"),
    ('net = "lenet-5"\n[dense]\nlr = 0.1\n', "dense.lr"),
    ('net = "lenet-5"\n[dense.sgd]\nmomentum = 2.0\n', "momentum"),
    ('net = "lenet-5"\n[dense.sgd]\nnesterov = true\n', "dense.sgd.nesterov"),
    ('net = "lenet-5"\n[method]\nname = "obs"\n', "method.name"),
    ('net = "lenet-5"\n[method]\nname = "dns"\nrecipe = "refdns"\nc_rate = 3\n', "method.c_rate"),
    ('net = "lenet-5"\n[method]\nname = "dns"\nrecipe = "refdns"\n[method.layers.ip9]\nc_rate = 3.0\n', "ip9"),
    ('net = "lenet-5"\n[method]\nname = "dns"\nrecipe = "refdns"\n[method.layers.ip1]\nc_rate = "x"\n', "c_rate"),
    ('net = "lenet-5"\n[method]\nname = "dns"\nrecipe = "nope"\n', "recipe"),
    ('net = "lenet-5"\n[method]\nname = "dns"\nreading = "caffe"\n', "layers"),
    ('net = "lenet-5"\n[method]\nname = "magnitude"\nrecipe = "refdns"\n[train]\niterations = 5\n',
     "train.iterations"),
    ('net = "lenet-5"\n[train]\niterations = 5\n', "train"),
    ('net = "lenet-5"\n[dense]\nfrom = 3\n', "dense.from"),
    ('net = "lenet-5"\n[dense\n', "TOML"),
]


@pytest.mark.parametrize("text, key", BAD)
def test_bad_run_files_are_refused_naming_the_key(text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        runfile.from_dict(runfile.loads(text))


def test_cli_run_show_and_rerun(mnist, tmp_path, capsys, monkeypatch):
    from refdns.cli import main

    monkeypatch.setenv("REFDNS_DATA", str(_data_dir()))
    rf = tmp_path / "tiny.toml"
    rf.write_text('net = "lenet-300-100"\nseeds = "0-1"\n[dense]\niterations = 20\ntest_interval = 0\n'
                  '[method]\nname = "dns"\nrecipe = "refdns"\n[train]\niterations = 10\ntest_interval = 0\n'
                  'data_order = "caffe"\n')
    assert main(["run", str(rf), "--out-dir", str(tmp_path / "out"), "--no-progress", "--no-download",
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "2 seed(s) [0, 1]" in out and "the paper's protocol" in out and "| kept ip1 |" in out
    # issue 16: the table names the pruning phase's data order, and the dense phase's when it differs
    assert "data order caffe (the training set in file order" in out and "the dense phase's: shuffled" in out
    ck = tmp_path / "out" / "seed1-dns.h5"
    assert main(["show", str(ck)]) == 0
    shown = capsys.readouterr().out
    exp, seeds = runfile.from_dict(runfile.loads(shown))
    want, _ = runfile.read(rf)
    assert seeds == (1,) and same(exp, dataclasses.replace(want, seed=1))
    assert main(["rerun", str(ck), "--out-dir", str(tmp_path / "again"), "--no-progress", "--no-download"]) == 0
    assert "bit for bit" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "missing.toml")]) == 2


def _data_dir():
    from tests.conftest import require_data

    return require_data()
