"""The ``refdns`` command line. The only module that reads argv or prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from refdns import __version__
from refdns.errors import RefdnsError


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    from refdns.atomic import write_text

    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class Progress:
    """A tqdm bar with ETA plus a log line per test; quiet when not wanted."""

    def __init__(self, total: int, initial: int, *, enabled: bool, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="it", disable=not enabled,
                        dynamic_ncols=True, leave=False, file=sys.stderr)
        self.last_loss = float("nan")

    def step(self, state, loss: float, lr: float) -> None:
        self.last_loss = loss
        self.bar.update(1)
        if state.iteration % 50 == 0:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.5f}", refresh=False)

    def test(self, state, err: float, lr: float | None = None) -> None:
        lr_text = f"  lr {lr:.6f}" if lr is not None else ""
        line = f"iter {state.iteration:>6}  loss {self.last_loss:.4f}{lr_text}  test error {100 * err:.2f}%"
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding mnist/ (and fashion-mnist/); default $REFDNS_DATA, "
                   "then the user cache, then download")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")


def _add_run_args(p: argparse.ArgumentParser, *, iterations: int) -> None:
    p.add_argument("--iterations", type=int, default=iterations,
                   help="training iterations" + ("" if iterations else " (default: the paper's count for the net)"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base-lr", type=float, default=None,
                   help="solver base lr (default 0.01, Caffe's; for surgery, the recipe's)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-policy", default="inv", choices=["inv", "fixed", "step"])
    p.add_argument("--test-interval", type=int, default=1000, help="iterations between test evaluations (0: end only)")
    p.add_argument("--json", metavar="FILE", help="also write the final figures as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")


def _load_data(args):
    from refdns.datasets import load_mnist

    kw = dict(dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download)
    x_train, y_train = load_mnist("train", **kw)
    x_test, y_test = load_mnist("test", **kw)
    return x_train, y_train, x_test, y_test


def _train_config(args, *, iterations: int | None = None, base_lr: float | None = None, dense: bool = False):
    """The solver settings of a command: flags first, then the recipe's, then Caffe's (lr 0.01).

    ``dense=True`` is reproduce's dense phase, which always follows Caffe's recipe (the lr flag is the
    surgery's).
    """
    from refdns.optim import SGDConfig
    from refdns.train import TrainConfig

    if dense:
        lr = 0.01
    else:
        lr = args.base_lr if args.base_lr is not None else (base_lr if base_lr is not None else 0.01)
    return TrainConfig(
        iterations=args.iterations if iterations is None else iterations,
        batch_size=args.batch_size,
        test_interval=args.test_interval,
        sgd=SGDConfig(base_lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
                      lr_policy=args.lr_policy),
    )


def _progress_enabled(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def cmd_train(args) -> int:
    from refdns import checkpoint
    from refdns.config import to_dict
    from refdns.nets import get_spec
    from refdns.optim import learning_rate
    from refdns.train import new_run, train

    spec = get_spec(args.net)
    cfg = _train_config(args)
    x_train, y_train, x_test, y_test = _load_data(args)
    state = new_run(spec, len(x_train), cfg, seed=args.seed)
    print(f"refdns {__version__}: training {spec.name} ({spec.n_params():,} parameters) on {args.dataset} "
          f"for {cfg.iterations} iterations, seed {args.seed}", file=sys.stderr)
    prog = Progress(cfg.iterations, 0, enabled=_progress_enabled(args), desc=f"train {spec.name}")
    t0 = time.perf_counter()
    try:
        train(state, x_train, y_train, cfg, x_test=x_test, y_test=y_test, on_step=prog.step,
              on_test=lambda s, e: prog.test(s, e, learning_rate(cfg.sgd, s.iteration - 1)))
    finally:
        prog.close()
    seconds = time.perf_counter() - t0
    test_error = state.history.test_error[-1][1] if state.history.test_error else float("nan")
    config = {"net": spec.name, "dataset": args.dataset, "seed": args.seed, "train": to_dict(cfg)}
    out = Path(args.out or f"{spec.name}-dense.h5")
    checkpoint.save(out, state, method="dense", config=config)
    print(f"{spec.name}: test error {100 * test_error:.2f}% after {state.iteration} iterations "
          f"({seconds:.1f} s); checkpoint {out}", file=sys.stderr)
    if args.json:
        write_json(args.json, {"net": spec.name, "dataset": args.dataset, "seed": args.seed,
                               "test_error": test_error, "iterations": state.iteration, "seconds": seconds,
                               "checkpoint": str(out), "test_error_history": state.history.test_error})
    return 0


def _per_layer(text: str | None, layers, name: str, cast) -> dict[str, Any]:
    """Parse ``3`` (every layer) or ``conv1=1,ip1=4`` (those layers) into {layer: value}."""
    if text is None:
        return {}
    from refdns.errors import ConfigError

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


def _dns_config(args, spec):
    import dataclasses

    from refdns.pipeline import surgery_recipe

    cfg = surgery_recipe(spec.name, recipe=args.recipe).dns
    layers = dict(cfg.layers)
    for field, cast in (("c_rate", float), ("gamma", float), ("power", float), ("iter_stop", int)):
        for layer, value in _per_layer(getattr(args, field), spec.layer_names, field.replace("_", "-"), cast).items():
            layers[layer] = dataclasses.replace(layers[layer], **{field: value})
    return dataclasses.replace(cfg, layers=layers, reading=args.reading, update_every=args.update_every,
                               sensitivity_multiplier=args.sensitivity_multiplier)


def _surgery_train_config(args, spec):
    """Solver settings of a surgery run: the recipe's lr and length unless --base-lr / --iterations say."""
    from refdns.pipeline import surgery_recipe

    rec = surgery_recipe(spec.name, recipe=args.recipe)
    iterations = rec.iterations if args.iterations is None else args.iterations
    return _train_config(args, iterations=iterations, base_lr=rec.base_lr)


def _print_surgery_report(summary, churn, seconds, out) -> None:
    from refdns.pipeline import format_table

    print(format_table(summary))
    print(f"\nsurgery wall time {seconds:.1f} s; checkpoint {out}")
    if churn:
        print("\nmask churn (connections pruned / spliced back, density at the end of each block):")
        print("| iterations | layer | updates | pruned | spliced | density |")
        print("|---|---|---:|---:|---:|---:|")
        for c in churn:
            print(f"| {c['from']}-{c['to']} | {c['layer']} | {c['updates']} | {c['pruned']:,} | {c['spliced']:,} "
                  f"| {100 * c['density']:.2f}% |")


def _surgery(args, spec, data, dense_params, dense_masks, dense_error, out_path):
    """Run DNS from dense parameters; write checkpoint; return the JSON-ready result."""
    from refdns import checkpoint
    from refdns.pipeline import churn_by_interval, pruning_summary, run_config, run_training
    from refdns.prune.dns import DNS

    cfg = _surgery_train_config(args, spec)
    method = DNS(_dns_config(args, spec))
    print(f"refdns {__version__}: surgery on {spec.name} for {cfg.iterations} iterations, seed {args.seed}",
          file=sys.stderr)
    for name, lc in method.config.layers.items():
        print(f"  {name}: c_rate {lc.c_rate} gamma {lc.gamma} power {lc.power} iter_stop {lc.iter_stop}",
              file=sys.stderr)
    prog = Progress(cfg.iterations, 0, enabled=_progress_enabled(args), desc=f"dns {spec.name}")
    try:
        state, seconds = run_training(spec, data, cfg, seed=args.seed, method=method, params=dense_params,
                                      masks=dense_masks, on_step=prog.step, on_test=prog.test)
    finally:
        prog.close()
    summary = pruning_summary(spec, state, dense_error, data.x_test, data.y_test)
    config = run_config(spec, args.dataset, args.seed, cfg, method)
    checkpoint.save(out_path, state, method="dns", config=config)
    churn = churn_by_interval(state, interval=max(cfg.iterations // 10, 1))
    _print_surgery_report(summary, churn, seconds, out_path)
    thresholds = {k: float(v) for k, v in state.method_state.items()}
    return summary | {"seconds": seconds, "iterations": cfg.iterations, "checkpoint": str(out_path),
                      "config": config, "thresholds": thresholds, "churn": churn,
                      "test_error_history": state.history.test_error}


def _data(args):
    from refdns.pipeline import Data

    return Data(*_load_data(args))


def cmd_dns(args) -> int:
    from refdns import checkpoint
    from refdns.nets import get_spec
    from refdns.train import evaluate

    spec = get_spec(args.net)
    ck = checkpoint.load(args.from_)
    if ck.state.spec.name != spec.name:
        from refdns.errors import ConfigError

        raise ConfigError(f"--from {args.from_} holds a {ck.state.spec.name}, not a {spec.name}")
    _surgery_train_config(args, spec)  # refuse nonsense settings before loading data
    _dns_config(args, spec)
    data = _data(args)
    dense_error = evaluate(ck.state, data.x_test, data.y_test)
    out = Path(args.out or f"{spec.name}-dns.h5")
    result = _surgery(args, spec, data, ck.state.params, ck.state.masks, dense_error, out)
    if args.json:
        write_json(args.json, result)
    return 0


def _other_method(args, spec):
    """A non-DNS method from its registered recipe, with the command line's overrides applied."""
    import dataclasses

    from refdns.errors import ConfigError
    from refdns.prune.base import methods

    method = methods()[args.method].recipe(spec.name)
    cfg, over = method.config, {}
    names = set(dataclasses.asdict(cfg))
    layers = spec.layer_names
    if args.quality is not None:
        if "quality" not in names:
            raise ConfigError(f"--quality applies to --method han, not {args.method}")
        over |= {"quality": (cfg.quality or {}) | _per_layer(args.quality, layers, "quality", float),
                 "densities": None}
    if args.density is not None:
        if "densities" not in names:
            raise ConfigError(f"--density does not apply to --method {args.method}")
        if "=" not in args.density and args.scope == "global":
            density = _per_layer(args.density, layers, "density", float)[layers[0]]
            over |= {"density": density, "densities": None}
        else:
            over |= {"densities": (cfg.densities or {}) | _per_layer(args.density, layers, "density", float)}
            if "quality" in names:
                over["quality"] = None
    for flag, field in (("rounds", "rounds"), ("round_iterations", "round_iterations"), ("std", "std"),
                        ("restart_lr", "restart_lr"),
                        ("scope", "scope"), ("iterations", "retrain_iterations")):
        value = getattr(args, flag)
        if value is None:
            continue
        if field not in names:
            hint = " (Han's length is --rounds x --round-iterations)" if flag == "iterations" else ""
            raise ConfigError(f"--{flag.replace('_', '-')} does not apply to --method {args.method}{hint}")
        over[field] = value
    return type(method)(dataclasses.replace(cfg, **over))


def _prune(args, spec, data, dense_params, dense_error, out_path, method):
    """Run a non-DNS method from dense parameters; write checkpoint; return the JSON-ready result."""
    from refdns import checkpoint
    from refdns.pipeline import format_table, pruning_summary, run_config, run_training

    cfg = _train_config(args, iterations=method.schedule_iterations())
    print(f"refdns {__version__}: {method.name} on {spec.name} for {cfg.iterations} iterations, "
          f"seed {args.seed}", file=sys.stderr)
    print(f"  {json.dumps(method.config_dict(), sort_keys=True)}", file=sys.stderr)
    prog = Progress(cfg.iterations, 0, enabled=_progress_enabled(args), desc=f"{method.name} {spec.name}")
    try:
        state, seconds = run_training(spec, data, cfg, seed=args.seed, method=method, params=dense_params,
                                      on_step=prog.step, on_test=prog.test)
    finally:
        prog.close()
    summary = pruning_summary(spec, state, dense_error, data.x_test, data.y_test)
    config = run_config(spec, args.dataset, args.seed, cfg, method)
    checkpoint.save(out_path, state, method=method.name, config=config)
    print(format_table(summary))
    print(f"\n{method.name} wall time {seconds:.1f} s; checkpoint {out_path}")
    return summary | {"seconds": seconds, "iterations": cfg.iterations, "checkpoint": str(out_path),
                      "config": config,
                      "method_state": {k: v.tolist() for k, v in state.method_state.items()},
                      "mask_updates": state.history.mask_updates,
                      "test_error_history": state.history.test_error}


DNS_FLAGS = ("c_rate", "gamma", "power", "iter_stop")
PRUNE_FLAGS = ("quality", "rounds", "round_iterations", "std", "restart_lr", "density", "scope")


def _refuse_foreign_flags(args) -> None:
    """A flag of another method is an error, not silently ignored."""
    from refdns.errors import ConfigError

    foreign = DNS_FLAGS if args.method != "dns" else PRUNE_FLAGS
    given = [f"--{f.replace('_', '-')}" for f in foreign if getattr(args, f, None) is not None]
    dns_only = args.reading != "caffe" or args.update_every != 1 or args.sensitivity_multiplier
    if args.method != "dns" and dns_only:
        given.append("--reading/--update-every/--sensitivity-multiplier")
    if given:
        raise ConfigError(f"{', '.join(given)} do(es) not apply to --method {args.method}")


def cmd_reproduce(args) -> int:
    from refdns import checkpoint
    from refdns.nets import get_spec
    from refdns.pipeline import run_config, run_training
    from refdns.train import evaluate

    spec = get_spec(args.net)
    _refuse_foreign_flags(args)
    if args.method == "dns":
        _surgery_train_config(args, spec)  # refuse nonsense settings before loading data
        _dns_config(args, spec)
    else:
        method = _other_method(args, spec)
        _train_config(args, iterations=method.schedule_iterations())
    dense_cfg = _train_config(args, iterations=args.dense_iterations, dense=True)
    dense_ck = checkpoint.load(args.dense_from) if args.dense_from else None
    if dense_ck is not None and dense_ck.state.spec.name != spec.name:
        from refdns.errors import ConfigError

        raise ConfigError(f"--dense-from {args.dense_from} holds a {dense_ck.state.spec.name}, "
                          f"not a {spec.name}")
    data = _data(args)
    out_dir = Path(args.out_dir)
    t0 = time.perf_counter()
    if dense_ck is None:
        print(f"refdns {__version__}: dense {spec.name} for {dense_cfg.iterations} iterations",
              file=sys.stderr)
        prog = Progress(dense_cfg.iterations, 0, enabled=_progress_enabled(args), desc=f"dense {spec.name}")
        try:
            dense, dense_seconds = run_training(spec, data, dense_cfg, seed=args.seed, on_step=prog.step,
                                                on_test=prog.test)
        finally:
            prog.close()
        dense_error = dense.history.test_error[-1][1]
        dense_path = out_dir / f"{spec.name}-dense.h5"
        checkpoint.save(dense_path, dense, method="dense",
                        config=run_config(spec, args.dataset, args.seed, dense_cfg, None))
    else:  # the dense phase was run before; its iterations still count, its seconds are not re-measured
        dense, dense_seconds, dense_path = dense_ck.state, None, Path(args.dense_from)
        dense_error = evaluate(dense, data.x_test, data.y_test)
    took = "reused" if dense_seconds is None else f"{dense_seconds:.1f} s"
    print(f"dense: test error {100 * dense_error:.2f}% ({took}); checkpoint {dense_path}", file=sys.stderr)
    out = out_dir / f"{spec.name}-{args.method}.h5"
    if args.method == "dns":
        result = _surgery(args, spec, data, dense.params, None, dense_error, out)
    else:
        result = _prune(args, spec, data, dense.params, dense_error, out, method)
    total = time.perf_counter() - t0
    print(f"pipeline wall time {total:.1f} s (dense {took}, {args.method} {result['seconds']:.1f} s)")
    if args.json:
        # iterations: every training iteration the result cost, dense included; the parts separately.
        write_json(args.json, result | {"dense_seconds": dense_seconds, "surgery_seconds": result["seconds"],
                                        "pruning_seconds": result["seconds"], "method": args.method,
                                        "seconds": total,
                                        "pruning_iterations": result["iterations"],
                                        "iterations": dense.iteration + result["iterations"],
                                        "dense_iterations": dense.iteration,
                                        "dense_checkpoint": str(dense_path)})
    return 0


def cmd_infer(args) -> int:
    import hashlib

    import numpy as np

    from refdns import checkpoint
    from refdns.datasets import load_mnist
    from refdns.nets.sequential import predict
    from refdns.sparse import SparseNet, format_storage
    from refdns.train import effective_params

    ck = checkpoint.load(args.checkpoint)
    st = ck.state
    x_test, y_test = load_mnist("test", dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download)
    if args.batch_size < 1:
        from refdns.errors import ConfigError

        raise ConfigError(f"--batch-size {args.batch_size} must be >= 1")
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
        print(format_storage(storage))
        print()
    print(f"{st.spec.name} ({ck.method}, {args.checkpoint}): {mode} test error {100 * test_error:.2f}% on "
          f"{len(y_test):,} images in {seconds:.2f} s ({len(y_test) / seconds:,.0f} images/s, batch {args.batch_size})")
    if args.json:
        out = {"net": st.spec.name, "checkpoint": str(args.checkpoint), "method": ck.method, "mode": mode,
               "dataset": args.dataset, "test_error": test_error, "n_test": int(len(y_test)),
               "errors": int(np.sum(pred != y_test)), "seconds": seconds, "batch_size": args.batch_size,
               "predictions_sha256": hashlib.sha256(pred.astype("<i8").tobytes()).hexdigest()}
        if storage is not None:
            out["storage"] = storage
        write_json(args.json, out)
    return 0


def _add_dns_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("surgery (per-layer values: one number for every layer, or layer=value,...)")
    g.add_argument("--recipe", default="refdns", choices=["refdns", "authors"],
                   help="starting per-layer settings: 'authors' = the DNS code's defaults, 'refdns' = the "
                   "settings that reproduced the paper's table here (see README); flags below override")
    g.add_argument("--c-rate", dest="c_rate", help="threshold t = mu + c_rate * std")
    g.add_argument("--gamma", help="sigma(iter) = (1 + gamma * iter)^-power")
    g.add_argument("--power")
    g.add_argument("--iter-stop", dest="iter_stop", help="no mask updates from this iteration on")
    g.add_argument("--reading", default="caffe", choices=["caffe", "distiller"])
    g.add_argument("--update-every", type=int, default=1, help="distiller reading: update every k iterations")
    g.add_argument("--sensitivity-multiplier", type=float, default=0.0,
                   help="distiller reading: c_rate grows by this factor per epoch")


def cmd_golden(args) -> int:
    from refdns.datasets import load_mnist
    from refdns.golden import write_golden
    from refdns.nets import get_spec

    spec = get_spec(args.net)
    x, y = load_mnist("train", dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download)
    summary = write_golden(args.out, spec, args.method, args.steps, x, y, seed=args.seed,
                           batch_size=args.batch_size, max_elements=args.max_elements, dataset=args.dataset)
    size = Path(args.out).stat().st_size
    print(f"golden trace {args.out}: {spec.name}, {args.method}, {args.steps} steps of batch "
          f"{args.batch_size}, seed {args.seed}, {size / 1e6:.3f} MB")
    for t, loss in enumerate(summary["loss"]):
        extra = ""
        if summary["fired"]:
            extra = (f"  fired {summary['fired'][t]}  pruned {summary['pruned'][t]}  "
                     f"spliced {summary['spliced'][t]}")
        print(f"  step {t}: loss {loss:.6f}{extra}")
    if args.json:
        write_json(args.json, summary | {"file": str(args.out), "bytes": size, "net": spec.name,
                                         "method": args.method, "steps": args.steps})
    return 0


def cmd_verify(args) -> int:
    from refdns.golden import format_report, verify

    report = verify(args.golden, args.candidate)
    print(format_report(report))
    if args.json:
        write_json(args.json, {"ok": report.ok, "golden": report.golden, "candidate": report.candidate,
                               "divergence": None if report.ok else {"step": report.divergence[0],
                                                                     "tensor": report.divergence[1]},
                               "tensors": [{"name": r.name, "dtype": r.dtype, "steps": r.steps,
                                            "max_abs": r.max_abs, "max_rel": r.max_rel,
                                            "first_bad_step": r.first_bad_step,
                                            "first_bad_index": r.first_bad_index, "ok": r.ok, "note": r.note}
                                           for r in report.tensors]})
    return 0 if report.ok else 1


def cmd_import(args) -> int:
    import numpy as np

    from refdns import checkpoint
    from refdns.interchange import read_npz
    from refdns.nets import get_spec
    from refdns.train import TrainConfig, new_run

    spec = get_spec(args.net)
    params = read_npz(args.npz, spec)
    masks = {k: w != 0 for k, w in params.items()} if args.mask_from_zeros else None
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
    from refdns import checkpoint
    from refdns.interchange import write_npz
    from refdns.train import effective_params

    st = checkpoint.load(args.checkpoint).state
    params = st.params if args.raw else effective_params(st.params, st.masks)
    write_npz(args.out, params)
    what = "raw W (pruned entries keep their values)" if args.raw else "W * mask (pruned entries are 0)"
    print(f"exported {args.checkpoint} ({st.spec.name}) to {args.out}: {what}")
    return 0


def cmd_eval(args) -> int:
    from refdns import checkpoint
    from refdns.datasets import load_mnist
    from refdns.pipeline import layer_table
    from refdns.train import evaluate

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
                               "kept": total["kept"],
                               "total": total["params"], "kept_fraction": total["kept_fraction"],
                               "layers": {r["layer"]: {"kept": r["kept"], "total": r["params"],
                                                       "kept_weights": r["kept_weights"],
                                                       "kept_biases": r["kept_biases"]} for r in rows[:-1]}})
    return 0


def _add_prune_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("han / magnitude / random (per-layer values: one number or layer=value,...; "
                             "--iterations = retraining iterations for magnitude and random, 0 = none)")
    g.add_argument("--quality", help="han: final per-layer quality q, prune |w| < q * std(W)")
    g.add_argument("--rounds", type=int, help="han: prune/retrain rounds (q grows as q * r / rounds)")
    g.add_argument("--round-iterations", dest="round_iterations", type=int, help="han: retraining per round")
    g.add_argument("--std", choices=["dense", "kept"],
                   help="han: std of the dense weights (once) or of the kept")
    g.add_argument("--restart-lr", dest="restart_lr", action="store_true", default=None,
                   help="han: every retraining restarts the lr policy (a fresh solver run per round)")
    g.add_argument("--density",
                   help="fraction of weights kept (magnitude, random; han: instead of --quality)")
    g.add_argument("--scope", choices=["layer", "global"],
                   help="magnitude: per-layer or one global threshold")


def build_parser() -> argparse.ArgumentParser:
    from refdns.nets import NETS
    from refdns.prune.base import reproducible_methods

    parser = argparse.ArgumentParser(prog="refdns", description=__doc__)
    parser.add_argument("--version", action="version", version=f"refdns {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a dense LeNet on MNIST with Caffe's recipe")
    p.add_argument("--net", required=True, choices=sorted(NETS))
    p.add_argument("--out", metavar="FILE", help="checkpoint to write (HDF5); default <net>-dense.h5")
    _add_run_args(p, iterations=10_000)
    _add_data_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("dns", help="Dynamic Network Surgery on a trained dense checkpoint")
    p.add_argument("--net", required=True, choices=sorted(NETS))
    p.add_argument("--from", dest="from_", required=True, metavar="CKPT", help="dense checkpoint to start from")
    p.add_argument("--out", metavar="FILE", help="checkpoint to write; default <net>-dns.h5")
    _add_run_args(p, iterations=None)
    _add_dns_args(p)
    _add_data_args(p)
    p.set_defaults(func=cmd_dns)

    p = sub.add_parser("reproduce", help="the whole pipeline: dense training, then surgery, then the paper's table")
    p.add_argument("--net", required=True, choices=sorted(NETS))
    p.add_argument("--method", default="dns", choices=sorted(reproducible_methods()),
                   help="pruning method (refdns/prune/<method>.py) with its default recipe for the net")
    p.add_argument("--dense-iterations", type=int, default=10_000)
    p.add_argument("--dense-from", metavar="CKPT",
                   help="start from this dense checkpoint instead of training one "
                   "(its iterations still count in the JSON's `iterations`)")
    p.add_argument("--out-dir", default=".", help="where the dense and pruned checkpoints go")
    _add_run_args(p, iterations=None)
    _add_dns_args(p)
    _add_prune_args(p)
    _add_data_args(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("golden", help="write a golden step trace (HDF5) for checking another implementation")
    p.add_argument("--net", required=True, choices=sorted(NETS))
    p.add_argument("--method", default="dns", choices=["dense", "dns"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="trace file to write (HDF5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-elements", type=int, default=1024,
                   help="per-step tensors larger than this are stored as a strided sample")
    p.add_argument("--json", metavar="FILE", help="also write the per-step summary as JSON")
    _add_data_args(p)
    p.set_defaults(func=cmd_golden)

    p = sub.add_parser("verify", help="compare a candidate trace with a golden one, tensor by tensor")
    p.add_argument("golden")
    p.add_argument("candidate")
    p.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("import", help="make a checkpoint from an .npz weight file (<layer>.weight/.bias)")
    p.add_argument("npz")
    p.add_argument("--net", required=True, choices=sorted(NETS))
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="checkpoint to write")
    p.add_argument("--mask-from-zeros", action="store_true",
                   help="mask = the non-zero pattern of the weights")
    p.add_argument("--seed", type=int, default=0, help="seeds the batch order and mask draws of a later run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=60_000,
                   help="training-set size the batch order is drawn for")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="write a checkpoint's weights as an .npz file (<layer>.weight/.bias)")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--out", required=True, metavar="FILE")
    p.add_argument("--raw", action="store_true", help="export W itself instead of W * mask")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="test error and per-layer kept counts of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--json", metavar="FILE", help="also write test_error (fraction) and kept counts as JSON")
    _add_data_args(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("infer", help="test error of a (pruned) checkpoint, dense or with the sparse kernels")
    p.add_argument("checkpoint", help="HDF5 checkpoint written by train, dns or any pruning method")
    p.add_argument("--sparse", action="store_true",
                   help="run the CSR kernels on w * mask (and print the storage report) instead of dense NumPy")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--json", metavar="FILE", help="also write test_error (a fraction) and the figures as JSON")
    _add_data_args(p)
    p.set_defaults(func=cmd_infer)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
