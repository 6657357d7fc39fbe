"""golden, verify, diff: step traces for checking another implementation, and net comparisons."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from refdns import checkpoint
from refdns.atomic import check_inputs, check_outputs
from refdns.cli.common import NATURAL, POSITIVE, _data_args, _output_args, _tolerance, write_json
from refdns.errors import ConfigError
from refdns.golden import GOLDEN_METHODS
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
    p = command("diff", cmd_diff, "compare two pruned nets: per-parameter mask agreement, Jaccard index of "
                "the kept sets and the differences of W * mask")
    p.add_argument("a", metavar="A", help="checkpoint or weight file (.npz, safetensors, .caffemodel)")
    p.add_argument("b", metavar="B", help="checkpoint or weight file")
    p.add_argument("--net", choices=nets, help="the net of a weight file (checkpoints name their own)")
    _output_args(p, json_help="also write the per-parameter figures as JSON")

