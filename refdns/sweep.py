"""Sweeps: a grid of settings times seeds, run in parallel on an existing engine, summarised in one table.

A sweep file is a run file (:mod:`refdns.runfile`) plus a ``[grid]`` table whose keys are dotted paths into
the run file and whose values are lists::

    base = "lenet-300-100-dns"          # optional: a run file or built-in recipe the keys below change
    seeds = "0-4"
    select_on = "validation"
    [train]
    iterations = 20000
    [grid]
    "method.layers.ip1.c_rate" = [4.0, 5.0]
    "method.layers.*.iter_stop" = [10000, 20000]   # * = every layer
    "train.sgd.base_lr" = [0.01, 0.02]

Every combination of the grid's values is a *point*; every point runs once per seed. The points run on a
local process pool (``concurrent.futures``) or on a Dask cluster (``dask.distributed``, the ``sweep`` extra),
each with one BLAS and Numba thread so that points do not fight over cores (and give the same bits wherever
they run). When the grid leaves the dense phase alone, each seed's dense net is trained once and shared by
every point (the same bits as training it per point: a run from a dense checkpoint equals the run that made
it). Each finished point and seed leaves one JSON file in ``points/``, named by a hash of its settings: a
sweep started again skips them (resumable), and a changed setting is a new point. The results table (markdown
and JSON) gives mean ± sd over the seeds per point, labelled with the selection protocol.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refdns.atomic import write_text
from refdns.errors import ConfigError
from refdns.pipeline import PROTOCOL_LABEL, Data, load_data, order_info, order_note, reproduce
from refdns.runfile import builtin_recipes, from_dict, loads, to_dict
from refdns.stats import pm, result_row, seed_statistics


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A parsed sweep: the base run dict (fully resolved), the grid (path -> values), the seeds."""

    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: tuple[int, ...]

    def points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values, as {path: value}, in the grid's order."""
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def point_run(self, point: dict[str, Any]) -> dict[str, Any]:
        """The run dict of one point (one seed's worth: ``seeds`` holds the first seed)."""
        d = copy.deepcopy(self.base)
        for path, value in point.items():
            _set(d, path, value)
        return d

    @property
    def shares_dense(self) -> bool:
        return not any(k.split(".")[0] == "dense" for k in self.grid) and "from" not in self.base.get("dense", {})


def _set(d: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = d
    for i, p in enumerate(parts[:-1]):
        if p == "*":
            if not isinstance(node, dict) or not node:
                raise ConfigError(f"grid.{path}: nothing for * to stand for at {'.'.join(parts[:i]) or 'top'}")
            for sub in node.values():
                _set(sub, ".".join(parts[i + 1:]), value)
            return
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"grid.{path}: {'.'.join(parts[:i + 1])} is a value, not a table")
    node[parts[-1]] = value


def _flatten(grid: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """TOML reads ``a.b = [..]`` as nested tables; a grid key is the path down to a list."""
    out = {}
    for k, v in grid.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, path + ".")
        elif isinstance(v, list) and v:
            out[path] = v
        else:
            raise ConfigError(f"grid.{path}={v!r} must be a non-empty list of values")
    return out


def parse(d: dict[str, Any], *, source: str = "sweep file") -> Sweep:
    """A sweep file's contents -> :class:`Sweep`, every point checked as a run file before anything runs."""
    d = dict(d)
    grid = d.pop("grid", None)
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{source}: a sweep needs a [grid] table of setting = [values]")
    grid = _flatten(grid)
    base_name = d.pop("base", None)
    if base_name is not None:
        path = Path(str(base_name))
        if not path.exists() and str(base_name) in builtin_recipes():
            text = builtin_recipes()[str(base_name)].read_text()
        else:
            try:
                text = path.read_text()
            except OSError as e:
                raise ConfigError(f"{source}: base={base_name!r}: {e.strerror}") from None
        base = _merge(loads(text, source=str(base_name)), d)
    else:
        base = d
    exp, seeds = from_dict(base)
    sweep = Sweep(to_dict(dataclasses.replace(exp, threads=1)), grid, seeds)
    for point in sweep.points():
        try:
            from_dict(sweep.point_run(point))
        except ConfigError as e:
            raise ConfigError(f"{source}: grid point {point}: {e}") from None
    return sweep


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read(path: str | Path) -> Sweep:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read sweep file {path}: {e.strerror}") from None
    return parse(loads(text, source=str(path)), source=str(path))


def point_key(run: dict[str, Any]) -> str:
    """A short name for a run's settings (seed included): the file name of its result."""
    text = json.dumps(run, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---- what a worker runs: plain functions of plain values, so a process pool or Dask can ship them -----------

_DATA: dict[tuple, Data] = {}


def _data(dataset: str, data_dir: str | None) -> Data:
    key = (dataset, data_dir)
    if key not in _DATA:
        _DATA[key] = load_data(dataset, data_dir=data_dir, download=False)
    return _DATA[key]


def train_dense(run: dict[str, Any], path: str, data_dir: str | None) -> str:
    """Train the dense phase of ``run`` (its first seed) and save it to ``path``; returns ``path``."""
    dense_run = {k: v for k, v in run.items() if k not in ("method", "train")}
    exp, _ = from_dict(dense_run)
    reproduce(exp, _data(exp.dataset, data_dir), out=path)
    return path


def run_point(run: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    """Run one point at one seed (``run["seeds"] == [seed]``); returns its :func:`result_row`."""
    exp, _ = from_dict(run)
    return result_row(reproduce(exp, _data(exp.dataset, data_dir)))


class LocalPool:
    """The default engine: a process pool of ``workers`` processes (spawned: no forked BLAS or Numba state)."""

    def __init__(self, workers: int):
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                           mp_context=multiprocessing.get_context("spawn"))

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def as_completed(self, futures):
        return concurrent.futures.as_completed(futures)

    def close(self):
        self.pool.shutdown(cancel_futures=True)


class DaskEngine:
    """A Dask cluster at ``address`` (``dask.distributed``); its workers need refdns and the data."""

    def __init__(self, address: str):
        try:
            from dask.distributed import Client
        except ImportError:
            raise ConfigError("--scheduler needs dask.distributed: pip install 'refdns[sweep]'") from None
        try:
            self.client = Client(address, timeout="20s")
        except OSError as e:
            raise ConfigError(f"--scheduler {address}: cannot reach the Dask scheduler ({e})") from None

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def as_completed(self, futures):
        from dask.distributed import as_completed

        return as_completed(futures)

    def close(self):
        self.client.close()


def run_sweep(sweep: Sweep, out_dir: str | Path, engine, *, data_dir: str | None = None,
              on_done: Callable[[dict[str, Any], int, dict[str, Any], bool], None] | None = None) -> dict[str, Any]:
    """Run every point x seed not yet in ``out_dir/points`` on ``engine``, then write the tables.

    ``on_done(point, seed, row, reused)`` is called for each point and seed as it finishes (or is found
    finished). Returns the table as JSON-ready data (see :func:`table`).
    """
    out_dir = Path(out_dir)
    (out_dir / "points").mkdir(parents=True, exist_ok=True)
    jobs = []  # (point, seed, run, result path)
    for point in sweep.points():
        for seed in sweep.seeds:
            run = sweep.point_run(point) | {"seeds": [seed]}
            jobs.append((point, seed, run, out_dir / "points" / f"{point_key(run)}.json"))
    rows: dict[Path, dict[str, Any]] = {}
    todo = []
    for point, seed, run, path in jobs:
        if path.exists():
            rows[path] = json.loads(path.read_text())["row"]
            if on_done is not None:
                on_done(point, seed, rows[path], True)
        else:
            todo.append((point, seed, run, path))
    if todo and sweep.shares_dense:
        dense_dir = out_dir / "dense"
        dense_dir.mkdir(exist_ok=True)
        need = {}
        for _, seed, run, _ in todo:
            dense_run = {k: v for k, v in run.items() if k not in ("method", "train")}
            need[seed] = (dense_run, dense_dir / f"{point_key(dense_run)}.h5")
        pending = {engine.submit(train_dense, r, str(p), data_dir): p for r, p in need.values() if not p.exists()}
        for f in engine.as_completed(list(pending)):
            f.result()
        todo = [(pt, s, run | {"dense": {"from": str(need[s][1])} | run["dense"]}, path)
                for pt, s, run, path in todo]
    futures = {engine.submit(run_point, run, data_dir): (point, seed, run, path) for point, seed, run, path in todo}
    for f in engine.as_completed(list(futures)):
        point, seed, run, path = futures[f]
        row = f.result()
        write_text(path, json.dumps({"point": point, "seed": seed, "run": run, "row": row}, sort_keys=True,
                                    indent=1) + "\n")
        rows[path] = row
        if on_done is not None:
            on_done(point, seed, row, False)
    result = table(sweep, [(pt, s, rows[path]) for pt, s, _, path in jobs])
    write_text(out_dir / "table.json", json.dumps(result, sort_keys=True, indent=1) + "\n")
    write_text(out_dir / "table.md", format_table(result) + "\n")
    return result


TABLE_FIELDS = ("test_error", "validation_error", "dense_test_error", "kept_fraction", "layers", "seed",
                "select_on")
# grid keys that change what order_info reports: with one of them in the grid the order is per point
ORDER_KEYS = ("train.data_order", "dense.data_order", "method.draws", "method.srand_seed")


def table(sweep: Sweep, rows: list[tuple[dict[str, Any], int, dict[str, Any]]]) -> dict[str, Any]:
    """Per point: its grid values, the rows of its seeds (wall times left out: they differ between engines
    and runs) and the statistics over them."""
    points = []
    for point in sweep.points():
        # rows written before the data order was recorded have none: the point's run file says it
        order = order_info(sweep.point_run(point))
        mine = [{k: r[k] for k in TABLE_FIELDS} | {"order": r.get("order") or order}
                for pt, _, r in rows if pt == point]
        points.append({"values": point, "rows": mine, "statistics": seed_statistics(mine)})
    per_point = any(k in ORDER_KEYS for k in sweep.grid)
    return {"grid": list(sweep.grid), "seeds": list(sweep.seeds), "select_on": sweep.base["select_on"],
            "net": sweep.base["net"], "method": sweep.base.get("method", {}).get("name", "dense"),
            "order": None if per_point else order_info(sweep.base), "points": points}


def format_table(result: dict[str, Any]) -> str:
    """The sweep's markdown table: one row per point, mean ± sd over the seeds."""
    keys = result["grid"]
    layers = list(result["points"][0]["statistics"]["layers"]) if result["points"] else []
    validation = result["select_on"] == "validation"
    head = [*keys, "seeds", *(["validation error"] if validation else []), "test error", "kept total",
            *(f"kept {x}" for x in layers)]
    lines = [f"sweep of {result['net']} ({result['method']}): {len(result['points'])} point(s) x "
             f"{len(result['seeds'])} seed(s) {result['seeds']}; {PROTOCOL_LABEL[result['select_on']]}",
             order_note(result["order"]) if result.get("order") else "data order and draws: per point (grid)",
             "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(keys) + "---:|" * (len(head) - len(keys))]
    for p in result["points"]:
        st = p["statistics"]
        cells = [json.dumps(p["values"][k]) for k in keys] + [str(len(st["seeds"]))]
        if validation:
            cells.append(pm(st["validation_error"]))
        cells += [pm(st["test_error"]), pm(st["kept_fraction"], digits=3)]
        cells += [pm(st["layers"][x], digits=3) for x in layers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
