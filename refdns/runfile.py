"""Run files: an experiment as a TOML file a person can read, and back.

The schema, in one place (every key optional unless marked)::

    net = "lenet-300-100"            # required: a net of refdns.nets
    dataset = "mnist"                # or "fashion-mnist"
    seeds = [0, 1, 2, 3, 4]          # or "0-4"; one experiment per seed
    select_on = "test"               # "test": the paper's protocol; "validation": the last 10,000 training
                                     # images held out, the test set read once at the end
    threads = 1                      # BLAS and Numba threads (the bits of a run depend on it)

    [dense]                          # the dense phase: TrainConfig fields, or `from` a dense checkpoint
    iterations = 10000               # batch_size, test_interval, display_interval
    [dense.sgd]                      # SGDConfig fields: base_lr, momentum, weight_decay, lr_policy, ...

    [method]                         # absent: dense training only
    name = "dns"                     # required: a method of refdns.prune with a recipe
    recipe = "refdns"                # optional: start from this recipe; the keys below change it
    ...                              # the fields of the method's config, e.g. reading, band
    [method.layers.ip1]              # per-layer settings (DNS: c_rate, gamma, power, iter_stop)

    [train]                          # the pruning phase's solver (TrainConfig fields; unset: the recipe's)
    [train.sgd]

Unknown keys, wrong types and impossible values are refused with the key named (:class:`ConfigError`).
:func:`to_dict` and :func:`dumps` write the fully resolved form (every setting spelled out, no recipe), which
:func:`from_dict` reads back to the same :class:`~refdns.pipeline.Experiment`. TOML is read with the standard
library's ``tomllib`` and written here by hand: the schema is flat enough (tables of scalars and lists).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from refdns.atomic import write_text
from refdns.config import to_dict as config_to_dict
from refdns.datasets import DATASETS
from refdns.errors import ConfigError
from refdns.nets import NETS, get_spec
from refdns.optim import SGDConfig
from refdns.pipeline import CAFFE_DENSE, SELECT_ON, Experiment
from refdns.prune.base import reproducible_methods
from refdns.run import TrainConfig

TOP_KEYS = ("net", "dataset", "seeds", "select_on", "threads", "dense", "method", "train")
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
SGD_KEYS = tuple(f.name for f in dataclasses.fields(SGDConfig))

COMMENTS = {
    "seeds": "one experiment per seed; tables report mean, sd, min and max over them",
    "select_on": "test = the paper's protocol (settings chosen on the test set); validation = the last "
                 "10,000 training images held out, the test set read once at the end",
    "threads": "BLAS and Numba threads: the same seed gives the same bits only with the same count",
    "dense": "the dense phase (Caffe's LeNet solver), or `from` a dense checkpoint",
    "method": "the pruning method and every field of its config",
    "train": "the pruning phase's solver",
}


def _where(path: tuple[str, ...]) -> str:
    return ".".join(path) if path else "top level"


def _check_keys(d: Any, known: tuple[str, ...] | set[str], path: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ConfigError(f"{_where(path)} must be a table, got {type(d).__name__} {d!r}")
    unknown = sorted(set(d) - set(known))
    if unknown:
        where = ", ".join(".".join((*path, k)) for k in unknown)
        raise ConfigError(f"unknown key(s) {where}; known here: {sorted(known)}")
    return d


def _build(path: tuple[str, ...], make, *args, **kwargs):
    """``make(...)`` with any validation error re-raised as a ConfigError naming the run file's section."""
    try:
        return make(*args, **kwargs)
    except ConfigError as e:
        raise ConfigError(f"{_where(path)}: {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{_where(path)}: {e}") from None


def parse_seeds(value: Any, key: str = "seeds") -> tuple[int, ...]:
    """``[0, 1, 2]``, ``3`` or ``"0-4"`` (inclusive) -> a tuple of distinct non-negative seeds."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", value)
        if not m:
            raise ConfigError(f"{key}={value!r} must be a list of integers or a range like '0-4'")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise ConfigError(f"{key}={value!r}: the range ends before it starts")
        value = list(range(lo, hi + 1))
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}={value!r} must be a non-empty list of integers or a range like '0-4'")
    for s in value:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"{key}: {s!r} must be an integer >= 0")
    if len(set(value)) != len(value):
        raise ConfigError(f"{key}={value!r} names a seed twice")
    return tuple(value)


def _train_config(d: dict[str, Any], path: tuple[str, ...], base: TrainConfig) -> TrainConfig:
    d = dict(_check_keys(d, TRAIN_KEYS, path))
    sgd = d.pop("sgd", None)
    if sgd is not None:
        _check_keys(sgd, SGD_KEYS, (*path, "sgd"))
        d["sgd"] = _build((*path, "sgd"), dataclasses.replace, base.sgd, **sgd)
    return _build(path, dataclasses.replace, base, **d)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _method(d: dict[str, Any], net: str):
    """The [method] table -> (PruningMethod, Recipe or None)."""
    path = ("method",)
    if not isinstance(d, dict):
        raise ConfigError(f"method must be a table, got {type(d).__name__} {d!r}")
    d = dict(d)
    name = d.pop("name", None)
    known = reproducible_methods()
    if name not in known:
        raise ConfigError(f"method.name={name!r} must be one of {sorted(known)}")
    cls = known[name]
    fields = {f.name: f for f in dataclasses.fields(cls.config_type)}
    variant = d.pop("recipe", None)
    _check_keys(d, tuple(fields), path)
    recipe = None
    if variant is not None:
        if not isinstance(variant, str):
            raise ConfigError(f"method.recipe={variant!r} must be a string")
        recipe = _build(path, cls.recipe, net, variant)
        d = _merge(config_to_dict(recipe.config), d)
    for k, f in fields.items():  # TOML has arrays, not tuples
        if isinstance(f.default, tuple) and isinstance(d.get(k), list):
            d[k] = tuple(d[k])
    config = _build(path, cls.config_type, **d)
    layers = get_spec(net).layer_names
    for k in fields:
        value = getattr(config, k)
        if isinstance(value, dict):
            wrong = [x for x in value if x not in layers]
            if wrong:
                raise ConfigError(f"method.{k}: unknown layer(s) {wrong}; {net} has {list(layers)}")
    if hasattr(config, "check_net"):
        _build(path, config.check_net, get_spec(net))
    return cls(config), recipe


def from_dict(d: dict[str, Any]) -> tuple[Experiment, tuple[int, ...]]:
    """A run file's contents -> (the experiment of its first seed, all its seeds)."""
    _check_keys(d, TOP_KEYS, ())
    net = d.get("net")
    if net not in NETS:
        raise ConfigError(f"net={net!r} must be one of {sorted(NETS)}")
    dataset = d.get("dataset", "mnist")
    if dataset not in DATASETS:
        raise ConfigError(f"dataset={dataset!r} must be one of {sorted(DATASETS)}")
    seeds = parse_seeds(d.get("seeds", [0]))
    select_on = d.get("select_on", "test")
    if select_on not in SELECT_ON:
        raise ConfigError(f"select_on={select_on!r} must be one of {list(SELECT_ON)}")
    threads = d.get("threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r} must be an integer >= 1")

    dense_d = dict(d.get("dense", {}))
    _check_keys(dense_d, (*TRAIN_KEYS, "from"), ("dense",))
    dense_from = dense_d.pop("from", None)
    if dense_from is not None and not isinstance(dense_from, str):
        raise ConfigError(f"dense.from={dense_from!r} must be a path (a string)")
    dense = _train_config(dense_d, ("dense",), CAFFE_DENSE)

    if "method" not in d:
        if "train" in d:
            raise ConfigError("train: a [train] table needs a [method]; a dense run's solver is [dense]")
        return _build((), Experiment, net, None, dense, dense, dense_from, dataset, seeds[0], select_on,
                      threads), seeds
    method, recipe = _method(d["method"], net)
    base = dataclasses.replace(CAFFE_DENSE, batch_size=dense.batch_size, test_interval=dense.test_interval,
                               sgd=dataclasses.replace(dense.sgd, base_lr=recipe.base_lr if recipe else 0.01))
    train_d = d.get("train", {})
    scheduled = method.schedule_iterations()
    if not isinstance(train_d, dict) or "iterations" not in train_d:
        iterations = scheduled if scheduled is not None else (recipe.iterations if recipe else None)
        if iterations is None:
            raise ConfigError(f"train.iterations: method {method.name!r} needs the pruning phase's length")
        base = dataclasses.replace(base, iterations=iterations)
    train = _train_config(train_d, ("train",), base)
    if scheduled is not None and train.iterations != scheduled:
        raise ConfigError(f"train.iterations={train.iterations} contradicts method {method.name!r}, whose "
                          f"schedule trains {scheduled} iterations")
    exp = _build((), Experiment, net, method, train, dense, dense_from, dataset, seeds[0], select_on, threads)
    return exp, seeds


def to_dict(exp: Experiment, seeds: tuple[int, ...] | list[int] | None = None) -> dict[str, Any]:
    """The fully resolved run file of ``exp`` (``seeds`` default: its own seed)."""
    out: dict[str, Any] = {"net": exp.net, "dataset": exp.dataset,
                           "seeds": list(seeds) if seeds is not None else [exp.seed],
                           "select_on": exp.select_on, "threads": exp.threads}
    dense = config_to_dict(exp.dense)
    out["dense"] = ({"from": exp.dense_from} if exp.dense_from is not None else {}) | dense
    if exp.method is not None:
        cfg = {k: v for k, v in exp.method.config_dict().items() if k != "method"}
        out["method"] = {"name": exp.method.name} | cfg
        out["train"] = config_to_dict(exp.train)
    return out


def from_checkpoint_config(config: dict[str, Any], *, source: str = "checkpoint") -> dict[str, Any]:
    """The run file that recreates the run whose checkpoint stores ``config`` (``ck.config``).

    Checkpoints written before run files existed record neither the dense phase of a pruned run nor the
    protocol or threads: Caffe's dense recipe, the test protocol and 1 thread are assumed for them.
    """
    if "train" not in config or "net" not in config:
        raise ConfigError(f"{source} records no training settings (an imported, decompressed or thinned net?): no run file recreates it")
    out: dict[str, Any] = {"net": config["net"], "dataset": config.get("dataset", "mnist"),
                           "seeds": [config.get("seed", 0)], "select_on": config.get("select_on", "test"),
                           "threads": config.get("threads", 1)}
    method = config.get("method")
    if method:
        m = dict(method)
        out["method"] = {"name": m.pop("method")} | m
        out["train"] = config["train"]
        dense = config.get("dense") or config_to_dict(CAFFE_DENSE)
    else:
        dense = config["train"]
    if config.get("dense_from"):
        dense = {"from": config["dense_from"]} | dense
    out["dense"] = dense
    return out


# ---- TOML ----------------------------------------------------------------------------------------------

def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x, where) for x in v) + "]"
    raise ConfigError(f"{where}: cannot write {type(v).__name__} {v!r} to TOML")


def dumps(d: dict[str, Any], *, header: str = "") -> str:
    """``d`` (nested dicts of scalars and lists; ``None`` values left out) as TOML text."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]

    def table(sub: dict[str, Any], path: tuple[str, ...]) -> None:
        scalars = [(k, v) for k, v in sub.items() if v is not None and not isinstance(v, dict)]
        tables = [(k, v) for k, v in sub.items() if isinstance(v, dict)]
        if path and (scalars or not tables):
            if lines:
                lines.append("")
            if len(path) == 1 and path[0] in COMMENTS:
                lines.append(f"# {COMMENTS[path[0]]}")
            lines.append("[" + ".".join(_key(p) for p in path) + "]")
        for k, v in scalars:
            comment = f"  # {COMMENTS[k]}" if not path and k in COMMENTS else ""
            lines.append(f"{_key(k)} = {_value(v, '.'.join((*path, k)))}{comment}")
        for k, v in tables:
            table(v, (*path, k))

    table(d, ())
    return "\n".join(lines) + "\n"


def loads(text: str, *, source: str = "run file") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None


def read(path: str | Path) -> tuple[Experiment, tuple[int, ...]]:
    """Read a run file (a path, or the name of a built-in recipe such as ``lenet-5-dns``)."""
    p = Path(path)
    if not p.exists() and str(path) in builtin_recipes():
        text = builtin_recipes()[str(path)].read_text()
    else:
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read run file {path}: {e.strerror} (built-in recipes: "
                              f"{', '.join(builtin_recipes())})") from None
    try:
        return from_dict(loads(text, source=str(path)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def write(path: str | Path, exp: Experiment, seeds=None, *, header: str = "") -> None:
    write_text(path, dumps(to_dict(exp, seeds), header=header))


def builtin_recipes() -> dict[str, Any]:
    """The run files installed with the package (refdns/recipes/*.toml), by name (``lenet-5-dns``)."""
    folder = resources.files("refdns") / "recipes"
    return {p.name[:-5]: p for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".toml")}


def recipe_text(net: str, method: str) -> str:
    """The built-in run file of ``method``'s refdns recipe for ``net``: what :func:`experiment` resolves,
    with five seeds (the tables' count)."""
    from refdns.pipeline import experiment

    rec = reproducible_methods()[method].recipe(net)
    header = (f"{net} pruned with {method}: refdns's built-in recipe ({rec.note}).\n"
              f"Run it with `refdns run {net}-{method}` (or a copy of this file); every setting is spelled out.\n"
              "Five seeds, as the tables report them; `--seeds 0` runs one.")
    return dumps(to_dict(experiment(net, method), seeds=[0, 1, 2, 3, 4]), header=header)


def write_builtin_recipes(folder: str | Path) -> list[Path]:
    """Write every net x method recipe as ``<net>-<method>.toml`` into ``folder`` (refdns/recipes when a
    recipe changes; tests/test_runfile.py says when)."""
    out = []
    for net in sorted(NETS):
        for method in reproducible_methods():
            path = Path(folder) / f"{net}-{method}.toml"
            write_text(path, recipe_text(net, method))
            out.append(path)
    return out
