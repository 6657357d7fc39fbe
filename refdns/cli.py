"""refdns: train, prune and verify small networks on MNIST, the way the pruning papers' own code did.

Commands: train (dense), dns (surgery on a dense checkpoint), reproduce (dense + any pruning method + the
paper's table), golden / verify (step traces for checking another implementation), import / export (.npz
weights), eval / infer (test error, dense or with the sparse kernels). `refdns COMMAND --help` for each.
Errors exit with status 2 and say what was wrong; --debug shows the traceback of an unexpected failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from refdns import __version__, checkpoint
from refdns.atomic import check_inputs, check_outputs, write_text
from refdns.errors import ConfigError, RefdnsError
from refdns.nets import NETS, get_spec
from refdns.optim import learning_rate
from refdns.pipeline import (
    experiment,
    format_table,
    layer_table,
    load_data,
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

    def phase(self, name: str, exp, cfg) -> None:
        from tqdm import tqdm

        self.close()
        print(f"refdns {__version__}: {name} {exp.net} for {cfg.iterations} iterations, seed {exp.seed}",
              file=sys.stderr)
        if name != "dense":
            print(f"  {json.dumps(exp.method.config_dict(), sort_keys=True)}", file=sys.stderr)
        self.cfg = cfg
        self.bar = tqdm(total=cfg.iterations, desc=f"{name} {exp.net}", unit="it", disable=not self.enabled,
                        dynamic_ncols=True, leave=False, file=sys.stderr)

    def step(self, state, loss: float, lr: float) -> None:
        self.last_loss = loss
        self.bar.update(1)
        if state.iteration % 50 == 0:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.5f}", refresh=False)

    def test(self, state, err: float) -> None:
        lr = learning_rate(self.cfg.sgd, state.iteration - 1)
        self.bar.write(f"iter {state.iteration:>6}  loss {self.last_loss:.4f}  lr {lr:.6f}  "
                       f"test error {100 * err:.2f}%", file=sys.stderr)

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
            hint = " (Han's length is --rounds x --round-iterations)" if flag == "iterations" else ""
            raise ConfigError(f"--{flag.replace('_', '-')} does not apply to --method {method}{hint}")
        over[field] = value
    return over


def _experiment(args, method: str | None, *, dense_from: str | None = None):
    """argv -> :class:`refdns.pipeline.Experiment` (every setting checked before any data is loaded)."""
    sgd = {"momentum": args.momentum, "weight_decay": args.weight_decay, "lr_policy": args.lr_policy}
    if args.base_lr is not None:
        sgd["base_lr"] = args.base_lr
    common = dict(sgd=sgd, batch_size=args.batch_size, test_interval=args.test_interval, dataset=args.dataset,
                  seed=args.seed, dense_from=dense_from, data_order=args.data_order)
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
    from refdns.golden import format_report, verify

    check_inputs({"golden": args.golden, "candidate": args.candidate})
    check_outputs({"--json": args.json}, inputs={"golden": args.golden, "candidate": args.candidate},
                  force=args.force)
    report = verify(args.golden, args.candidate)
    print(format_report(report))
    if args.json:
        write_json(args.json, {"ok": report.ok, "golden": report.golden, "candidate": report.candidate,
                               "divergence": None if report.ok else {"step": report.divergence[0],
                                                                     "tensor": report.divergence[1]},
                               "tensors": [dataclasses.asdict(r) for r in report.tensors]})
    return 0 if report.ok else 1


def cmd_import(args) -> int:
    from refdns.interchange import read_npz
    from refdns.run import TrainConfig, new_run

    check_inputs({"npz": args.npz})
    check_outputs({"--out": args.out}, inputs={"npz": args.npz}, force=args.force)
    spec = get_spec(args.net)
    params = read_npz(args.npz, spec)
    masks = {k: w != 0 for k, w in params.items()} if args.mask_from_zeros else None
    if args.batch_size > args.n_train:
        raise ConfigError(f"--batch-size {args.batch_size} is larger than --n-train {args.n_train}")
    state = new_run(spec, args.n_train, TrainConfig(batch_size=args.batch_size), seed=args.seed,
                    params=params, masks=masks)
    config = {"net": spec.name, "seed": args.seed, "imported_from": str(args.npz),
              "mask_from_zeros": bool(args.mask_from_zeros)}
    checkpoint.save(args.out, state, method="import", config=config)
    kept = sum(int(np.count_nonzero(m)) for m in state.masks.values())
    print(f"imported {args.npz} into {args.out}: {spec.name}, {kept:,} of {spec.n_params():,} parameters kept"
          + (" (mask from the zero pattern)" if args.mask_from_zeros else ""))
    return 0


def cmd_export(args) -> int:
    from refdns.interchange import write_npz
    from refdns.run import effective_params

    check_inputs({"checkpoint": args.checkpoint})
    check_outputs({"--out": args.out}, inputs={"checkpoint": args.checkpoint}, force=args.force)
    st = checkpoint.load(args.checkpoint).state
    write_npz(args.out, st.params if args.raw else effective_params(st.params, st.masks))
    what = "raw W (pruned entries keep their values)" if args.raw else "W * mask (pruned entries are 0)"
    print(f"exported {args.checkpoint} ({st.spec.name}) to {args.out}: {what}")
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
    ck = checkpoint.load(args.checkpoint)
    st = ck.state
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
    _output_args(p)


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
    p.add_argument("--net", required=True, choices=nets)
    p.add_argument("--out", metavar="FILE", help=f"checkpoint to write (default {DEFAULT_DIR}/<net>-dense.h5)")
    _run_args(p, iterations=10_000, iterations_help="training iterations")
    _data_args(p)

    p = command("dns", cmd_dns, "Dynamic Network Surgery on a trained dense checkpoint")
    p.add_argument("--net", required=True, choices=nets)
    p.add_argument("--from", dest="from_", required=True, metavar="CKPT", help="dense checkpoint to start from")
    p.add_argument("--out", metavar="FILE", help=f"checkpoint to write (default {DEFAULT_DIR}/<net>-dns.h5)")
    _run_args(p, iterations=None, iterations_help="surgery iterations (unset: the recipe's)")
    _dns_args(p)
    _data_args(p)

    p = command("reproduce", cmd_reproduce, "the whole pipeline: dense training, pruning, the paper's table")
    p.add_argument("--net", required=True, choices=nets)
    p.add_argument("--method", default="dns", choices=sorted(reproducible_methods()),
                   help="pruning method (refdns/prune/<method>.py) with its recipe for the net")
    p.add_argument("--dense-iterations", type=POSITIVE, default=None,
                   help="iterations of the dense phase (unset: 10,000, Caffe's)")
    p.add_argument("--dense-from", metavar="CKPT", help="start from this dense checkpoint instead of training "
                   "one (its iterations still count in the JSON's `iterations`)")
    p.add_argument("--out-dir", default=str(DEFAULT_DIR), help="where the dense and pruned checkpoints go")
    _run_args(p, iterations=None, iterations_help="pruning iterations (unset: the recipe's; magnitude and "
              "random: retraining iterations)")
    _dns_args(p)
    _prune_args(p)
    _data_args(p)

    p = command("golden", cmd_golden, "write a golden step trace (HDF5) for checking another implementation")
    p.add_argument("--net", required=True, choices=nets)
    p.add_argument("--method", default="dns", choices=["dense", "dns"], help="what the traced steps run")
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
    _output_args(p, json_help="also write the comparison as JSON")

    p = command("import", cmd_import, "make a checkpoint from an .npz weight file (<layer>.weight/.bias)")
    p.add_argument("npz", help=".npz file with <layer>.weight and <layer>.bias arrays in Caffe layouts")
    p.add_argument("--net", required=True, choices=nets)
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="checkpoint to write")
    p.add_argument("--mask-from-zeros", action="store_true", help="mask = the non-zero pattern of the weights")
    p.add_argument("--seed", type=NATURAL, default=0, help="seeds the batch order and mask draws of a later run")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="batch size the batch order is drawn for")
    p.add_argument("--n-train", type=POSITIVE, default=60_000, help="training-set size the batch order is drawn for")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")

    p = command("export", cmd_export, "write a checkpoint's weights as an .npz file (<layer>.weight/.bias)")
    p.add_argument("checkpoint", help="HDF5 checkpoint")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help=".npz file to write")
    p.add_argument("--raw", action="store_true", help="export W itself instead of W * mask")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")

    p = command("eval", cmd_eval, "test error and per-layer kept counts of a checkpoint")
    p.add_argument("checkpoint", help="HDF5 checkpoint")
    _output_args(p, json_help="also write test_error (a fraction) and kept counts as JSON")
    _data_args(p)

    p = command("infer", cmd_infer, "test error of a (pruned) checkpoint, dense or with the sparse kernels")
    p.add_argument("checkpoint", help="HDF5 checkpoint written by train, dns or any pruning method")
    p.add_argument("--sparse", action="store_true",
                   help="run the CSR kernels on w * mask (and print the storage report) instead of dense NumPy")
    p.add_argument("--batch-size", type=POSITIVE, default=1000, help="images per forward pass")
    _output_args(p, json_help="also write test_error (a fraction) and the figures as JSON")
    _data_args(p)
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
    except KeyboardInterrupt:
        print("refdns: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a bad input: say so, and keep the traceback for --debug
        if args.debug:
            raise
        print(f"refdns: internal error: {type(e).__name__}: {e}\n(this is a bug in refdns; rerun with --debug "
              "for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
