"""DNS vs Han et al. vs one-shot magnitude vs random pruning, on the same nets, seed and dense start.

Claim under test (Guo et al. 2016, Sec. 4.1): Dynamic Network Surgery compresses LeNet-300-100 and LeNet-5
more than Han et al.'s iterative pruning (56x / 108x against 12x) in far fewer training iterations
(25K / 16K of surgery against Han's repeated prune/retrain). And the baselines every pruning study needs:
at the *same per-layer densities* as DNS's final net (and as Han's), is one-shot magnitude pruning (per layer
or one global threshold, with and without retraining) or a random mask (per layer, retrained) as good?

Per net, all runs start from one dense net (Caffe recipe, 10,000 iterations, seed 0) and use seed 0:

* ``dns``               :meth:`refdns.prune.dns.DNS.recipe` (per-layer settings, lr and length);
* ``han``               :meth:`refdns.prune.han.Han.recipe` (per-layer quality, prune/retrain rounds);
* ``han@dns``           Han's rule with the thresholds solved for DNS's per-layer densities (same rounds);
* ``magnitude@X``       one-shot per-layer magnitude at X's per-layer weight densities, retrained for
                        ``--retrain`` iterations (default 10,000, a dense run's length; ``+0`` = none);
* ``magnitude-global@X`` one global threshold at X's total weight density, retrained likewise;
* ``random@X``          uniform random per-layer masks at X's densities, retrained likewise (and ``+0``).

Densities are of weights (biases: DNS prunes them, the others keep them; the table's kept % counts both).
``iterations`` is every training iteration the result cost, the dense pre-training included.

Run: ``python validate/compare_methods.py [--quick] [--nets lenet-300-100,lenet-5] [--json FILE]``.
Writes ``validate/results/compare_methods.{md,json,png}`` (the PNG needs matplotlib, the ``plot`` extra).
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

from refdns import checkpoint
from refdns.atomic import write_bytes, write_figure
from refdns.nets import get_spec
from refdns.optim import SGDConfig
from refdns.pipeline import Experiment, experiment, layer_table, load_data, reproduce
from refdns.prune.dns import DNS
from refdns.prune.han import Han
from refdns.prune.magnitude import Magnitude, MagnitudeConfig
from refdns.prune.random import RandomConfig, RandomPruning
from refdns.run import TrainConfig
from refdns.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
DENSE_ITERATIONS = 10_000
# The DNS paper's Table 1 and Han et al.'s Tables 2-3 (compression, test error).
PAPER = {
    "lenet-300-100": {"dns": (56, 0.0199, 25_000), "han": (12, 0.0159, None)},
    "lenet-5": {"dns": (108, 0.0091, 16_000), "han": (12, 0.0077, None)},
}




def weight_densities(spec, masks) -> dict[str, float]:
    return {
        name: float(np.count_nonzero(masks[f"{name}.weight"]) / masks[f"{name}.weight"].size)
        for name in spec.layer_names
    }


def total_weight_density(spec, masks) -> float:
    kept = sum(int(np.count_nonzero(masks[f"{n}.weight"])) for n in spec.layer_names)
    return kept / sum(masks[f"{n}.weight"].size for n in spec.layer_names)


def dense_start(spec, data, args, log):
    """The shared dense net: loaded from --dense-dir when a matching checkpoint is there, else trained."""
    iters = 1_000 if args.quick else DENSE_ITERATIONS
    if args.dense_dir:
        path = Path(args.dense_dir) / f"{spec.name}-dense.h5"
        if path.exists():
            ck = checkpoint.load(path)
            if ck.state.iteration == iters and ck.state.spec.name == spec.name and ck.state.seed == args.seed:
                log(f"{spec.name}: dense net from {path}")
                return ck.state, None
            log(f"{spec.name}: {path} is not a {iters}-iteration seed-{args.seed} dense net; training one")
    result = reproduce(experiment(spec.name, None, dense_iterations=iters, test_interval=0, seed=args.seed), data)
    return result.dense.state, result.dense.seconds


def run_one(label, spec, data, args, dense, method, iterations, log, base_lr=0.01):
    cfg = TrainConfig(iterations=iterations, test_interval=0, sgd=SGDConfig(base_lr=base_lr))
    t0 = time.perf_counter()
    result = reproduce(Experiment(spec.name, method, cfg, seed=args.seed), data, dense_state=dense)
    state, seconds, err = result.pruned.state, result.pruned.seconds, result.pruned.test_error
    rows = layer_table(spec, state.masks)
    row = {
        "net": spec.name,
        "method": label,
        "test_error": err,
        "kept_fraction": rows[-1]["kept_fraction"],
        "weight_density": total_weight_density(spec, state.masks),
        "layer_weight_densities": weight_densities(spec, state.masks),
        "pruning_iterations": iterations,
        "iterations": dense.iteration + iterations,
        "seconds": seconds,
        "config": method.config_dict(),
    }
    log(
        f"{spec.name} {label:>24}: error {100 * err:.2f}%  kept {100 * row['kept_fraction']:.2f}%  "
        f"iterations {row['iterations']:,}  ({time.perf_counter() - t0:.0f} s)"
    )
    return row, state


def compare_net(net, data, args, log):
    spec = get_spec(net)
    dense, dense_seconds = dense_start(spec, data, args, log)
    dense_err = evaluate(dense, data.x_test, data.y_test)
    log(f"{net}: dense error {100 * dense_err:.2f}% after {dense.iteration:,} iterations")
    rows = [
        {
            "net": net,
            "method": "dense",
            "test_error": dense_err,
            "kept_fraction": 1.0,
            "weight_density": 1.0,
            "layer_weight_densities": {n: 1.0 for n in spec.layer_names},
            "pruning_iterations": 0,
            "iterations": dense.iteration,
            "seconds": dense_seconds,
            "config": {},
        }
    ]

    recipe = DNS.recipe(net)
    surgery = 1_500 if args.quick else recipe.iterations
    dns_cfg = recipe.config
    if args.quick:  # the schedule squeezed into the short run
        scale = surgery / recipe.iterations
        dns_cfg = dataclasses.replace(
            dns_cfg,
            layers={
                k: dataclasses.replace(lc, iter_stop=int(lc.iter_stop * scale), gamma=lc.gamma / scale)
                for k, lc in dns_cfg.layers.items()
            },
        )
    row, dns_state = run_one("dns", spec, data, args, dense, DNS(dns_cfg), surgery, log, base_lr=recipe.base_lr)
    rows.append(row)

    han = Han.from_recipe(net)
    if args.quick:
        han = Han(dataclasses.replace(han.config, round_iterations=max(han.config.round_iterations // 10, 1)))
    row, han_state = run_one("han", spec, data, args, dense, han, han.schedule_iterations(), log)
    rows.append(row)

    targets = {"dns": weight_densities(spec, dns_state.masks), "han": weight_densities(spec, han_state.masks)}
    totals = {
        "dns": total_weight_density(spec, dns_state.masks),
        "han": total_weight_density(spec, han_state.masks),
    }
    retrain = 1_500 if args.quick else args.retrain
    if not args.skip_han_matched:
        han_matched = Han(dataclasses.replace(han.config, quality=None, densities=targets["dns"]))
        row, _ = run_one(
            "han@dns", spec, data, args, dense, han_matched, han_matched.schedule_iterations(), log
        )
        rows.append(row)
    for at in ("dns", "han"):
        for label, method, iters in (
            (f"magnitude@{at}+0", Magnitude(MagnitudeConfig(densities=targets[at], retrain_iterations=0)), 0),
            (
                f"magnitude@{at}",
                Magnitude(MagnitudeConfig(densities=targets[at], retrain_iterations=retrain)),
                retrain,
            ),
            (
                f"magnitude-global@{at}",
                Magnitude(MagnitudeConfig(scope="global", density=totals[at], retrain_iterations=retrain)),
                retrain,
            ),
            (f"random@{at}+0", RandomPruning(RandomConfig(densities=targets[at], retrain_iterations=0)), 0),
            (
                f"random@{at}",
                RandomPruning(RandomConfig(densities=targets[at], retrain_iterations=retrain)),
                retrain,
            ),
        ):
            row, _ = run_one(label, spec, data, args, dense, method, iters, log)
            rows.append(row)
    return rows


def markdown(rows, args, seconds) -> str:
    lines = [
        "# DNS vs Han et al. vs one-shot magnitude vs random pruning",
        "",
        f"`python validate/compare_methods.py{' --quick' if args.quick else ''}`; seed {args.seed}; "
        f"{seconds / 60:.1f} min wall on this machine. All runs of a net start from the same dense net. "
        "`@dns` / `@han`: at that method's final per-layer weight densities; `+0`: no retraining. "
        "Iterations include the dense pre-training.",
        "",
    ]
    for net in dict.fromkeys(r["net"] for r in rows):
        names = list(rows[i]["layer_weight_densities"] for i, r in enumerate(rows) if r["net"] == net)[0]
        lines += [
            f"## {net}",
            "",
            "| method | test error | kept % (w+b) | compression | iterations (pruning) | "
            + " | ".join(f"{n} %" for n in names)
            + " |",
            "|---|---:|---:|---:|---:|" + "---:|" * len(names),
        ]
        for r in rows:
            if r["net"] != net:
                continue
            dens = " | ".join(f"{100 * r['layer_weight_densities'][n]:.1f}" for n in names)
            lines.append(
                f"| {r['method']} | {100 * r['test_error']:.2f}% | {100 * r['kept_fraction']:.2f}% | "
                f"{1 / r['kept_fraction']:.1f}x | {r['iterations']:,} ({r['pruning_iterations']:,}) "
                f"| {dens} |"
            )
        p = PAPER[net]
        lines += [
            "",
            f"Papers: DNS {p['dns'][0]}x at {100 * p['dns'][1]:.2f}% in {p['dns'][2]:,} surgery "
            f"iterations; Han et al. {p['han'][0]}x at {100 * p['han'][1]:.2f}% (iterations not stated).",
            "",
        ]
        by = {r["method"]: r for r in rows if r["net"] == net}
        d, h = by["dns"], by["han"]
        han_at_dns = f"{100 * by['han@dns']['test_error']:.2f}%" if "han@dns" in by else "(not run)"
        more = "more" if d["kept_fraction"] < h["kept_fraction"] else "less"
        fewer = "fewer" if d["iterations"] < h["iterations"] else "more"
        mag, rnd = by["magnitude@dns"]["test_error"], by["random@dns"]["test_error"]
        lines.append(
            f"Claim check: DNS {1 / d['kept_fraction']:.1f}x at {100 * d['test_error']:.2f}% in "
            f"{d['iterations']:,} iterations vs Han {1 / h['kept_fraction']:.1f}x at "
            f"{100 * h['test_error']:.2f}% in {h['iterations']:,}: DNS compresses {more} with {fewer} "
            f"iterations (ratio {d['iterations'] / h['iterations']:.2f}); "
            "at DNS's densities Han's rule gives "
            f"{han_at_dns}, retrained per-layer magnitude {100 * mag:.2f}%, random {100 * rnd:.2f}%."
        )
        lines.append("")
    return "\n".join(lines)


def plot(rows, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    nets = list(dict.fromkeys(r["net"] for r in rows))
    fig, axes = plt.subplots(1, len(nets), figsize=(6.5 * len(nets), 4.8), squeeze=False)
    style = {
        "dns": ("o", "C0"),
        "han": ("s", "C1"),
        "magnitude": ("^", "C2"),
        "magnitude-global": ("v", "C4"),
        "random": ("x", "C3"),
        "dense": ("*", "k"),
    }
    for ax, net in zip(axes[0], nets, strict=True):
        for r in rows:
            if r["net"] != net:
                continue
            base = r["method"].split("@")[0]
            marker, color = style.get(base, ("d", "C5"))
            hollow = r["method"].endswith("+0")
            face = "none" if hollow and marker not in "x*" else color
            kw = {"facecolors": face, "edgecolors": color} if marker not in "x" else {"color": color}
            ax.scatter(100 * r["kept_fraction"], 100 * r["test_error"], marker=marker, s=60, **kw)
            ax.annotate(
                r["method"],
                (100 * r["kept_fraction"], 100 * r["test_error"]),
                fontsize=7,
                xytext=(4, 2),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters kept (%)")
        ax.set_ylabel("test error (%)")
        ax.set_title(f"{net}: error vs kept (hollow: no retraining)")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test of the whole comparison)")
    ap.add_argument("--nets", default="lenet-300-100,lenet-5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=os.environ.get("REFDNS_DATA"))
    ap.add_argument(
        "--dense-dir", help="reuse <net>-dense.h5 from here when it matches (10K iterations, seed)"
    )
    ap.add_argument(
        "--retrain",
        type=int,
        default=DENSE_ITERATIONS,
        help="retraining iterations of the magnitude and random baselines (default: a dense run's)",
    )
    ap.add_argument(
        "--skip-han-matched", action="store_true", help="no han@dns run (Han's rule at DNS's densities)"
    )
    ap.add_argument("--json", metavar="FILE", help="also write the rows here")
    ap.add_argument(
        "--out", default=str(RESULTS / "compare_methods"), help="path prefix of the .md/.json/.png outputs"
    )
    args = ap.parse_args(argv)
    if args.quick and args.out == str(RESULTS / "compare_methods"):
        args.out += "_quick"

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    data = load_data(data_dir=args.data_dir)
    t0 = time.perf_counter()
    rows = []
    for net in args.nets.split(","):
        rows += compare_net(net.strip(), data, args, log)
    seconds = time.perf_counter() - t0
    md = markdown(rows, args, seconds)
    out = Path(args.out)
    payload = json.dumps(
        {"quick": args.quick, "seed": args.seed, "seconds": seconds, "rows": rows}, indent=2, sort_keys=True
    ).encode()
    write_bytes(out.with_suffix(".md"), md.encode())
    write_bytes(out.with_suffix(".json"), payload)
    if args.json:
        write_bytes(Path(args.json), payload)
    if not plot(rows, out.with_suffix(".png")):
        log("matplotlib not installed: no PNG (pip install 'refdns[plot]')")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
