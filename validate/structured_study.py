"""Study: which units to remove? Every structured criterion against random selection, with and without
fine-tuning (Mittal et al., "Recovering from Random Pruning: On the Plasticity of Deep Convolutional Neural
Networks", WACV 2018, report that after fine-tuning random selection is about as good as every criterion).

For each seed: train a dense net with Caffe's MNIST solver; then for each criterion
(:data:`refdns.prune.criteria.CRITERIA`) and each fraction of hidden units removed (25 / 50 / 75 % of every
hidden layer), prune with :class:`refdns.prune.structured.StructuredPruning`:

* *no fine-tune*: all ``--steps`` steps at once (each step re-scores the units on the current net), test error
  of the masked net;
* *fine-tune*: ``--steps`` steps ``--finetune-iterations / --steps`` iterations apart, test error at the end.

Every fine-tuned net is also thinned (:func:`refdns.thin.thin`) and its predictions on the whole test set
compared with the masked net's. Activation criteria score ``--samples`` training images per step.

    python validate/structured_study.py [--quick] [--net lenet-300-100] [--seeds 0 1 2] [--data-dir DIR]

``--quick``: LeNet-300-100, 2 seeds, 3,000 dense iterations, 600 fine-tuning iterations. Writes
validate/results/structured_study.md and .json (``--out-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from refdns.atomic import write_text
from refdns.nets import get_spec
from refdns.nets.sequential import error_rate, predict
from refdns.optim import SGDConfig
from refdns.pipeline import load_data, run_training
from refdns.prune.criteria import CRITERIA
from refdns.prune.structured import StructuredConfig, StructuredPruning
from refdns.prune.units import effective_params, prunable_layers
from refdns.run import TrainConfig
from refdns.thin import thin

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "validate" / "results"
FRACTIONS = (0.25, 0.5, 0.75)


def default_data_dir() -> str | None:
    if os.environ.get("REFDNS_DATA"):
        return os.environ["REFDNS_DATA"]
    shared = REPO.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def prune_once(spec, data, dense, criterion, fraction, args, seed, finetune: bool) -> dict:
    layers = {name: fraction for name in prunable_layers(spec)}
    iters = args.finetune_iterations if finetune else 0
    cfg = StructuredConfig(criterion=criterion, fractions=layers, steps=args.steps,
                           step_iterations=iters // args.steps, samples=args.samples)
    method = StructuredPruning(cfg, data.x_train, data.y_train)
    t0 = time.perf_counter()
    if finetune:
        train_cfg = TrainConfig(iterations=iters, test_interval=0, sgd=SGDConfig(base_lr=args.base_lr))
        state, _ = run_training(spec, data, train_cfg, seed=seed, method=method, params=dense.params,
                                masks=dense.masks)
        params, masks = state.params, state.masks
    else:
        params = {k: v.copy() for k, v in dense.params.items()}
        masks = {k: m.copy() for k, m in dense.masks.items()}
        mstate = method.init_state(spec, params)
        method.update_masks(0, params, masks, mstate, np.random.default_rng([seed, 7]))
    eff = effective_params(params, masks)
    row = {"criterion": criterion, "fraction": fraction, "finetune": finetune, "seed": seed,
           "test_error": error_rate(spec, eff, data.x_test, data.y_test),
           "seconds": time.perf_counter() - t0}
    if finetune:
        new_spec, new_params, report = thin(spec, params, masks)
        row["thinned_params"] = report.params_after
        row["dense_params"] = report.params_before
        row["thin_same_argmax"] = bool(np.array_equal(predict(new_spec, new_params, data.x_test),
                                                      predict(spec, eff, data.x_test)))
    return row


def run_study(args) -> dict:
    data = load_data(data_dir=args.data_dir or default_data_dir(), download=False)
    spec = get_spec(args.net)
    rows, dense_rows = [], []
    t_all = time.perf_counter()
    for seed in args.seeds:
        t0 = time.perf_counter()
        dense_cfg = TrainConfig(iterations=args.dense_iterations, test_interval=0)
        dense, _ = run_training(spec, data, dense_cfg, seed=seed)
        err = error_rate(spec, dense.params, data.x_test, data.y_test)
        dense_rows.append({"seed": seed, "test_error": err, "seconds": time.perf_counter() - t0})
        for criterion in args.criteria:
            for fraction in args.fractions:
                for finetune in (False, True):
                    rows.append(prune_once(spec, data, dense, criterion, fraction, args, seed, finetune))
    return {
        "net": spec.name,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "data_dir")},
        "dense": dense_rows,
        "runs": rows,
        "table": summarise(rows, args),
        "seconds": time.perf_counter() - t_all,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "blas_threads": 1},
    }


def summarise(rows, args) -> list[dict]:
    out = []
    for criterion in args.criteria:
        for fraction in args.fractions:
            for finetune in (False, True):
                errs = [r["test_error"] for r in rows
                        if (r["criterion"], r["fraction"], r["finetune"]) == (criterion, fraction, finetune)]
                sd = float(np.std(errs, ddof=1)) if len(errs) > 1 else 0.0
                out.append({"criterion": criterion, "fraction": fraction, "finetune": finetune,
                            "mean": float(np.mean(errs)), "sd": sd, "n": len(errs)})
    return out


def markdown(res) -> str:
    s = res["settings"]
    dense = [d["test_error"] for d in res["dense"]]
    lines = [
        f"# Structured pruning criteria on {res['net']}{' (--quick)' if s['quick'] else ''}",
        "",
        f"Seeds {s['seeds']}; dense: {s['dense_iterations']:,} iterations of Caffe's solver, test error "
        f"{100 * np.mean(dense):.2f}% (mean of {len(dense)}). Every hidden layer loses the same fraction "
        f"of its units in {s['steps']} steps; fine-tune: {s['finetune_iterations']:,} iterations in all "
        f"(base_lr {s['base_lr']}, inv policy), no fine-tune: the steps back to back. Activation criteria "
        f"score {s['samples']:,} training images per step. Test error on the 10,000 MNIST test images, "
        "mean +- sd over seeds (%). Wall time of the whole study: "
        f"{res['seconds']:.0f} s (1 BLAS thread).",
        "",
        "| criterion | " + " | ".join(f"{int(100 * f)}% removed" for f in s["fractions"])
        + " | " + " | ".join(f"{int(100 * f)}% + fine-tune" for f in s["fractions"]) + " |",
        "|---|" + "---:|" * (2 * len(s["fractions"])),
    ]
    by = {(r["criterion"], r["fraction"], r["finetune"]): r for r in res["table"]}
    for c in s["criteria"]:
        cells = [by[(c, f, ft)] for ft in (False, True) for f in s["fractions"]]
        cells = " | ".join(f"{100 * r['mean']:.2f} +- {100 * r['sd']:.2f}" for r in cells)
        lines.append(f"| {c} | {cells} |")
    thinned = [r for r in res["runs"] if r["finetune"]]
    if thinned:
        ok = all(r["thin_same_argmax"] for r in thinned)
        sizes = {r["fraction"]: r["thinned_params"] for r in thinned}
        lines += ["", "Thinned (fine-tuned) nets: parameters "
                  + ", ".join(f"{int(100 * f)}% removed: {sizes[f]:,}" for f in s["fractions"])
                  + f" of {thinned[0]['dense_params']:,}; identical argmax to the masked net on the whole "
                  f"test set in {sum(r['thin_same_argmax'] for r in thinned)} of {len(thinned)} runs"
                  + ("." if ok else " (MISMATCH).")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="LeNet-300-100, 2 seeds, short runs")
    ap.add_argument("--net", default="lenet-300-100", choices=["lenet-300-100", "lenet-5"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--dense-iterations", type=int, default=None)
    ap.add_argument("--finetune-iterations", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--base-lr", type=float, default=0.01)
    ap.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=list(CRITERIA))
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    ap.add_argument("--data-dir", help="folder holding mnist/ (default $REFDNS_DATA or ../shared/data)")
    ap.add_argument("--out-dir", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.net = "lenet-300-100"
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3, 4])
    args.dense_iterations = args.dense_iterations or (3_000 if args.quick else 10_000)
    args.finetune_iterations = args.finetune_iterations or (600 if args.quick else 3_000)
    with threadpool_limits(1):
        res = run_study(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "structured_study.md", markdown(res))
    write_text(out / "structured_study.json", json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
