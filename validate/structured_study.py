"""Study: which units to remove? Every structured criterion against random selection, with and without
fine-tuning (Mittal et al., "Recovering from Random Pruning: On the Plasticity of Deep Convolutional Neural
Networks", WACV 2018, report that after fine-tuning random selection is about as good as every criterion).

For each seed: train a dense net with Caffe's MNIST solver; then for each criterion
(:data:`refdns.prune.criteria.CRITERIA`, one-shot sensitivity included) and each fraction of hidden units
removed (25 / 50 / 75 % of every hidden layer), prune with :class:`refdns.prune.structured.StructuredPruning`:

* *no fine-tune*: all ``--steps`` steps at once (each step re-scores the units on the current net), test error
  of the masked net;
* *fine-tune*: ``--steps`` steps ``--finetune-iterations / --steps`` iterations apart, test error at the end.

Every fine-tuned net is also thinned (:func:`refdns.thin.thin`) and its predictions on the whole test set
compared with the masked net's. Data criteria (activations, sensitivity) score ``--samples`` training images
per step; sensitivity re-runs the net after a layer once per alive unit (LeNet-5: 20 + 50 + 500 units), so
it is the slowest criterion by far.

    python validate/structured_study.py [--quick] [--net lenet-300-100] [--seeds 0 1 2] [--data-dir DIR]
    python validate/structured_study.py --merge A.json B.json ... [--out-dir DIR]

``--quick``: LeNet-300-100, 2 seeds, 3,000 dense iterations, 600 fine-tuning iterations. Writes
validate/results/structured_study_<net>.{md,json,png} (``_quick`` before the suffix with ``--quick``;
``--out-dir``; the PNG needs matplotlib, the ``plot`` extra). The markdown ends with the numbers Mittal et
al.'s claim is about: per fraction, after fine-tuning, random beside the best and worst criterion, its rank,
and Welch's t of random against the best.

``--merge``: joins studies of one net run on different seeds in separate processes (same settings but the
seeds; no seed twice), writes the merged md/json/png and runs nothing; wall times are summed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from refdns.atomic import write_figure, write_text
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
# Mittal et al. 2018 (WACV), VGG-16 on ImageNet, top-1 accuracy after fine-tuning, 25 / 50 / 75 % of filters
# removed, as issue 14 quotes them: random against the range of the criteria they compare.
MITTAL = {"random": (0.650, 0.569, 0.415), "criteria": ((0.636, 0.667), (0.543, 0.593), (0.379, 0.436))}
# Settings that may differ between the studies --merge joins (everything else must be equal).
MERGE_FREE = ("seeds",)


class MergeError(ValueError):
    """Studies that cannot be merged: another net, other settings, a seed twice, or an unreadable file."""


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
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "data_dir", "merge")},
        "dense": dense_rows,
        "runs": rows,
        "table": summarise(rows, vars(args)),
        "seconds": time.perf_counter() - t_all,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "blas_threads": 1},
    }


def summarise(rows, settings: dict) -> list[dict]:
    """Mean and sd (ddof 1) of the test error over seeds, per criterion, fraction and fine-tune or not."""
    out = []
    for criterion in settings["criteria"]:
        for fraction in settings["fractions"]:
            for finetune in (False, True):
                errs = [r["test_error"] for r in rows
                        if (r["criterion"], r["fraction"], r["finetune"]) == (criterion, fraction, finetune)]
                sd = float(np.std(errs, ddof=1)) if len(errs) > 1 else 0.0
                out.append({"criterion": criterion, "fraction": fraction, "finetune": finetune,
                            "mean": float(np.mean(errs)), "sd": sd, "n": len(errs)})
    return out


def welch_t(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int) -> tuple[float, float] | None:
    """Welch's t = (m1 - m2) / sqrt(s1^2/n1 + s2^2/n2) and its Welch-Satterthwaite degrees of freedom;
    None when either side has fewer than 2 seeds or both have sd 0."""
    if n1 < 2 or n2 < 2:
        return None
    v1, v2 = s1 * s1 / n1, s2 * s2 / n2
    if v1 + v2 == 0:
        return None
    df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    return (m1 - m2) / math.sqrt(v1 + v2), df


def mittal_rows(res) -> list[dict]:
    """Per fraction, after fine-tuning: random against the other criteria (from the table)."""
    s = res["settings"]
    by = {(r["criterion"], r["fraction"]): r for r in res["table"] if r["finetune"]}
    others = [c for c in s["criteria"] if c != "random"]
    if "random" not in s["criteria"] or not others:
        return []
    out = []
    for f in s["fractions"]:
        rnd = by[("random", f)]
        ranked = sorted(s["criteria"], key=lambda c: by[(c, f)]["mean"])
        best = min(others, key=lambda c: by[(c, f)]["mean"])
        worst = max(others, key=lambda c: by[(c, f)]["mean"])
        b = by[(best, f)]
        t = welch_t(rnd["mean"], rnd["sd"], rnd["n"], b["mean"], b["sd"], b["n"])
        out.append({
            "fraction": f, "random_mean": rnd["mean"], "random_sd": rnd["sd"],
            "best": best, "best_mean": b["mean"], "best_sd": b["sd"],
            "worst": worst, "worst_mean": by[(worst, f)]["mean"],
            "random_rank": ranked.index("random") + 1, "n_criteria": len(ranked),
            "within_range": by[(best, f)]["mean"] <= rnd["mean"] <= by[(worst, f)]["mean"],
            "welch_t": None if t is None else t[0], "welch_df": None if t is None else t[1],
        })
    return out


def mittal_section(res) -> list[str]:
    rows = mittal_rows(res)
    if not rows:
        return []
    fr = "/".join(f"{int(100 * f)}" for f in FRACTIONS)
    crit = "/".join(f"{lo:.3f}-{hi:.3f}" for lo, hi in MITTAL["criteria"])
    lines = [
        "", "## Mittal et al. (2018) claim", "",
        "Mittal et al. (WACV 2018) report that after fine-tuning random filter selection is about as good as "
        "the criteria: on VGG-16, top-1 accuracy with "
        f"{fr}% of the filters removed, random {'/'.join(f'{a:.3f}' for a in MITTAL['random'])} against "
        f"criteria {crit}. Here, after fine-tuning (test error %, mean +- sd over seeds; best and worst "
        "among the other criteria; rank 1 = lowest error among all criteria including random; Welch's t of "
        "random against the best, positive = random worse):",
        "",
        "| removed | random | best criterion | worst criterion | random's rank | random within the range "
        "| Welch t (df) |",
        "|---:|---:|---|---|---:|---|---:|",
    ]
    for r in rows:
        t = "n/a (fewer than 2 seeds or no spread)" if r["welch_t"] is None else \
            f"{r['welch_t']:.2f} ({r['welch_df']:.1f})"
        lines.append(
            f"| {int(100 * r['fraction'])}% | {100 * r['random_mean']:.2f} +- {100 * r['random_sd']:.2f} "
            f"| {r['best']} {100 * r['best_mean']:.2f} +- {100 * r['best_sd']:.2f} "
            f"| {r['worst']} {100 * r['worst_mean']:.2f} | {r['random_rank']} of {r['n_criteria']} "
            f"| {'yes' if r['within_range'] else 'no'} | {t} |")
    inside = sum(r["within_range"] for r in rows)
    lines += ["", f"Random lies within the range of the other criteria at {inside} of {len(rows)} fractions."]
    return lines


def markdown(res) -> str:
    s = res["settings"]
    dense = [d["test_error"] for d in res["dense"]]
    merged = res.get("merged_from")
    wall = f"{res['seconds']:.0f} s"
    if merged:
        parts = ", ".join("seeds {}: {:.0f} s".format(m["seeds"], m["seconds"]) for m in merged)
        wall += f", the sum of the wall times of the {len(merged)} processes merged ({parts})"
    lines = [
        f"# Structured pruning criteria on {res['net']}{' (--quick)' if s['quick'] else ''}",
        "",
        f"Seeds {s['seeds']}; dense: {s['dense_iterations']:,} iterations of Caffe's solver, test error "
        f"{100 * np.mean(dense):.2f}% (mean of {len(dense)}). Every hidden layer loses the same fraction "
        f"of its units in {s['steps']} steps; fine-tune: {s['finetune_iterations']:,} iterations in all "
        f"(base_lr {s['base_lr']}, inv policy), no fine-tune: the steps back to back. Data criteria "
        f"(activations, sensitivity) score {s['samples']:,} training images per step. Test error on the "
        "10,000 MNIST test images, mean +- sd over seeds (%). Wall time of the whole study: "
        f"{wall} (1 BLAS thread).",
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
    lines += mittal_section(res)
    thinned = [r for r in res["runs"] if r["finetune"]]
    if thinned:
        ok = all(r["thin_same_argmax"] for r in thinned)
        sizes = {r["fraction"]: r["thinned_params"] for r in thinned}
        lines += ["", "Thinned (fine-tuned) nets: parameters "
                  + ", ".join(f"{int(100 * f)}% removed: {sizes[f]:,}" for f in s["fractions"])
                  + f" of {thinned[0]['dense_params']:,}; identical argmax to the masked net on the whole "
                  f"test set in {sum(r['thin_same_argmax'] for r in thinned)} of {len(thinned)} thinned nets"
                  + ("." if ok else " (MISMATCH).")]
    return "\n".join(lines) + "\n"


def figure(res):
    """Two panels (no fine-tune, fine-tune): test error (%) against units removed (%), one line per
    criterion with mean +- sd error bars over seeds (each criterion shifted by a fraction of a percent so the
    bars do not hide each other); random drawn black and dashed. Returns the Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    s = res["settings"]
    by = {(r["criterion"], r["fraction"], r["finetune"]): r for r in res["table"]}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    x = [100 * f for f in s["fractions"]]
    for ax, ft in zip(axes, (False, True), strict=True):
        for i, c in enumerate(s["criteria"]):
            rows = [by[(c, f, ft)] for f in s["fractions"]]
            dodge = 0.6 * (i - (len(s["criteria"]) - 1) / 2)  # error bars side by side, not on top
            style = ({"color": "black", "ls": "--", "lw": 2.2, "marker": "s", "zorder": 3} if c == "random"
                     else {"lw": 1.2, "marker": "o", "ms": 4})
            ax.errorbar([v + dodge for v in x], [100 * r["mean"] for r in rows],
                        yerr=[100 * r["sd"] for r in rows], capsize=3, label=c, **style)
        ax.set_xlabel("hidden units removed (%)")
        ax.set_ylabel("test error (%)")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    for which in (axes[0].yaxis.set_major_formatter, axes[0].yaxis.set_minor_formatter):
        which(FormatStrFormatter("%g"))
    axes[0].set_title(f"{res['net']}: no fine-tune ({s['steps']} steps back to back)")
    axes[1].set_title(f"{res['net']}: fine-tune ({s['finetune_iterations']:,} iterations)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"structured pruning criteria, mean +- sd over {len(s['seeds'])} seed(s)", fontsize=10)
    fig.tight_layout()
    return fig


def stem(res) -> str:
    """``structured_study_<net>`` (``_quick`` appended for a --quick study)."""
    return f"structured_study_{res['net']}" + ("_quick" if res["settings"]["quick"] else "")


def write_results(res, out_dir: Path) -> list[Path]:
    """Write <stem>.md, .json and (matplotlib installed) .png into ``out_dir``; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / stem(res)
    paths = [write_text(base.with_suffix(".md"), markdown(res)),
             write_text(base.with_suffix(".json"), json.dumps(res, indent=1) + "\n")]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed (pip install 'refdns[plot]'): no PNG", file=sys.stderr)
        return paths
    import matplotlib.pyplot as plt

    fig = figure(res)
    paths.append(write_figure(base.with_suffix(".png"), fig, dpi=110))
    plt.close(fig)
    return paths


def merge(paths) -> dict:
    """One study from several of the same net and settings run on different seeds (nothing is run).

    Raises MergeError naming the file and the key when a file is not a study, the nets or any setting but
    the seeds differ, or two files share a seed."""
    if len(paths) < 2:
        raise MergeError(f"--merge needs at least two study JSON files, got {len(paths)}")
    studies = []
    for p in paths:
        try:
            res = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MergeError(f"--merge: cannot read {p}: {e}") from None
        if not isinstance(res, dict) or not {"net", "settings", "dense", "runs", "seconds"} <= set(res):
            raise MergeError(f"--merge: {p} is not a structured_study JSON (no net/settings/dense/runs)")
        studies.append((str(p), res))
    (p0, r0), rest = studies[0], studies[1:]
    keys0 = {k: v for k, v in r0["settings"].items() if k not in MERGE_FREE}
    for p, r in rest:
        if r["net"] != r0["net"]:
            raise MergeError(f"--merge: key 'net' differs: {p0} has {r0['net']!r}, {p} has {r['net']!r}")
        keys = {k: v for k, v in r["settings"].items() if k not in MERGE_FREE}
        for k in sorted(set(keys0) | set(keys)):
            if keys0.get(k) != keys.get(k):
                raise MergeError(f"--merge: setting {k!r} differs: {p0} has {keys0.get(k)!r}, {p} has "
                                 f"{keys.get(k)!r} (only the seeds may differ)")
    owner: dict[int, str] = {}
    for p, r in studies:
        for seed in r["settings"]["seeds"]:
            if seed in owner:
                raise MergeError(f"--merge: seed {seed} is in both {owner[seed]} and {p}")
            owner[seed] = p
    settings = dict(r0["settings"], seeds=[s for _, r in studies for s in r["settings"]["seeds"]])
    runs = [row for _, r in studies for row in r["runs"]]
    return {
        "net": r0["net"],
        "settings": settings,
        "dense": [row for _, r in studies for row in r["dense"]],
        "runs": runs,
        "table": summarise(runs, settings),
        "seconds": float(sum(r["seconds"] for _, r in studies)),
        "merged_from": [{"file": Path(p).name, "seeds": r["settings"]["seeds"], "seconds": r["seconds"],
                         "machine": r.get("machine")} for p, r in studies],
        "machine": r0.get("machine"),
    }


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
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="merge these studies (same net and settings, different seeds) and run nothing")
    args = ap.parse_args(argv)
    if args.merge:
        try:
            res = merge(args.merge)
        except MergeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for p in write_results(res, Path(args.out_dir)):
            print(p)
        return 0
    if args.quick:
        args.net = "lenet-300-100"
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3, 4])
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds {args.seeds} repeats a seed")
    if not all(0 < f < 1 for f in args.fractions):
        ap.error(f"--fractions {args.fractions} must lie in (0, 1)")
    args.dense_iterations = args.dense_iterations or (3_000 if args.quick else 10_000)
    args.finetune_iterations = args.finetune_iterations or (600 if args.quick else 3_000)
    with threadpool_limits(1):
        res = run_study(args)
    for p in write_results(res, Path(args.out_dir)):
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
