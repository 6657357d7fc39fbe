"""golden, verify, diff: step traces for checking another implementation, and net comparisons."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from refdns import checkpoint
from refdns.atomic import check_inputs, check_outputs
from refdns.cli.common import NATURAL, POSITIVE, _output_args, _tolerance, write_json
from refdns.errors import ConfigError
from refdns.golden import GOLDEN_METHODS, RUN_STEPS
from refdns.nets import get_spec


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


def cmd_golden(args) -> int:
    from refdns.datasets import load_mnist
    from refdns.golden import write_golden, write_run_golden

    if args.run is not None:
        return _golden_of_run(args, write_run_golden)
    if args.net is None:
        raise ConfigError("name the net with --net (or trace a run file's experiment with --run FILE)")
    # unset options are absent (argparse.SUPPRESS), so that --run can tell them from given ones
    method = getattr(args, "method", "dns")
    steps = getattr(args, "steps", 5)
    seed = getattr(args, "seed", 0)
    batch_size = getattr(args, "batch_size", 8)
    dataset = getattr(args, "dataset", "mnist")
    check_outputs({"--out": args.out, "--json": args.json}, force=args.force)
    spec = get_spec(args.net)
    x, y = load_mnist("train", dataset=dataset, data_dir=args.data_dir, download=not args.no_download)
    if batch_size > len(x):
        raise ConfigError(f"--batch-size {batch_size} is larger than the {len(x):,} training images")
    summary = write_golden(args.out, spec, method, steps, x, y, seed=seed, batch_size=batch_size,
                           max_elements=args.max_elements, dataset=dataset)
    return _golden_report(args, spec.name, method, steps, batch_size, seed, summary)


def _golden_of_run(args, write_run_golden) -> int:
    """``refdns golden --run FILE``: every setting from the run file, checked before any data is read."""
    import dataclasses

    from refdns import runfile
    from refdns.pipeline import load_data

    given = [o for o, dest in (("--net", "net"), ("--method", "method"), ("--batch-size", "batch_size"),
                               ("--dataset", "dataset")) if getattr(args, dest, None) is not None]
    if given:
        raise ConfigError(f"--run takes the net, method, batch size and dataset from the run file; drop "
                          f"{', '.join(given)} (or edit the run file)")
    if Path(args.run).exists():
        check_inputs({"--run": args.run})
    exp, _ = runfile.read(args.run)
    if hasattr(args, "seed"):
        exp = dataclasses.replace(exp, seed=args.seed)
    if exp.dense_from is not None:
        check_inputs({"dense.from": exp.dense_from})
    cfg = exp.dense if exp.method is None else exp.train
    phase = "dense" if exp.method is None else "train"
    steps = getattr(args, "steps", min(cfg.iterations, RUN_STEPS))
    if cfg.iterations < 1:
        raise ConfigError(f"{args.run}: {phase}.iterations = 0, no step of the {exp.method_name} phase "
                          "to trace")
    if steps > cfg.iterations:
        raise ConfigError(f"--steps {steps} is more than the run's {cfg.iterations} {exp.method_name} "
                          f"iterations ({phase}.iterations in {args.run})")
    check_outputs({"--out": args.out, "--json": args.json},
                  inputs={"--run": args.run if Path(args.run).exists() else None,
                          "dense.from": exp.dense_from},
                  force=args.force)
    data = load_data(exp.dataset, data_dir=args.data_dir, download=not args.no_download)
    if cfg.batch_size > len(data.x_train):
        raise ConfigError(f"{phase}.batch_size {cfg.batch_size} is larger than the {len(data.x_train):,} "
                          "training images")
    summary = write_run_golden(args.out, exp, data, steps=steps, max_elements=args.max_elements,
                               source=str(args.run))
    if steps < cfg.iterations:
        print(f"the first {steps} of the run's {cfg.iterations} {exp.method_name} iterations; "
              "--steps N for more")
    return _golden_report(args, exp.net, exp.method_name, steps, cfg.batch_size, exp.seed, summary,
                          run=str(args.run))


def _golden_report(args, net, method, steps, batch_size, seed, summary, run=None) -> int:
    size = Path(args.out).stat().st_size
    of_run = f" (the experiment of {run})" if run else ""
    print(f"golden trace {args.out}{of_run}: {net}, {method}, {steps} steps of batch "
          f"{batch_size}, seed {seed}, {size / 1e6:.3f} MB")
    for t, loss in enumerate(summary["loss"]):
        extra = ""
        if summary["fired"]:
            extra = (f"  fired {summary['fired'][t]}  pruned {summary['pruned'][t]}  "
                     f"spliced {summary['spliced'][t]}")
        print(f"  step {t}: loss {loss:.6f}{extra}")
    if args.json:
        write_json(args.json, summary | {"file": str(args.out), "bytes": size, "net": net, "method": method,
                                         "steps": steps} | ({"run": run} if run else {}))
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


def add_commands(command, nets) -> None:
    """Register this module's subcommands (``command(name, func, help)`` makes a subparser)."""
    p = command("golden", cmd_golden, "write a golden step trace (HDF5) for checking another implementation")
    p.add_argument("--net", choices=nets, help="the network (Caffe layer names and layouts); required "
                   "unless --run")
    unset = argparse.SUPPRESS  # absent unless given: --run takes them from the run file
    p.add_argument("--method", choices=list(GOLDEN_METHODS), default=unset,
                   help="what the traced steps run, with the golden settings of refdns/golden.py "
                   "(default: dns)")
    p.add_argument("--run", metavar="EXPERIMENT.toml",
                   help="trace the experiment of this run file (or built-in recipe) instead, with its own "
                   "settings: the first --steps steps of its pruning phase (of its dense phase if it has no "
                   "method), started as refdns run starts it")
    p.add_argument("--steps", type=POSITIVE, default=unset,
                   help=f"training steps to trace (default: 5); with --run, the phase's iterations, at most "
                   f"{RUN_STEPS}")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="trace file to write (HDF5)")
    p.add_argument("--seed", type=NATURAL, default=unset,
                   help="seeds init, batch order and mask draws (default: 0); with --run, the run "
                   "file's first")
    p.add_argument("--batch-size", type=POSITIVE, default=unset, help="images per traced step (default: 8)")
    p.add_argument("--max-elements", type=POSITIVE, default=1024,
                   help="per-step tensors larger than this are stored as a strided sample")
    _output_args(p, json_help="also write the per-step summary as JSON")
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="folder holding mnist/ (and fashion-mnist/); unset: $REFDNS_DATA, then "
                   "the user cache, then a checked download")
    g.add_argument("--dataset", choices=["mnist", "fashion-mnist"], default=unset,
                   help="which image set (default: mnist); with --run, the run file's")
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")
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
    p = command("diff", cmd_diff, "compare two pruned nets: per-parameter mask agreement, Jaccard index of "
                "the kept sets and the differences of W * mask")
    p.add_argument("a", metavar="A", help="checkpoint or weight file (.npz, safetensors, .caffemodel)")
    p.add_argument("b", metavar="B", help="checkpoint or weight file")
    p.add_argument("--net", choices=nets, help="the net of a weight file (checkpoints name their own)")
    _output_args(p, json_help="also write the per-parameter figures as JSON")

