"""eval, infer, report, sensitivity: what a checkpoint does on the test set, and its figures."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from refdns import checkpoint
from refdns.atomic import check_inputs, check_outputs
from refdns.cli.common import POSITIVE, _data_args, _floats, _output_args, write_json
from refdns.errors import ConfigError
from refdns.netfiles import load_net
from refdns.perf import limit_threads
from refdns.pipeline import layer_table, load_data


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
    from refdns.run import effective_params
    from refdns.sparse import SparseNet, format_storage

    check_inputs({"checkpoint": args.checkpoint})
    check_outputs({"--json": args.json}, inputs={"checkpoint": args.checkpoint}, force=args.force)
    st = ck = load_net(args.checkpoint)  # checkpoint or .rdc (by magic): has .spec/.params/.masks/.method
    x_test, y_test = load_mnist("test", dataset=args.dataset, data_dir=args.data_dir, download=not args.no_download)
    storage = None
    with limit_threads(args.threads):
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
               "threads": args.threads,
               "predictions_sha256": hashlib.sha256(pred.astype("<i8").tobytes()).hexdigest()}
        if storage is not None:
            out["storage"] = storage
        write_json(args.json, out)
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


def add_commands(command, nets) -> None:
    """Register this module's subcommands (``command(name, func, help)`` makes a subparser)."""
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
    p.add_argument("--threads", type=POSITIVE, default=1, help="BLAS and Numba threads (1 was within 10%% of the "
                   "fastest setting on 2 cores, quiet or loaded: validate/results/bench_threads.md)")
    _output_args(p, json_help="also write test_error (a fraction) and the figures as JSON")
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

