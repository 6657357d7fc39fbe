"""refdns: train, prune and verify small networks on MNIST, the way the pruning papers' own code did.

Commands: train (dense), dns (surgery on a dense checkpoint), reproduce (dense + any pruning method + the
paper's table), resume (an interrupted run, bit-exactly), golden / verify (step traces for checking another implementation), import / export (.npz
weights), eval / infer (test error, dense or with the sparse kernels). `refdns COMMAND --help` for each.
Errors exit with status 2 and say what was wrong; --debug shows the traceback of an unexpected failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from refdns import __version__, checkpoint
from refdns.atomic import check_inputs, check_outputs, write_text
from refdns.errors import ConfigError, RefdnsError
from refdns.golden import GOLDEN_METHODS
from refdns.nets import NETS, get_spec
from refdns.optim import learning_rate
from refdns.pipeline import (
    experiment,
    format_table,
    layer_table,
    load_data,
    load_net,
    phase_json,
    reproduce,
    result_json,
)
from refdns.prune.base import reproducible_methods

DEFAULT_DIR = Path("runs")  # where outputs go unless a path is given (git-ignored in the repository)


def _clean(obj: Any) -> Any:
    """JSON cannot hold NaN or Inf: they become null (strict JSON, readable by every parser)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path, obj: dict[str, Any]) -> None:
    write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


class Progress:
    """A tqdm bar per phase with ETA plus a log line per test; quiet when not wanted."""

    def __init__(self, *, enabled: bool):
        self.enabled, self.bar, self.last_loss, self.cfg = enabled, None, float("nan"), None
        self.measured_on = "test"

    def phase(self, name: str, exp, cfg) -> None:
        from tqdm import tqdm

        self.close()
        self.measured_on = exp.select_on
        print(f"refdns {__version__}: {name} {exp.net} for {cfg.iterations} iterations, seed {exp.seed}",
              file=sys.stderr)
        if name != "dense":
            print(f"  {json.dumps(exp.method.config_dict(), sort_keys=True)}", file=sys.stderr)
        self.cfg = cfg
        self.bar = tqdm(total=cfg.iterations, desc=f"{name} {exp.net}", unit="it", disable=not self.enabled,
                        dynamic_ncols=True, leave=False, file=sys.stderr)

    def resume(self, total: int, done: int, config: dict) -> None:
        from tqdm import tqdm

        from refdns.run import TrainConfig

        self.cfg = TrainConfig(**config["train"])
        self.bar = tqdm(total=total, initial=done, desc="resume", unit="it", disable=not self.enabled,
                        dynamic_ncols=True, leave=False, file=sys.stderr)

    def step(self, state, loss: float, lr: float) -> None:
        self.last_loss = loss
        self.bar.update(1)
        if state.iteration % 50 == 0:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.5f}", refresh=False)

    def test(self, state, err: float) -> None:
        lr = learning_rate(self.cfg.sgd, state.iteration - 1)
        self.bar.write(f"iter {state.iteration:>6}  loss {self.last_loss:.4f}  lr {lr:.6f}  "
                       f"{self.measured_on} error {100 * err:.2f}%", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---- argument types: a bad number is refused by argparse itself (status 2, the option named) -------------

def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} must be >= {lo}")
        return value
    parse.__name__ = f"integer >= {lo}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a finite number > 0")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0")
    return value


POSITIVE, NATURAL = _int_at_least(1), _int_at_least(0)


def _per_layer(text: str | None, layers, name: str, cast) -> dict[str, Any]:
    """Parse ``3`` (every layer) or ``conv1=1,ip1=4`` (those layers) into {layer: value}."""
    if text is None:
        return {}
    if "=" not in text:
        try:
            return {layer: cast(text) for layer in layers}
        except ValueError:
            raise ConfigError(f"--{name} {text!r}: expected a number or layer=value pairs") from None
    out = {}
    for part in text.split(","):
        layer, _, value = part.partition("=")
        layer = layer.strip()
        if layer not in layers:
            raise ConfigError(f"--{name}: unknown layer {layer!r}; this net has {list(layers)}")
        try:
            out[layer] = cast(value)
        except ValueError:
            raise ConfigError(f"--{name} {part!r}: {value!r} is not a valid value") from None
    return out


DNS_FLAGS = ("c_rate", "gamma", "power", "iter_stop", "reading", "update_every", "sensitivity_multiplier")
PRUNE_FLAGS = ("quality", "rounds", "round_iterations", "std", "restart_lr", "density", "scope")


def _method_overrides(args, net: str) -> dict[str, Any]:
    """The command line's changes to the method's recipe config (flags of another method are refused)."""
    method = getattr(args, "method", "dns")
    foreign = PRUNE_FLAGS if method == "dns" else DNS_FLAGS
    given = [f"--{f.replace('_', '-')}" for f in foreign if getattr(args, f, None) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} do(es) not apply to --method {method}")
    spec = get_spec(net)
    layers = spec.layer_names
    base = reproducible_methods()[method].recipe(net, args.recipe).config
    if method == "dns":
        over: dict[str, Any] = {}
        cfg_layers = dict(base.layers)
        for f, cast in (("c_rate", float), ("gamma", float), ("power", float), ("iter_stop", int)):
            for layer, value in _per_layer(getattr(args, f), layers, f.replace("_", "-"), cast).items():
                cfg_layers[layer] = dataclasses.replace(cfg_layers[layer], **{f: value})
        if cfg_layers != base.layers:
            over["layers"] = cfg_layers
        for f in ("reading", "update_every", "sensitivity_multiplier"):
            if getattr(args, f) is not None:
                over[f] = getattr(args, f)
        return over
    names, over = {f.name for f in dataclasses.fields(base)}, {}
    if args.quality is not None:
        if "quality" not in names:
            raise ConfigError(f"--quality applies to --method han, not {method}")
        over |= {"quality": (base.quality or {}) | _per_layer(args.quality, layers, "quality", float),
                 "densities": None}
    if args.density is not None:
        if "densities" not in names:
            raise ConfigError(f"--density does not apply to --method {method}")
        if "=" not in args.density and args.scope == "global":
            over |= {"density": _per_layer(args.density, layers, "density", float)[layers[0]], "densities": None}
        else:
            over["densities"] = (base.densities or {}) | _per_layer(args.density, layers, "density", float)
            if "quality" in names:
                over["quality"] = None
    for flag, field in (("rounds", "rounds"), ("round_iterations", "round_iterations"), ("std", "std"),
                        ("restart_lr", "restart_lr"), ("scope", "scope"), ("iterations", "retrain_iterations")):
        value = getattr(args, flag)
        if value is None:
            continue
        if field not in names:
            hint = ""
            if flag == "iterations":
                hint = (" (Han's length is --rounds x --round-iterations)" if method == "han"
                        else " (its length is set by its own schedule)")
            raise ConfigError(f"--{flag.replace('_', '-')} does not apply to --method {method}{hint}")
        over[field] = value
    return over


def _experiment(args, method: str | None, *, dense_from: str | None = None):
    """argv -> :class:`refdns.pipeline.Experiment` (every setting checked before any data is loaded)."""
    sgd = {"momentum": args.momentum, "weight_decay": args.weight_decay, "lr_policy": args.lr_policy}
    if args.base_lr is not None:
        sgd["base_lr"] = args.base_lr
    common = dict(sgd=sgd, batch_size=args.batch_size, test_interval=args.test_interval, dataset=args.dataset,
                  seed=args.seed, dense_from=dense_from, threads=args.threads, select_on=args.select_on)
    if method is None:
        return experiment(args.net, None, iterations=args.iterations, dense_iterations=args.iterations, **common)
    overrides = _method_overrides(args, args.net)
    iterations = args.iterations if method == "dns" else None  # --iterations is retraining for the others
    dense_iterations = getattr(args, "dense_iterations", None) or 10_000
    return experiment(args.net, method, recipe=args.recipe, overrides=overrides, iterations=iterations,
                      dense_iterations=dense_iterations, **common)


def _data(args, exp):
    data = load_data(exp.dataset, data_dir=args.data_dir, download=not args.no_download)
    biggest = max(exp.dense.batch_size, exp.train.batch_size)
    if biggest > len(data.x_train):
        raise ConfigError(f"--batch-size {biggest} is larger than the {len(data.x_train):,} training images")
    return data


def _run(args, exp, *, dense_out=None, out=None):
    data = _data(args, exp)
    prog = Progress(enabled=not args.no_progress and sys.stderr.isatty())
    try:
        return reproduce(exp, data, dense_out=dense_out, out=out, on_phase=prog.phase, on_step=prog.step,
                         on_test=prog.test)
    finally:
        prog.close()


def _print_pruned(result) -> None:
    phase = result.pruned
    print(format_table(result.summary))
    print(f"\n{phase.name} wall time {phase.seconds:.1f} s; checkpoint {phase.checkpoint}")
    churn = phase_json(phase)["churn"]
    if churn:
        print("\nmask churn (connections pruned / spliced back, density at the end of each block):")
        print("| iterations | layer | updates | pruned | spliced | density |")
        print("|---|---|---:|---:|---:|---:|")
        for c in churn:
            print(f"| {c['from']}-{c['to']} | {c['layer']} | {c['updates']} | {c['pruned']:,} | {c['spliced']:,} "
                  f"| {100 * c['density']:.2f}% |")


def cmd_train(args) -> int:
    out = args.out if args.out is not None else DEFAULT_DIR / f"{args.net}-dense.h5"
    if args.iterations < 1:
        raise ConfigError("--iterations 0: training needs at least one iteration")
    check_outputs({"--out": out, "--json": args.json}, force=args.force)
    exp = _experiment(args, None)
    result = _run(args, exp, out=out)
    d = result.dense
    print(f"{args.net}: test error {100 * d.test_error:.2f}% after {d.iterations} iterations "
          f"({d.seconds:.1f} s); checkpoint {out}", file=sys.stderr)
    if args.json:
        write_json(args.json, phase_json(d))
    return 0


def cmd_dns(args) -> int:
    out = args.out if args.out is not None else DEFAULT_DIR / f"{args.net}-dns.h5"
    check_inputs({"--from": args.from_})
    check_outputs({"--out": out, "--json": args.json}, inputs={"--from": args.from_}, force=args.force)
    exp = _experiment(args, "dns", dense_from=args.from_)
    result = _run(args, exp, out=out)
    _print_pruned(result)
    if args.json:
        write_json(args.json, phase_json(result.pruned, result.summary))
    return 0


def cmd_reproduce(args) -> int:
    if args.dense_from is not None and args.dense_iterations is not None:
        raise ConfigError("--dense-from and --dense-iterations contradict each other: the dense phase is either "
                          "read from the checkpoint or trained; give one")
    out_dir = Path(args.out_dir)
    if args.seeds is not None:
        from refdns.runfile import parse_seeds

        exp = _experiment(args, args.method, dense_from=args.dense_from)
        _run_seeds(args, exp, parse_seeds(args.seeds, "--seeds"), out_dir / f"{args.net}-{args.method}",
                   label=f"{args.net}, {args.method}")
        return 0
    dense_out = None if args.dense_from else out_dir / f"{args.net}-dense.h5"
    out = out_dir / f"{args.net}-{args.method}.h5"
    check_inputs({"--dense-from": args.dense_from})
    check_outputs({"--out-dir (dense)": dense_out, "--out-dir": out, "--json": args.json},
                  inputs={"--dense-from": args.dense_from}, force=args.force)
    exp = _experiment(args, args.method, dense_from=args.dense_from)
    result = _run(args, exp, dense_out=dense_out, out=out)
    d = result.dense
    took = "reused" if d.seconds is None else f"{d.seconds:.1f} s"
    print(f"dense: test error {100 * d.test_error:.2f}% ({took}); checkpoint {d.checkpoint}", file=sys.stderr)
    _print_pruned(result)
    print(f"pipeline wall time {result.seconds:.1f} s (dense {took}, {args.method} {result.pruned.seconds:.1f} s)")
    if args.json:
        write_json(args.json, result_json(result))
    return 0


def cmd_resume(args) -> int:
    from refdns.pipeline import pruning_summary, resume

    check_inputs({"checkpoint": args.checkpoint})
    ck = checkpoint.load(args.checkpoint)
    out = args.out if args.out is not None else ck.config.get("resume_target")
    if out is None:
        raise ConfigError(f"{args.checkpoint} was not left by an interrupted run: give --out for the result")
    check_outputs({"--out": out, "--json": args.json}, inputs={"checkpoint": args.checkpoint}, force=args.force)
    data = load_data(ck.config.get("dataset", "mnist"), data_dir=args.data_dir, download=not args.no_download)
    total = ck.config.get("train", {}).get("iterations", 0)
    print(f"refdns {__version__}: resuming {args.checkpoint} ({ck.state.spec.name}, {ck.method}) at iteration "
          f"{ck.state.iteration} of {total}", file=sys.stderr)
    prog = Progress(enabled=not args.no_progress and sys.stderr.isatty())
    prog.resume(total, ck.state.iteration, ck.config)
    try:
        phase = resume(args.checkpoint, data, out=out, on_step=prog.step, on_test=prog.test)
    finally:
        prog.close()
    summary = None
    if phase.name != "dense":
        summary = pruning_summary(phase.state.spec, phase.state.masks, ck.config.get("dense_test_error", math.nan),
                                  phase.test_error)
        print(format_table(summary))
    print(f"{phase.state.spec.name}: test error {100 * phase.test_error:.2f}% after {phase.iterations} iterations; "
          f"checkpoint {phase.checkpoint}")
    if args.json:
        write_json(args.json, phase_json(phase, summary))
    return 0


# ---- run files, seeds ----------------------------------------------------------------------------------

def _run_seeds(args, exp, seeds, out_dir: Path, *, label: str) -> list:
    """Run ``exp`` once per seed (checkpoints in ``out_dir``), print each seed's line and the statistics."""
    from refdns.stats import format_statistics, result_row, seed_statistics

    method = exp.method_name
    outs = {s: (None if exp.method is None or exp.dense_from else out_dir / f"seed{s}-dense.h5",
                out_dir / f"seed{s}-{method}.h5") for s in seeds}
    if exp.dense_from is not None:
        check_inputs({"dense.from": exp.dense_from})
    named = {f"seed {s} ({what})": p for s, pair in outs.items() for what, p in zip(("dense", method), pair)}
    check_outputs(named | {"--json": args.json}, force=args.force)
    data = _data(args, exp)
    prog = Progress(enabled=not args.no_progress and sys.stderr.isatty())
    rows = []
    try:
        for s in seeds:
            dense_out, out = outs[s]
            result = reproduce(dataclasses.replace(exp, seed=s), data, dense_out=dense_out, out=out,
                               on_phase=prog.phase, on_step=prog.step, on_test=prog.test)
            row = result_row(result)
            rows.append(row)
            val = "" if row["validation_error"] is None else f", validation error {100 * row['validation_error']:.2f}%"
            print(f"seed {s}: test error {100 * row['test_error']:.2f}%{val}, kept {100 * row['kept_fraction']:.3f}% "
                  f"({result.seconds:.1f} s); checkpoint {out}")
    finally:
        prog.close()
    stats = seed_statistics(rows)
    print("\n" + format_statistics(stats, label))
    if args.json:
        write_json(args.json, {"runs": rows, "statistics": stats})
    return rows


def _experiment_overrides(args, exp):
    changes = {k: getattr(args, k) for k in ("threads", "select_on") if getattr(args, k, None) is not None}
    return dataclasses.replace(exp, **changes) if changes else exp


def cmd_run(args) -> int:
    from refdns import runfile

    exp, seeds = runfile.read(args.runfile)
    if args.seeds is not None:
        seeds = runfile.parse_seeds(args.seeds, "--seeds")
    exp = _experiment_overrides(args, exp)
    name = Path(args.runfile).stem
    out_dir = Path(args.out_dir) if args.out_dir is not None else DEFAULT_DIR / name
    resolved = out_dir / "run.toml"
    check_outputs({"run.toml": resolved}, force=args.force)
    _run_seeds(args, exp, seeds, out_dir, label=f"{name} ({exp.net}, {exp.method_name})")
    runfile.write(resolved, exp, seeds, header=f"the run file {args.runfile} as run, every setting spelled out")
    print(f"\nrun file as run: {resolved}")
    return 0


def cmd_show(args) -> int:
    from refdns import runfile

    check_inputs({"checkpoint": args.checkpoint})
    ck = checkpoint.load(args.checkpoint)
    exp, seeds = runfile.from_dict(runfile.from_checkpoint_config(ck.config, source=str(args.checkpoint)))
    text = runfile.dumps(runfile.to_dict(exp, seeds), header=(
        f"recreates {args.checkpoint} ({ck.state.spec.name}, {ck.method}, iteration {ck.state.iteration}):\n"
        f"refdns run THIS_FILE, or refdns rerun {args.checkpoint}"))
    if args.out is not None:
        check_outputs({"--out": args.out}, inputs={"checkpoint": args.checkpoint}, force=args.force)
        write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def cmd_rerun(args) -> int:
    from refdns import runfile

    check_inputs({"checkpoint": args.checkpoint})
    ck = checkpoint.load(args.checkpoint)
    exp, _ = runfile.from_dict(runfile.from_checkpoint_config(ck.config, source=str(args.checkpoint)))
    exp = _experiment_overrides(args, exp)
    out_dir = Path(args.out_dir) if args.out_dir is not None else DEFAULT_DIR / f"{Path(args.checkpoint).stem}-rerun"
    _run_seeds(args, exp, (exp.seed,), out_dir, label=f"rerun of {args.checkpoint}")
    again = checkpoint.load(out_dir / f"seed{exp.seed}-{exp.method_name}.h5").state
    old = ck.state
    differ = [k for k in old.params if not (np.array_equal(old.params[k], again.params[k])
                                            and np.array_equal(old.masks[k], again.masks[k]))]
    if not differ and again.iteration == old.iteration:
        print(f"\nthe rerun equals {args.checkpoint} bit for bit (weights and masks)")
    else:
        print(f"\nthe rerun differs from {args.checkpoint} in {len(differ)} of {len(old.params)} tensors "
              f"(iteration {again.iteration} vs {old.iteration}); bits repeat only with the same threads and "
              "library builds (README)")
    return 0


def cmd_sweep(args) -> int:
    from refdns import sweep as sw

    sweep = sw.read(args.sweepfile)
    out_dir = Path(args.out_dir) if args.out_dir is not None else DEFAULT_DIR / Path(args.sweepfile).stem
    own = out_dir / "sweep.json"
    described = json.dumps({"base": sweep.base, "grid": sweep.grid, "seeds": list(sweep.seeds)}, sort_keys=True,
                           indent=1) + "\n"
    if own.exists() and own.read_text() != described and not args.force:
        raise ConfigError(f"{out_dir} holds the results of another sweep ({own}); give another --out-dir, or "
                          "--force to add this sweep's points beside them")
    if args.data_dir is None and args.scheduler is None:
        from refdns.datasets import load_mnist

        load_mnist("train", dataset=sweep.base["dataset"], download=not args.no_download)  # once, here
    engine = sw.DaskEngine(args.scheduler) if args.scheduler else sw.LocalPool(args.workers)
    n = len(sweep.points()) * len(sweep.seeds)
    where = f"Dask scheduler {args.scheduler}" if args.scheduler else f"{args.workers} local process(es)"
    print(f"refdns {__version__}: sweep {args.sweepfile}: {len(sweep.points())} point(s) x {len(sweep.seeds)} "
          f"seed(s) = {n} runs on {where}, one thread each; results in {out_dir}", file=sys.stderr)
    write_text(own, described)
    done = []

    def on_done(point, seed, row, reused):
        done.append(1)
        note = " (finished before)" if reused else ""
        print(f"[{len(done)}/{n}] {point} seed {seed}: test error {100 * row['test_error']:.2f}%, kept "
              f"{100 * row['kept_fraction']:.3f}%{note}", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        result = sw.run_sweep(sweep, out_dir, engine, data_dir=args.data_dir, on_done=on_done)
    except KeyboardInterrupt:
        print(f"refdns: sweep interrupted; {len(done)} finished point(s) are kept in {out_dir / 'points'}\n"
              f"refdns: resume it with the same command: refdns sweep {args.sweepfile} --out-dir {out_dir}",
              file=sys.stderr)
        return 130
    finally:
        engine.close()
    print(sw.format_table(result))
    print(f"\nsweep wall time {time.perf_counter() - t0:.1f} s; tables {out_dir / 'table.md'} and "
          f"{out_dir / 'table.json'}")
    return 0


def cmd_report(args) -> int:
    from refdns.report import report_inputs, write_report, write_sweep_report

    if Path(args.checkpoint).is_dir():
        if not (Path(args.checkpoint) / "table.json").exists():
            raise ConfigError(f"{args.checkpoint} is a folder without a sweep's table.json")
        check_outputs({"index.html": Path(args.out) / "index.html"}, force=args.force)
        for f in write_sweep_report(args.checkpoint, args.out):
            print(f"{f.path}: {f.title}")
        return 0
    check_inputs({"checkpoint": args.checkpoint})
    ck = checkpoint.load(args.checkpoint)
    dense_path = args.dense if args.dense is not None else report_inputs(ck.config)
    dense = None
    if dense_path is not None and Path(dense_path).exists():
        dense = checkpoint.load(dense_path).state
    elif args.dense is not None:
        check_inputs({"--dense": args.dense})
    out_dir = Path(args.out)
    check_outputs({"index.html": out_dir / "index.html"}, inputs={"checkpoint": args.checkpoint}, force=args.force)
    figs = write_report(ck, out_dir, source=str(args.checkpoint), dense=dense)
    for f in figs:
        print(f"{f.path}: {f.title}")
    print(f"{out_dir / 'index.html'}: the page" + ("" if dense is not None else
          " (no dense checkpoint found: no histogram at the start; give --dense CKPT)"))
    return 0


def cmd_sensitivity(args) -> int:
    from refdns import sensitivity as sens

    check_inputs({"checkpoint": args.checkpoint})
    densities = sens.check_densities(_floats(args.densities, "--densities"))
    outs = {"--json": args.json, "--figure": args.figure}
    check_outputs(outs, inputs={"checkpoint": args.checkpoint}, force=args.force)
    ck = checkpoint.load(args.checkpoint)
    select_on = args.select_on or ck.config.get("select_on", "test")
    data = load_data(ck.config.get("dataset", "mnist"), data_dir=args.data_dir, download=not args.no_download)
    result = sens.sensitivity(ck.state, data, densities, select_on=select_on)
    print(sens.format_table(result))
    if args.figure:
        sens.figure(result, args.figure)
        print(f"\nfigure {args.figure}")
    if args.json:
        write_json(args.json, result)
    return 0


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected numbers separated by commas") from None


def cmd_golden(args) -> int:
    from refdns.datasets import load_mnist
    from refdns.golden import write_golden

    check_outputs({"--out": args.out, "--json": args.json}, force=args.force)
    spec = get_spec(args.net)
    x, y = load_mnist("train", dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download)
    if args.batch_size > len(x):
        raise ConfigError(f"--batch-size {args.batch_size} is larger than the {len(x):,} training images")
    summary = write_golden(args.out, spec, args.method, args.steps, x, y, seed=args.seed,
                           batch_size=args.batch_size, max_elements=args.max_elements, dataset=args.dataset)
    size = Path(args.out).stat().st_size
    print(f"golden trace {args.out}: {spec.name}, {args.method}, {args.steps} steps of batch "
          f"{args.batch_size}, seed {args.seed}, {size / 1e6:.3f} MB")
    for t, loss in enumerate(summary["loss"]):
        extra = ""
        if summary["fired"]:
            extra = f"  fired {summary['fired'][t]}  pruned {summary['pruned'][t]}  spliced {summary['spliced'][t]}"
        print(f"  step {t}: loss {loss:.6f}{extra}")
    if args.json:
        write_json(args.json, summary | {"file": str(args.out), "bytes": size, "net": spec.name,
                                         "method": args.method, "steps": args.steps})
    return 0


def cmd_verify(args) -> int:
    from refdns.golden import TOLERANCES, format_report, verify

    check_inputs({"golden": args.golden, "candidate": args.candidate})
    check_outputs({"--json": args.json}, inputs={"golden": args.golden, "candidate": args.candidate},
                  force=args.force)
    tolerances = {k: t.widened(args.rtol, args.atol) for k, t in TOLERANCES.items()}
    report = verify(args.golden, args.candidate, tolerances, only=args.only)
    print(format_report(report))
    if args.json:
        write_json(args.json, report.to_dict())
    return 0 if report.ok else 1


def cmd_import(args) -> int:
    from refdns.interchange import read_weights
    from refdns.run import TrainConfig, new_run

    check_inputs({"weights": args.weights})
    check_outputs({"--out": args.out}, inputs={"weights": args.weights}, force=args.force)
    spec = get_spec(args.net)
    if args.batch_size > args.n_train:
        raise ConfigError(f"--batch-size {args.batch_size} is larger than --n-train {args.n_train}")
    found = read_weights(args.weights, spec)  # the format is read from the file's content, not its suffix
    masks, source = found.masks, f"masks from the file ({found.layout})"
    if masks is None:
        masks = {k: w != 0 for k, w in found.params.items()} if args.mask_from_zeros else None
        source = "mask from the zero pattern" if args.mask_from_zeros else "all-ones masks"
    state = new_run(spec, args.n_train, TrainConfig(batch_size=args.batch_size), seed=args.seed,
                    params=found.params, masks=masks)
    config = {"net": spec.name, "seed": args.seed, "imported_from": str(args.weights),
              "format": found.format, "layout": found.layout, "mask_from_zeros": bool(args.mask_from_zeros)}
    checkpoint.save(args.out, state, method="import", config=config)
    kept = sum(int(np.count_nonzero(m)) for m in state.masks.values())
    print(f"imported {args.weights} ({found.format}, {found.layout}) into {args.out}: {spec.name}, "
          f"{kept:,} of {spec.n_params():,} parameters kept ({source})")
    return 0


def cmd_export(args) -> int:
    from refdns.interchange import write_npz, write_safetensors
    from refdns.run import effective_params

    check_inputs({"checkpoint": args.checkpoint})
    check_outputs({"--out": args.out}, inputs={"checkpoint": args.checkpoint}, force=args.force)
    fmt = args.format or ("safetensors" if str(args.out).endswith(".safetensors") else "npz")
    if args.torch_prune and fmt != "safetensors":
        raise ConfigError("--torch-prune writes torch.nn.utils.prune's layout, a safetensors layout: add "
                          "--format safetensors")
    st = checkpoint.load(args.checkpoint).state
    params = st.params if args.raw or args.torch_prune else effective_params(st.params, st.masks)
    if fmt == "npz":
        write_npz(args.out, params)
    else:
        layout = "torch-prune" if args.torch_prune else "plain"
        meta = {"producer": f"refdns {__version__}", "net": st.spec.name, "layout": layout}
        write_safetensors(args.out, params, st.masks if args.torch_prune else None, metadata=meta)
    what = ("W as <layer>.weight_orig and T as <layer>.weight_mask (torch.nn.utils.prune)" if args.torch_prune
            else "raw W (pruned entries keep their values)" if args.raw
            else "W * mask (pruned entries are 0)")
    print(f"exported {args.checkpoint} ({st.spec.name}) to {args.out} ({fmt}): {what}")
    return 0


def _weights_and_masks(path: str, net: str | None, option: str):
    """(spec, params, masks) of a checkpoint or a weight file; a weight file without masks gets the non-zero
    pattern of its weights (an exported ``W * T`` is its mask)."""
    from refdns.interchange import detect_format, read_weights

    if detect_format(path) == "hdf5":
        st = checkpoint.load(path).state
        return st.spec, st.params, st.masks
    if net is None:
        raise ConfigError(f"{option} {path} is a weight file: name its net with --net")
    spec = get_spec(net)
    found = read_weights(path, spec)
    masks = found.masks if found.masks is not None else {k: w != 0 for k, w in found.params.items()}
    return spec, found.params, masks


def cmd_diff(args) -> int:
    from refdns.interchange import diff_weights

    check_inputs({"A": args.a, "B": args.b})
    check_outputs({"--json": args.json}, inputs={"A": args.a, "B": args.b}, force=args.force)
    spec_a, pa, ma = _weights_and_masks(args.a, args.net, "A")
    spec_b, pb, mb = _weights_and_masks(args.b, args.net, "B")
    if spec_a.name != spec_b.name:
        raise ConfigError(f"A is a {spec_a.name}, B a {spec_b.name}: nothing to compare")
    rows = diff_weights(pa, ma, pb, mb)
    print(f"A {args.a}\nB {args.b}\n")
    print("| parameter | entries | kept A | kept B | kept by both | mask agreement | Jaccard "
          "| max abs W*T diff | rel L2 diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.key} | {r.size:,} | {r.kept_a:,} | {r.kept_b:,} | {r.both:,} | {r.agreement:.6f} | "
              f"{r.jaccard:.6f} | {r.max_abs:.3e} | {r.rel_l2:.3e} |")
    same = all(r.agreement == 1.0 and r.max_abs == 0.0 for r in rows)
    print("\n" + ("identical masks and effective weights" if same else "they differ"))
    if args.json:
        write_json(args.json, {"a": str(args.a), "b": str(args.b), "net": spec_a.name, "identical": same,
                               "params": [dataclasses.asdict(r) for r in rows]})
    return 0


def cmd_eval(args) -> int:
    from refdns.datasets import load_mnist
    from refdns.train import evaluate

    check_inputs({"checkpoint": args.checkpoint})
    check_outputs({"--json": args.json}, inputs={"checkpoint": args.checkpoint}, force=args.force)
    ck = checkpoint.load(args.checkpoint)
    x, y = load_mnist("test", dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download)
    err = evaluate(ck.state, x, y)
    rows = layer_table(ck.state.spec, ck.state.masks)
    print(f"{args.checkpoint}: {ck.state.spec.name} ({ck.method}, iteration {ck.state.iteration}) "
          f"test error {100 * err:.2f}% on {args.dataset}")
    print("| layer | kept weights | kept biases | kept | parameters | kept % |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['layer']} | {r['kept_weights']:,} | {r['kept_biases']:,} | {r['kept']:,} "
              f"| {r['params']:,} | {100 * r['kept_fraction']:.2f} |")
    if args.json:
        total = rows[-1]
        write_json(args.json, {"checkpoint": str(args.checkpoint), "net": ck.state.spec.name,
                               "method": ck.method, "dataset": args.dataset, "test_error": err,
                               "kept": total["kept"], "total": total["params"],
                               "kept_fraction": total["kept_fraction"],
                               "layers": {r["layer"]: {"kept": r["kept"], "total": r["params"],
                                                       "kept_weights": r["kept_weights"],
                                                       "kept_biases": r["kept_biases"]} for r in rows[:-1]}})
    return 0


def cmd_infer(args) -> int:
    import time

    from refdns.datasets import load_mnist
    from refdns.nets.sequential import predict
    from refdns.sparse import SparseNet, format_storage
    from refdns.run import effective_params

    check_inputs({"checkpoint": args.checkpoint})
    check_outputs({"--json": args.json}, inputs={"checkpoint": args.checkpoint}, force=args.force)
    st = ck = load_net(args.checkpoint)  # checkpoint or .rdc (by magic): has .spec/.params/.masks/.method
    x_test, y_test = load_mnist("test", dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download)
    storage = None
    if args.sparse:
        net = SparseNet.from_params(st.spec, st.params, st.masks)
        storage = net.storage()
        net.predict(x_test[:2], batch_size=1)  # compile (or load the cached kernels) outside the timing
        t0 = time.perf_counter()
        pred = net.predict(x_test, batch_size=args.batch_size)
    else:
        params = effective_params(st.params, st.masks)
        t0 = time.perf_counter()
        pred = predict(st.spec, params, x_test, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    test_error = float(np.mean(pred != y_test))
    mode = "sparse" if args.sparse else "dense"
    if storage is not None:
        print(format_storage(storage) + "\n")
    print(f"{st.spec.name} ({ck.method}, {args.checkpoint}): {mode} test error {100 * test_error:.2f}% on "
          f"{len(y_test):,} images in {seconds:.2f} s ({len(y_test) / seconds:,.0f} images/s, "
          f"batch {args.batch_size})")
    if args.json:
        out = {"net": st.spec.name, "checkpoint": str(args.checkpoint), "method": ck.method, "mode": mode,
               "dataset": args.dataset, "test_error": test_error, "n_test": int(len(y_test)),
               "errors": int(np.sum(pred != y_test)), "seconds": seconds, "batch_size": args.batch_size,
               "predictions_sha256": hashlib.sha256(pred.astype("<i8").tobytes()).hexdigest()}
        if storage is not None:
            out["storage"] = storage
        write_json(args.json, out)
    return 0


def _bits(text: str | None) -> dict[str, int]:
    """``--bits``: ``5`` (every layer) or ``conv=8,fc=5,ip1=4`` (groups or layers); checked by the library."""
    if text is None:
        return {}
    if "=" not in text:
        text = f"all={text}"
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise ConfigError(f"--bits {part!r}: expected name=whole number") from None
    return out


def cmd_compress(args) -> int:
    from refdns.compress import format_report
    from refdns.pipeline import compress_checkpoint

    check_inputs({"checkpoint": args.checkpoint})
    check_outputs({"--out": args.out, "--json": args.json}, inputs={"checkpoint": args.checkpoint},
                  force=args.force)
    layers, rows = compress_checkpoint(args.checkpoint, args.out, bits=_bits(args.bits))
    total = rows[-1]
    print(format_report(rows, title=f"{args.checkpoint} -> {args.out}"))
    print(f"{args.out}: {total['rdc_bytes']:,} bytes, {total['ratio_rdc']:.1f}x smaller than the dense "
          f"float32 net ({total['dense_bytes']:,} bytes)")
    if args.json:
        write_json(args.json, {"checkpoint": str(args.checkpoint), "out": str(args.out),
                               "bits": {la.name: la.bits for la in layers}, "layers": rows})
    return 0


def cmd_decompress(args) -> int:
    from refdns.pipeline import decompress_to_checkpoint

    check_inputs({"rdc": args.rdc})
    check_outputs({"--out": args.out}, inputs={"rdc": args.rdc}, force=args.force)
    state = decompress_to_checkpoint(args.rdc, args.out)
    kept = sum(int(np.count_nonzero(m)) for m in state.masks.values())
    print(f"decompressed {args.rdc} into {args.out}: {state.spec.name}, {kept:,} of "
          f"{state.spec.n_params():,} parameters kept, quantised weights exactly as stored")
    return 0


# ---- the parser ----------------------------------------------------------------------------------------

class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default (``%(default)s``) and keeps the description's line breaks."""


def _data_args(p) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="folder holding mnist/ (and fashion-mnist/); unset: $REFDNS_DATA, then "
                   "the user cache, then a checked download")
    g.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"], help="which image set")
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")


def _output_args(p, *, json_help: str = "also write the final figures as JSON") -> None:
    p.add_argument("--json", metavar="FILE", help=json_help)
    p.add_argument("--force", action="store_true", help="overwrite output files that exist already")


def _run_args(p, *, iterations: int | None, iterations_help: str) -> None:
    g = p.add_argument_group("solver (Caffe's MNIST recipe unless changed)")
    g.add_argument("--iterations", type=NATURAL, default=iterations, help=iterations_help)
    g.add_argument("--batch-size", type=POSITIVE, default=64, help="images per SGD step")
    g.add_argument("--seed", type=NATURAL, default=0, help="seeds init, batch order and mask draws")
    g.add_argument("--base-lr", type=_positive_float, default=None,
                   help="base learning rate (unset: 0.01, Caffe's; for pruning, the recipe's)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    g.add_argument("--lr-policy", default="inv", choices=["inv", "fixed", "step"], help="Caffe lr policy")
    g.add_argument("--test-interval", type=NATURAL, default=1000,
                   help="iterations between test evaluations (0: at the end only)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    _experiment_args(g)
    _output_args(p)


def _experiment_args(g) -> None:
    g.add_argument("--threads", type=POSITIVE, default=1, help="BLAS and Numba threads (recorded in the "
                   "checkpoint; the bits of a run depend on it; 1 was fastest on 2 cores)")
    g.add_argument("--select-on", dest="select_on", default="test", choices=["test", "validation"],
                   help="test: the paper's protocol (errors during the run on the test set); validation: hold "
                   "out the last 10,000 training images, measure on them, read the test set once at the end")


def _dns_args(p) -> None:
    g = p.add_argument_group("surgery (per-layer values: one number for every layer, or layer=value,...)")
    g.add_argument("--recipe", default="refdns", choices=["refdns", "authors"],
                   help="starting settings: 'authors' = the DNS code's defaults, 'refdns' = the settings that "
                   "came closest to the paper's table here (README); the flags below override them")
    g.add_argument("--c-rate", dest="c_rate", help="threshold t = mu + c_rate * std of |w| (the recipe's)")
    g.add_argument("--gamma", help="surgery probability sigma(iter) = (1 + gamma * iter)^-power (the recipe's)")
    g.add_argument("--power", help="the exponent of sigma(iter) (the recipe's)")
    g.add_argument("--iter-stop", dest="iter_stop", help="no mask updates from this iteration on (the recipe's)")
    g.add_argument("--reading", default=None, choices=["caffe", "distiller"],
                   help="caffe: the authors' code (default); distiller: Intel Distiller's SplicingPruner")
    g.add_argument("--update-every", type=POSITIVE, default=None,
                   help="distiller reading only: update the masks every k iterations (default 1)")
    g.add_argument("--sensitivity-multiplier", type=float, default=None,
                   help="distiller reading only: c_rate grows by this factor per epoch (default 0)")


def _prune_args(p) -> None:
    g = p.add_argument_group("han / magnitude / random (per-layer values: one number or layer=value,...; "
                             "--iterations = retraining iterations for magnitude and random, 0 = none)")
    g.add_argument("--quality", help="han: final per-layer quality q, prune |w| < q * std(W)")
    g.add_argument("--rounds", type=POSITIVE, help="han: prune/retrain rounds (q grows as q * r / rounds)")
    g.add_argument("--round-iterations", dest="round_iterations", type=NATURAL, help="han: retraining per round")
    g.add_argument("--std", choices=["dense", "kept"], help="han: std of the dense weights (once) or of the kept")
    g.add_argument("--restart-lr", dest="restart_lr", action="store_true", default=None,
                   help="han: every retraining restarts the lr policy (a fresh solver run per round)")
    g.add_argument("--density", help="fraction of weights kept (magnitude, random; han: instead of --quality)")
    g.add_argument("--scope", choices=["layer", "global"], help="magnitude: per-layer or one global threshold")


def _seed_run_args(p) -> None:
    g = p.add_argument_group("run (the file's settings unless changed)")
    g.add_argument("--threads", type=POSITIVE, default=None, help="BLAS and Numba threads (unset: the file's)")
    g.add_argument("--select-on", dest="select_on", default=None, choices=["test", "validation"],
                   help="test: the paper's protocol; validation: last 10,000 training images (unset: the file's)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    _output_args(p, json_help="also write every seed's figures and the statistics as JSON")
    _data_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refdns", description=__doc__, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"refdns {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected failure")
    sub = parser.add_subparsers(dest="command", required=True)
    nets = sorted(NETS)

    def command(name, func, help):
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Help)
        p.set_defaults(func=func)
        return p

    p = command("train", cmd_train, "train a dense LeNet on MNIST with Caffe's recipe")
    p.add_argument("--net", required=True, choices=nets, help="the network (Caffe layer names and layouts)")
    p.add_argument("--out", metavar="FILE", help=f"checkpoint to write (default {DEFAULT_DIR}/<net>-dense.h5)")
    _run_args(p, iterations=10_000, iterations_help="training iterations")
    _data_args(p)

    p = command("dns", cmd_dns, "Dynamic Network Surgery on a trained dense checkpoint")
    p.add_argument("--net", required=True, choices=nets, help="the network (Caffe layer names and layouts)")
    p.add_argument("--from", dest="from_", required=True, metavar="CKPT", help="dense checkpoint to start from")
    p.add_argument("--out", metavar="FILE", help=f"checkpoint to write (default {DEFAULT_DIR}/<net>-dns.h5)")
    _run_args(p, iterations=None, iterations_help="surgery iterations (unset: the recipe's)")
    _dns_args(p)
    _data_args(p)

    p = command("reproduce", cmd_reproduce, "the whole pipeline: dense training, pruning, the paper's table")
    p.add_argument("--net", required=True, choices=nets, help="the network (Caffe layer names and layouts)")
    p.add_argument("--method", default="dns", choices=sorted(reproducible_methods()),
                   help="pruning method (refdns/prune/<method>.py) with its recipe for the net")
    p.add_argument("--dense-iterations", type=POSITIVE, default=None,
                   help="iterations of the dense phase (unset: 10,000, Caffe's)")
    p.add_argument("--dense-from", metavar="CKPT", help="start from this dense checkpoint instead of training "
                   "one (its iterations still count in the JSON's `iterations`)")
    p.add_argument("--out-dir", default=str(DEFAULT_DIR), help="where the dense and pruned checkpoints go")
    p.add_argument("--seeds", help="run once per seed (0-4 or 0,3; checkpoints in <out-dir>/<net>-<method>/) and "
                   "report mean, sd, min and max (instead of --seed)")
    _run_args(p, iterations=None, iterations_help="pruning iterations (unset: the recipe's; magnitude and "
              "random: retraining iterations)")
    _dns_args(p)
    _prune_args(p)
    _data_args(p)

    p = command("resume", cmd_resume, "continue an interrupted run from its checkpoint, bit-exactly")
    p.add_argument("checkpoint", help="the .partial.h5 an interrupted command left (or any checkpoint, with --out)")
    p.add_argument("--out", metavar="FILE", help="checkpoint to write (default: the one the run was to write)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    _output_args(p)
    _data_args(p)

    p = command("run", cmd_run, "run the experiment a run file (TOML) describes, once per seed, with statistics")
    p.add_argument("runfile", help="run file (TOML; see refdns/runfile.py), or a built-in recipe name such as "
                   "lenet-5-dns (refdns/recipes/)")
    p.add_argument("--seeds", help="seeds to run instead of the file's: 0-4 or 0,3")
    p.add_argument("--out-dir", help=f"where checkpoints and run.toml go (default {DEFAULT_DIR}/<file stem>)")
    _seed_run_args(p)

    p = command("show", cmd_show, "print the run file (TOML) that recreates a checkpoint's run")
    p.add_argument("checkpoint", help="HDF5 checkpoint written by train, dns, reproduce or run")
    p.add_argument("-o", "--out", metavar="FILE", help="write the run file here instead of printing it")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")

    p = command("rerun", cmd_rerun, "rerun a checkpoint's experiment from its recorded settings and say "
                "whether the result repeats bit for bit")
    p.add_argument("checkpoint", help="HDF5 checkpoint written by train, dns, reproduce or run")
    p.add_argument("--out-dir", help=f"where the new checkpoints go (default {DEFAULT_DIR}/<stem>-rerun)")
    _seed_run_args(p)

    p = command("sweep", cmd_sweep, "run a grid of settings x seeds in parallel (process pool or Dask) into one "
                "table; finished points are not rerun")
    p.add_argument("sweepfile", help="sweep file: a run file plus [grid] (see refdns/sweep.py)")
    p.add_argument("--out-dir", help=f"results folder (default {DEFAULT_DIR}/<file stem>); rerun to resume")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler (tcp://host:8786) instead of the "
                   "local process pool (pip install 'refdns[sweep]')")
    p.add_argument("--workers", type=POSITIVE, default=os.cpu_count() or 1, help="local processes")
    p.add_argument("--force", action="store_true", help="use an --out-dir that holds another sweep's results")
    _data_args(p)

    p = command("report", cmd_report, "figures of a run (PNGs and one HTML page): density, churn, error, |w| "
                "histograms with DNS's a and b")
    p.add_argument("checkpoint", help="HDF5 checkpoint of a pruning run (or a dense one), or a sweep's folder "
                   "(error against kept fraction with seed error bars)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="folder for the PNGs and index.html")
    p.add_argument("--dense", metavar="CKPT", help="the dense checkpoint the run started from (unset: the one its "
                   "config records)")
    p.add_argument("--force", action="store_true", help="overwrite a report that exists in DIR")

    p = command("sensitivity", cmd_sensitivity, "prune one layer at a time by magnitude to each density (no "
                "retraining) and report the error: the usual first look before choosing per-layer c_rate")
    p.add_argument("checkpoint", help="HDF5 checkpoint (a dense one, usually)")
    p.add_argument("--densities", default="1,0.5,0.3,0.2,0.1,0.05,0.03,0.02,0.01",
                   help="fractions of each layer's weights to keep, comma-separated")
    p.add_argument("--select-on", dest="select_on", choices=["test", "validation"], default=None,
                   help="measure on the test set or the validation split (unset: the protocol the run used)")
    p.add_argument("--figure", metavar="PNG", help="also draw error against kept fraction per layer")
    _output_args(p, json_help="also write the table as JSON")
    _data_args(p)

    p = command("golden", cmd_golden, "write a golden step trace (HDF5) for checking another implementation")
    p.add_argument("--net", required=True, choices=nets, help="the network (Caffe layer names and layouts)")
    p.add_argument("--method", default="dns", choices=list(GOLDEN_METHODS),
                   help="what the traced steps run, with the golden settings of refdns/golden.py")
    p.add_argument("--steps", type=POSITIVE, default=5, help="training steps to trace")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="trace file to write (HDF5)")
    p.add_argument("--seed", type=NATURAL, default=0, help="seeds init, batch order and mask draws")
    p.add_argument("--batch-size", type=POSITIVE, default=8, help="images per traced step")
    p.add_argument("--max-elements", type=POSITIVE, default=1024,
                   help="per-step tensors larger than this are stored as a strided sample")
    _output_args(p, json_help="also write the per-step summary as JSON")
    _data_args(p)

    p = command("verify", cmd_verify, "compare a candidate trace with a golden one, tensor by tensor")
    p.add_argument("golden", help="the golden trace (refdns golden)")
    p.add_argument("candidate", help="the trace of the implementation being checked")
    p.add_argument("--rtol", type=_tolerance, default=None,
                   help="relative tolerance for every floating tensor (unset: per dtype, float32 1e-4, "
                   "float64 1e-9)")
    p.add_argument("--atol", type=_tolerance, default=None,
                   help="absolute tolerance, times max(1, max|golden|), for every floating tensor (unset: "
                   "per dtype, float32 1e-5, float64 1e-12)")
    p.add_argument("--only", action="append", metavar="GROUP",
                   help="compare only this group of tensors (repeatable): masks, grads, grads/ip1, params, "
                   "activations, thresholds, surgery, init, ...")
    _output_args(p, json_help="also write the comparison as JSON (exit status 1 still means 'differ')")

    p = command("import", cmd_import, "make a checkpoint from a weight file: .npz, safetensors (plain or "
                "torch.nn.utils.prune's weight_orig/weight_mask) or .caffemodel, recognised by content")
    p.add_argument("weights", help="weight file with <layer>.weight and <layer>.bias in Caffe layouts")
    p.add_argument("--net", required=True, choices=nets, help="the network (Caffe layer names and layouts)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="checkpoint to write")
    p.add_argument("--mask-from-zeros", action="store_true",
                   help="mask = the non-zero pattern of the weights, for a file without masks (torch.prune "
                   "masks and Caffe DNS mask blobs are always used)")
    p.add_argument("--seed", type=NATURAL, default=0, help="seeds the batch order and mask draws of a later run")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="batch size the batch order is drawn for")
    p.add_argument("--n-train", type=POSITIVE, default=60_000, help="training-set size the batch order is drawn for")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")

    p = command("export", cmd_export,
                "write a checkpoint's weights as .npz or safetensors (<layer>.weight/.bias)")
    p.add_argument("checkpoint", help="HDF5 checkpoint")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="weight file to write")
    p.add_argument("--format", choices=["npz", "safetensors"], default=None,
                   help="file format (unset: safetensors for a .safetensors name, else npz)")
    p.add_argument("--raw", action="store_true", help="export W itself instead of W * mask")
    p.add_argument("--torch-prune", action="store_true", help="safetensors in torch.nn.utils.prune's layout: "
                   "<layer>.weight_orig (raw W) and <layer>.weight_mask (T), likewise for biases")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")

    p = command("diff", cmd_diff, "compare two pruned nets: per-parameter mask agreement, Jaccard index of "
                "the kept sets and the differences of W * mask")
    p.add_argument("a", metavar="A", help="checkpoint or weight file (.npz, safetensors, .caffemodel)")
    p.add_argument("b", metavar="B", help="checkpoint or weight file")
    p.add_argument("--net", choices=nets, help="the net of a weight file (checkpoints name their own)")
    _output_args(p, json_help="also write the per-parameter figures as JSON")

    p = command("eval", cmd_eval, "test error and per-layer kept counts of a checkpoint")
    p.add_argument("checkpoint", help="HDF5 checkpoint")
    _output_args(p, json_help="also write test_error (a fraction) and kept counts as JSON")
    _data_args(p)

    p = command("infer", cmd_infer, "test error of a (pruned) checkpoint, dense or with the sparse kernels")
    p.add_argument("checkpoint", help="HDF5 checkpoint written by train, dns or any pruning method, or an "
                   ".rdc file (told apart by content)")
    p.add_argument("--sparse", action="store_true",
                   help="run the CSR kernels on w * mask (and print the storage report) instead of dense NumPy")
    p.add_argument("--batch-size", type=POSITIVE, default=1000, help="images per forward pass")
    _output_args(p, json_help="also write test_error (a fraction) and the figures as JSON")
    _data_args(p)
    p = command("compress", cmd_compress, "Deep Compression of a pruned checkpoint: weight sharing and "
                "Huffman coding into an .rdc file")
    p.add_argument("checkpoint", help="HDF5 checkpoint (pruned or dense)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help=".rdc file to write")
    p.add_argument("--bits", help="cluster-index bits: one number for every layer, or group/layer=bits,... "
                   "with groups all, conv, fc (unset: conv=8,fc=5, the paper's)")
    _output_args(p, json_help="also write the per-layer byte report as JSON")

    p = command("decompress", cmd_decompress,
                "an .rdc file back into an HDF5 checkpoint (the quantised weights)")
    p.add_argument("rdc", help=".rdc file written by refdns compress")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="checkpoint to write")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from refdns.perf import tune_malloc

    tune_malloc()
    try:
        return args.func(args)
    except RefdnsError as e:
        print(f"refdns: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        where = getattr(e, "checkpoint", None)
        if where is not None:
            print(f"refdns: {e}\nrefdns: continue it with: refdns resume {where}", file=sys.stderr)
        else:
            print("refdns: interrupted (nothing written)", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a bad input: say so, and keep the traceback for --debug
        if args.debug:
            raise
        print(f"refdns: internal error: {type(e).__name__}: {e}\n(this is a bug in refdns; rerun with --debug "
              "for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
