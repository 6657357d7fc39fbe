"""Dense-Sparse-Dense training against a dense baseline trained for the same number of iterations.

Claim under test (Han et al., "DSD: Dense-Sparse-Dense Training for Deep Neural Networks", ICLR 2017):
pruning 30-50 % of the weights by magnitude, training sparse, then re-opening the pruned connections (at
zero) and training dense at 1/10 of the learning rate gives a lower error than the original dense net. The
paper's gains are over the dense net *before* the extra training; the criticism is that a dense net given
the same extra iterations may gain as much. So here both arms start from the same dense net and get the
very same extra schedule (:func:`refdns.pipeline.run_dsd`): S phase (lengths, lr, batch order), then D phase
at lr x 0.1; DSD prunes in the S phase, the baseline does not (``masked=False``).

Per seed: dense Caffe recipe (10,000 iterations, lr 0.01 inv), then S 5,000 + D 5,000 iterations (lr 0.01
inv restarted, then 0.001 inv), sparsity 30 %. Test errors on MNIST's 10,000 test images; mean +- sample sd
over seeds, and the paired difference DSD - baseline.

Run: ``python validate/dsd.py [--quick] [--nets lenet-300-100] [--seeds 5]``. Writes
``validate/results/dsd.{md,json}`` (``dsd_quick.*`` with --quick).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from refdns.atomic import write_text
from refdns.nets import get_spec
from refdns.optim import SGDConfig
from refdns.pipeline import experiment, load_data, reproduce, run_dsd
from refdns.prune.dsd import DSDConfig

RESULTS = Path(__file__).resolve().parent / "results"


def stats(v):
    a = np.asarray(v, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def fmt(s):
    return f"{100 * s['mean']:.3f} +- {100 * s['sd']:.3f}%"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs, 2 seeds (smoke test)")
    ap.add_argument("--nets", default="lenet-300-100")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-list", help="run these seeds (e.g. 3,4) instead of 0..--seeds-1: split a study over "
                    "processes, then --merge their JSON files")
    ap.add_argument("--dense-iterations", type=int, default=10_000)
    ap.add_argument("--stem", default=None, help="results file name (default dsd, dsd_quick with --quick)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="run nothing: join these results files' runs "
                    "(made with the same settings, which the table then states) into one table")
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--phase-iterations", type=int, default=5_000, help="length of the S and of the D phase")
    ap.add_argument("--data-dir", default=os.environ.get("REFDNS_DATA"))
    ap.add_argument("--out-dir", default=str(RESULTS))
    args = ap.parse_args(argv)
    seed_list = [int(v) for v in args.seed_list.split(",")] if args.seed_list else None
    seeds = 2 if args.quick else len(seed_list) if seed_list else args.seeds
    seed_list = seed_list or list(range(seeds))
    dense_iters = 500 if args.quick else args.dense_iterations
    phase = 300 if args.quick else args.phase_iterations
    cfg = DSDConfig(sparsity=args.sparsity, sparse_iterations=phase, redense_iterations=phase)
    sgd = SGDConfig()  # Caffe's: lr 0.01 inv, momentum 0.9, weight decay 5e-4

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    runs = []
    if args.merge:
        files = [json.loads(Path(f).read_text()) for f in args.merge]
        runs = sorted((r for f in files for r in f["runs"]), key=lambda r: (r["net"], r["seed"]))
        seed_list = sorted({r["seed"] for r in runs})
        seeds = len(seed_list)
        args.nets = ",".join(dict.fromkeys(r["net"] for r in runs))
        # The settings are the files' own (they must agree), not this command line's.
        kept = [{k: v for k, v in f["settings"].items() if k != "seeds"} for f in files]
        if any(k != kept[0] for k in kept[1:]):
            ap.error("--merge: the files were made with different settings")
        dense_iters = kept[0]["dense_iterations"]
        cfg = DSDConfig(**kept[0]["dsd"])
        phase = cfg.sparse_iterations
    else:
        data = load_data("mnist", data_dir=args.data_dir)
    for net in [] if args.merge else args.nets.split(","):
        spec = get_spec(net)
        for seed in seed_list:
            t0 = time.perf_counter()
            dense = reproduce(
                experiment(net, None, dense_iterations=dense_iters, test_interval=0, seed=seed), data
            ).dense
            dsd = run_dsd(spec, data, dense.state, cfg, sgd, seed=seed)
            base = run_dsd(spec, data, dense.state, cfg, sgd, seed=seed, masked=False)
            run = {
                "net": net,
                "seed": seed,
                "dense": dense.test_error,
                "dsd_sparse": dsd.sparse_error,
                "dsd": dsd.final_error,
                "baseline_mid": base.sparse_error,
                "baseline": base.final_error,
                "seconds": time.perf_counter() - t0,
            }
            runs.append(run)
            log(
                f"{net} seed {seed}: dense {100 * run['dense']:.2f}%  "
                f"DSD sparse {100 * run['dsd_sparse']:.2f}% -> DSD {100 * run['dsd']:.2f}%  "
                f"baseline {100 * run['baseline']:.2f}%  ({run['seconds']:.0f} s)"
            )
    summary = {}
    for net in args.nets.split(","):
        rs = [r for r in runs if r["net"] == net]
        summary[net] = {
            k: stats([r[k] for r in rs]) for k in ("dense", "dsd_sparse", "dsd", "baseline_mid", "baseline")
        }
        summary[net]["dsd_minus_baseline"] = stats([r["dsd"] - r["baseline"] for r in rs])
        summary[net]["dsd_wins"] = sum(r["dsd"] < r["baseline"] for r in rs)
    settings = {
        "dense_iterations": dense_iters,
        "dsd": dataclasses.asdict(cfg),
        "sgd": {
            "base_lr": sgd.base_lr,
            "lr_policy": sgd.lr_policy,
            "momentum": sgd.momentum,
            "weight_decay": sgd.weight_decay,
        },
        "batch_size": 64,
        "seeds": seed_list,
    }
    lines = [
        "# Dense-Sparse-Dense against a dense baseline with the same iterations",
        "",
        f"`python validate/dsd.py{' --quick' if args.quick else ''}"
        f"{f' --nets {args.nets}' if args.nets != 'lenet-300-100' else ''}"
        f"{f' --dense-iterations {dense_iters}' if dense_iters != 10_000 and not args.quick else ''}"
        f"{f' --phase-iterations {phase}' if phase != 5_000 and not args.quick else ''}` - per seed: dense {dense_iters:,} "
        f"iterations (Caffe lr 0.01 inv), then S {phase:,} iterations (lr 0.01 inv restarted; DSD: "
        f"{100 * cfg.sparsity:.0f}% of each layer's weights pruned by magnitude, mask fixed) and D {phase:,} "
        "iterations (lr 0.001 inv; DSD: every connection back, pruned ones from 0). The baseline runs the "
        "same two phases with the same batches and no mask. MNIST test error, mean +- sd over "
        f"{seeds} seeds.",
        "",
        "| net | dense (start) | DSD after S | DSD after D | baseline (same iterations) | DSD - baseline "
        "(paired) | DSD better |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for net, s in summary.items():
        d = s["dsd_minus_baseline"]
        lines.append(
            f"| {net} | {fmt(s['dense'])} | {fmt(s['dsd_sparse'])} | {fmt(s['dsd'])} "
            f"| {fmt(s['baseline'])} | {100 * d['mean']:+.3f} +- {100 * d['sd']:.3f} pp "
            f"| {s['dsd_wins']} of {d['n']} |"
        )
    lines += [
        "",
        "| net | seed | dense | DSD after S | DSD | baseline after S-length | baseline |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['net']} | {r['seed']} | {100 * r['dense']:.2f}% | {100 * r['dsd_sparse']:.2f}% "
            f"| {100 * r['dsd']:.2f}% | {100 * r['baseline_mid']:.2f}% | {100 * r['baseline']:.2f}% |"
        )
    md = "\n".join(lines) + "\n"
    stem = args.stem or ("dsd_quick" if args.quick else "dsd")
    out = Path(args.out_dir)
    write_text(
        out / f"{stem}.json",
        json.dumps(
            {"settings": settings, "summary": summary, "runs": runs},
            indent=1,
            sort_keys=True,
            allow_nan=False,
        )
        + "\n",
    )
    write_text(out / f"{stem}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
