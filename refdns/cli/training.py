"""train, dns, reproduce, resume: argv -> Experiment -> refdns.pipeline.reproduce -> printed tables."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from refdns import __version__, checkpoint
from refdns.atomic import check_inputs, check_outputs
from refdns.cli.common import (
    DEFAULT_DIR,
    NATURAL,
    POSITIVE,
    Progress,
    _data_args,
    _output_args,
    _per_layer,
    _positive_float,
    write_json,
)
from refdns.errors import ConfigError
from refdns.nets import get_spec
from refdns.pipeline import (
    experiment,
    format_table,
    load_data,
    phase_json,
    reproduce,
    result_json,
)
from refdns.prune.base import reproducible_methods

DNS_FLAGS = ("c_rate", "gamma", "power", "iter_stop", "reading", "update_every", "sensitivity_multiplier",
             "draws", "srand_seed")


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
        for f in ("reading", "update_every", "sensitivity_multiplier", "draws", "srand_seed"):
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
                  seed=args.seed, dense_from=dense_from, threads=args.threads, select_on=args.select_on,
                  data_order=args.data_order)
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


def _run_args(p, *, iterations: int | None, iterations_help: str) -> None:
    g = p.add_argument_group("solver (Caffe's MNIST recipe unless changed)")
    g.add_argument("--iterations", type=NATURAL, default=iterations, help=iterations_help)
    g.add_argument("--batch-size", type=POSITIVE, default=64, help="images per SGD step")
    g.add_argument("--seed", type=NATURAL, default=0, help="seeds init, batch order and mask draws")
    g.add_argument("--data-order", default="shuffled", choices=["shuffled", "caffe"],
                   help="batch order: a new shuffle each epoch, or caffe = file order, wrapping (Caffe)")
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
    g.add_argument("--draws", default=None, choices=["numpy", "caffe"],
                   help="mask-update draws: the run's generator (default), or caffe = the authors' glibc "
                   "rand() stream and float32 arithmetic, to make their code's decisions exactly")
    g.add_argument("--srand-seed", dest="srand_seed", type=NATURAL, default=None,
                   help="--draws caffe: the rand() stream after srand(N) (default 1: never seeded)")


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
    from refdns.pipeline import order_info, pruning_summary, resume

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
                                  phase.test_error) | {"order": order_info(ck.config)}
        print(format_table(summary))
    print(f"{phase.state.spec.name}: test error {100 * phase.test_error:.2f}% after {phase.iterations} iterations; "
          f"checkpoint {phase.checkpoint}")
    if args.json:
        write_json(args.json, phase_json(phase, summary))
    return 0


def add_commands(command, nets) -> None:
    """Register this module's subcommands (``command(name, func, help)`` makes a subparser)."""
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

