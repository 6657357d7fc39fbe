"""Study: magnitude vs Optimal Brain Damage vs Optimal Brain Surgeon on a small MNIST net, no retraining.

Hassibi & Stork (1993) claim OBS beats OBD beats magnitude pruning. This script measures it with refdns:

1. Train the study net ``mnist9-20`` (28x28 -> 3x3 max-pool -> 9x9 -> 81-20-10 MLP, 1,850 parameters) with
   refdns's Caffe solver (base_lr 0.05, otherwise Caffe's MNIST recipe) on real MNIST.
2. On ``--hessian-samples`` training images compute, in float64: the exact Hessian of the mean cross-entropy
   (n R-operator products), LeCun's OBD diagonal recursion, Hassibi & Stork's recursive (Woodbury) inverse of
   the outer-product Hessian, and per-layer input Hessians 2 X X^T.
3. Prune the weights (biases are kept) to decreasing kept fractions, WITHOUT retraining, by: magnitude
   (global and per layer), OBD (recursion), OBD (exact diagonal), OBS (exact Hessian), OBS (recursive
   outer-product inverse) and OBS (layer-wise, OBC form). Test error on the 10,000 test images at each level.
4. Predicted vs actual loss increase of every single removal along each path (Pearson and Spearman
   correlation), and for each weight deleted alone from the trained net.
5. (full mode, or ``--lenet300``) layer-wise OBS on LeNet-300-100: time, memory and test error.

    python validate/obd_obs_study.py [--quick] [--json FILE] [--data-dir DIR] [--no-lenet300]

Writes validate/results/obd_obs_study.md, .json and .png (the PNG needs matplotlib, the ``plot`` extra).

The parameter-free max-pool in front is applied once to the Hessian samples and the Hessians, paths and
losses are computed on the rest of the net (the same function of the same parameters), which saves pooling
60 MB of images at every one of the ~2,000 loss evaluations per path. BLAS runs single-threaded
(``--blas-threads``): these matrices are small and a shared 2-core machine oversubscribed by BLAS threads was
measured 30x slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr
from threadpoolctl import threadpool_limits

from refdns.atomic import write_figure, write_text
from refdns.datasets import load_mnist
from refdns.hessian import (
    full_hessian,
    gauss_newton_matrix,
    loss_and_gradient,
    loss_value,
    obd_diagonal,
    output_factors,
    param_slices,
    param_vector,
    vector_to_params,
)
from refdns.layers import maxpool_forward
from refdns.nets import get_spec
from refdns.nets.mnist9 import SPEC as STUDY_SPEC
from refdns.nets.sequential import NetSpec, error_rate
from refdns.optim import SGDConfig
from refdns.prune.obd import lowest_score_masks
from refdns.prune.obs import damped_inverse, layer_inputs, layerwise_obs, obs_path, woodbury_inverse
from refdns.run import TrainConfig, new_run
from refdns.train import train

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "validate" / "results"
LEVELS = [1.0, 0.7, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03]
LENET_LEVELS = [0.5, 0.2, 0.1, 0.05, 0.02]


def default_data_dir() -> str | None:
    if os.environ.get("REFDNS_DATA"):
        return os.environ["REFDNS_DATA"]
    shared = REPO.parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def train_net(spec, data, iterations, seed, base_lr=0.01):
    x_train, y_train, x_test, y_test = data
    cfg = TrainConfig(iterations=iterations, test_interval=0, sgd=SGDConfig(base_lr=base_lr))
    t0 = time.perf_counter()
    state = train(new_run(spec, len(x_train), cfg, seed=seed), x_train, y_train, cfg)
    return state.params, time.perf_counter() - t0


def test_error(spec, params64, x_test, y_test):
    return error_rate(spec, {k: v.astype(np.float32) for k, v in params64.items()}, x_test, y_test)


def corr(pred, actual):
    pred, actual = np.asarray(pred), np.asarray(actual)
    if len(pred) < 3:
        return {"pearson": None, "spearman": None, "n": len(pred)}
    return {
        "pearson": float(pearsonr(pred, actual)[0]),
        "spearman": float(spearmanr(pred, actual)[0]),
        "n": int(len(pred)),
    }


def sequential_path(spec, w0, order, x_h, y_h, pred, snap_at):
    """Delete weights in ``order`` one at a time (no other change); actual loss increase of each step."""
    w = w0.copy()
    L_prev = loss_value(spec, vector_to_params(spec, w), x_h, y_h)
    actual, snaps = [], {}
    for i, q in enumerate(order, 1):
        w[q] = 0.0
        L = loss_value(spec, vector_to_params(spec, w), x_h, y_h)
        actual.append(L - L_prev)
        L_prev = L
        if i in snap_at:
            snaps[i] = w.copy()
    return actual, snaps, [float(pred[q]) for q in order]


def obs_global_path(spec, w0, h_inv, cand, n_remove, x_h, y_h, snap_at):
    L_prev = loss_value(spec, vector_to_params(spec, w0), x_h, y_h)
    pred, actual, snaps = [], [], {}
    for i, (_, L_q, w) in enumerate(obs_path(w0, h_inv, cand, n_remove), 1):
        L = loss_value(spec, vector_to_params(spec, w), x_h, y_h)
        pred.append(L_q)
        actual.append(L - L_prev)
        L_prev = L
        if i in snap_at:
            snaps[i] = w.copy()
    return actual, snaps, pred


def run_study(args) -> dict:
    data_dir = args.data_dir or default_data_dir()
    x_train, y_train = load_mnist("train", data_dir=data_dir)
    x_test, y_test = load_mnist("test", data_dir=data_dir)
    spec = STUDY_SPEC
    rng = np.random.default_rng(args.seed)
    out: dict = {
        "net": spec.name,
        "n_params": spec.n_params(),
        "seed": args.seed,
        "quick": args.quick,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_avg_start": os.getloadavg(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
    }
    iters = 2000 if args.quick else 10_000
    params32, t_train = train_net(spec, (x_train, y_train, x_test, y_test), iters, args.seed, base_lr=0.05)
    p64 = {k: v.astype(np.float64) for k, v in params32.items()}
    dense_err = test_error(spec, p64, x_test, y_test)
    out["training"] = {
        "iterations": iters,
        "base_lr": 0.05,
        "seconds": t_train,
        "dense_test_error": dense_err,
    }

    n_h = 1000 if args.quick else args.hessian_samples
    idx = rng.choice(len(x_train), size=n_h, replace=False)
    pool = spec.ops[0]
    assert pool.kind == "pool"
    x_h = maxpool_forward(x_train[idx].astype(np.float64), size=pool.size, stride=pool.stride)[0]
    y_h = y_train[idx]
    full_spec, spec = spec, NetSpec(spec.name + "-after-pool", x_h.shape[1:], spec.n_classes, spec.ops[1:])
    L0, g0 = loss_and_gradient(spec, p64, x_h, y_h)
    w0 = param_vector(spec, p64)
    sl = param_slices(spec)
    wkeys = [k for k in spec.param_shapes() if k.endswith(".weight")]
    cand = np.zeros(len(w0), dtype=bool)
    for k in wkeys:
        cand[sl[k]] = True
    n_w = int(cand.sum())
    counts = {f: int(round(f * n_w)) for f in LEVELS}
    snap_at = {n_w - c for c in counts.values()}  # removals done when each level is reached

    timings = {}
    t0 = time.perf_counter()
    H = full_hessian(spec, p64, x_h, y_h, symmetrize=True)
    timings["exact_hessian"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    G = gauss_newton_matrix(spec, p64, x_h, y_h)
    timings["gauss_newton"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    h_rec = obd_diagonal(spec, p64, x_h, y_h)
    timings["obd_recursion"] = time.perf_counter() - t0
    d_rec = param_vector(spec, h_rec)
    d_exact = np.diag(H).copy()
    eig = np.linalg.eigvalsh(H)
    eig_g = np.linalg.eigvalsh(G)
    scale = float(np.mean(np.abs(d_exact)))
    alpha = args.damping * scale
    t0 = time.perf_counter()
    X = output_factors(spec, p64, x_h, y_h)
    timings["output_factors"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hinv_wood = woodbury_inverse(X, alpha=alpha, n_samples=n_h, block=10 * spec.n_classes)
    timings["woodbury_inverse"] = time.perf_counter() - t0
    del X
    hinv_gn_direct = np.linalg.inv(G + alpha * np.eye(len(G)))
    alpha2 = args.damping2 * scale
    hinv_gn2 = np.linalg.inv(G + alpha2 * np.eye(len(G)))
    t0 = time.perf_counter()
    hinv_exact, info_exact = damped_inverse(H, damping=args.damping, shift_indefinite=True)
    timings["exact_inverse"] = time.perf_counter() - t0
    out["hessian"] = {
        "samples": n_h,
        "loss": L0,
        "grad_norm": float(np.linalg.norm(g0)),
        "grad_norm_weights_rms": float(np.sqrt(np.mean(g0[cand] ** 2))),
        "eig_min": float(eig[0]),
        "eig_max": float(eig[-1]),
        "n_negative_eigs": int(np.sum(eig < 0)),
        "gn_eig_min": float(eig_g[0]),
        "gn_eig_max": float(eig_g[-1]),
        "exact_diag_equals_gn_diag_max_rel": float(
            np.max(np.abs(d_exact - np.diag(G))) / np.max(np.abs(d_exact))
        ),
        "obd_recursion_vs_exact_diag": corr(d_rec[cand], d_exact[cand]),
        "obd_recursion_over_exact_median": float(
            np.median(d_rec[cand & (d_exact > 0)] / d_exact[cand & (d_exact > 0)])
        ),
        "zero_curvature_weights": int(np.sum(cand & (d_exact == 0))),
        "exact_inverse": info_exact,
        "woodbury_alpha": alpha,
        "second_alpha": alpha2,
        "woodbury_vs_direct_max_rel": float(
            np.max(np.abs(hinv_wood - hinv_gn_direct)) / np.max(np.abs(hinv_gn_direct))
        ),
        "timings_s": timings,
    }

    # ---- pruning paths -------------------------------------------------------------------------------
    methods: dict[str, dict] = {}
    w_abs = np.where(cand, np.abs(w0), np.inf)
    sal_rec = np.where(cand, 0.5 * d_rec * w0**2, np.inf)  # OBD: s_k = h_kk w_k^2 / 2
    sal_exact = np.where(cand, 0.5 * d_exact * w0**2, np.inf)
    n_remove = n_w - min(counts.values())
    for name, score, pred in [
        ("magnitude", w_abs, np.full_like(w0, np.nan)),
        ("OBD (recursion)", sal_rec, sal_rec),
        ("OBD (exact diagonal)", sal_exact, sal_exact),
    ]:
        t0 = time.perf_counter()
        order = np.argsort(score, kind="stable")[:n_remove]
        actual, snaps, pr = sequential_path(spec, w0, order, x_h, y_h, pred, snap_at)
        methods[name] = {"actual": actual, "pred": pr, "snaps": snaps, "seconds": time.perf_counter() - t0}
    obs_runs = [
        ("OBS (exact)", hinv_exact),
        (f"OBS (outer-product, recursive, damping {args.damping:g})", hinv_wood),
        (f"OBS (outer-product, damping {args.damping2:g})", hinv_gn2),
    ]
    for name, hinv in obs_runs:
        t0 = time.perf_counter()
        actual, snaps, pr = obs_global_path(spec, w0, hinv, cand, n_remove, x_h, y_h, snap_at)
        methods[name] = {"actual": actual, "pred": pr, "snaps": snaps, "seconds": time.perf_counter() - t0}

    # Per-layer methods: every layer keeps the same fraction.
    X_in = layer_inputs(spec, p64, x_h)
    per_layer = {"magnitude (per layer)": {}, "OBS (layer-wise)": {}}
    t0 = time.perf_counter()
    lw = {
        op.name: layerwise_obs(p64[op.name + ".weight"], X_in[op.name], LEVELS, damping=0.01, layer=op.name)
        for op in spec.layers
    }
    t_lw = time.perf_counter() - t0
    for f in LEVELS:
        pm = dict(p64)
        pl = dict(p64)
        for op in spec.layers:
            key = op.name + ".weight"
            masks = lowest_score_masks(
                {key: np.abs(p64[key])}, {key: np.ones(p64[key].shape, bool)}, [key], f
            )
            pm[key] = p64[key] * masks[key]
            pl[key] = lw[op.name][f]
        per_layer["magnitude (per layer)"][f] = pm
        per_layer["OBS (layer-wise)"][f] = pl

    rows = []
    for f in LEVELS:
        row = {"kept": f}
        k = n_w - counts[f]
        for name, m in methods.items():
            w = w0 if k == 0 else m["snaps"][k]
            row[name] = test_error(full_spec, vector_to_params(spec, w), x_test, y_test)
        for name, d in per_layer.items():
            row[name] = test_error(full_spec, d[f], x_test, y_test)
        rows.append(row)
    out["test_error"] = rows
    out["methods_seconds"] = {n: m["seconds"] for n, m in methods.items()} | {"OBS (layer-wise)": t_lw}

    # ---- predicted vs actual ----------------------------------------------------------------------------
    pva = {}
    half = n_w // 2
    for name, m in methods.items():
        if name == "magnitude":
            continue
        pred, act = np.array(m["pred"]), np.array(m["actual"])
        pva[name] = {
            "all_removals": corr(pred, act),
            "first_half": corr(pred[:half], act[:half]),
            "sum_pred_first_half": float(pred[:half].sum()),
            "sum_actual_first_half": float(act[:half].sum()),
        }
    # Single deletions from the trained net: OBD deletes w_k alone; OBS deletes w_q and applies its update.
    single = {"OBD (recursion)": ([], []), "OBD (exact diagonal)": ([], []), "OBS (exact)": ([], [])}
    dq = np.diag(hinv_exact)
    for q in np.nonzero(cand)[0]:
        w = w0.copy()
        w[q] = 0.0
        a = loss_value(spec, vector_to_params(spec, w), x_h, y_h) - L0
        for name, s in (("OBD (recursion)", sal_rec), ("OBD (exact diagonal)", sal_exact)):
            single[name][0].append(s[q])
            single[name][1].append(a)
        w = w0 - (w0[q] / dq[q]) * hinv_exact[:, q]  # OBS: dw = -(w_q / [H^-1]_qq) H^-1 e_q
        w[q] = 0.0
        single["OBS (exact)"][0].append(w0[q] ** 2 / (2 * dq[q]))
        single["OBS (exact)"][1].append(loss_value(spec, vector_to_params(spec, w), x_h, y_h) - L0)
    for name, (p, a) in single.items():
        pva.setdefault(name, {})["single_deletions"] = corr(p, a)
    out["predicted_vs_actual"] = pva
    out["_paths"] = {n: (m["pred"], m["actual"]) for n, m in methods.items() if n != "magnitude"}
    out["_single"] = {n: (list(map(float, p)), list(map(float, a))) for n, (p, a) in single.items()}
    return out


def lenet300_layerwise(args) -> dict:
    data_dir = args.data_dir or default_data_dir()
    x_train, y_train = load_mnist("train", data_dir=data_dir)
    x_test, y_test = load_mnist("test", data_dir=data_dir)
    spec = get_spec("lenet-300-100")
    params32, t_train = train_net(spec, (x_train, y_train, x_test, y_test), 10_000, args.seed)
    p64 = {k: v.astype(np.float64) for k, v in params32.items()}
    dense_err = test_error(spec, p64, x_test, y_test)
    rng = np.random.default_rng(args.seed + 1)  # an independent stream for the LeNet-300-100 samples
    idx = rng.choice(len(x_train), size=args.lenet_samples, replace=False)
    X_in = layer_inputs(spec, p64, x_train[idx].astype(np.float64))
    res = {
        "dense_test_error": dense_err,
        "train_seconds": t_train,
        "samples": args.lenet_samples,
        "layers": {},
        "allocation": args.lenet_allocation,
    }
    pruned = {f: dict(p64) for f in LENET_LEVELS}
    tracemalloc.start()
    t_all = time.perf_counter()
    for op in spec.layers:
        key = op.name + ".weight"
        t0 = time.perf_counter()
        lw = layerwise_obs(
            p64[key],
            X_in[op.name],
            LENET_LEVELS,
            damping=0.01,
            allocation=args.lenet_allocation,
            layer=op.name,
        )
        res["layers"][op.name] = {"shape": list(p64[key].shape), "seconds": time.perf_counter() - t0}
        for f in LENET_LEVELS:
            pruned[f][key] = lw[f]
    res["seconds_total"] = time.perf_counter() - t_all
    res["peak_traced_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rows = []
    for f in LENET_LEVELS:
        mag = dict(p64)
        for op in spec.layers:
            key = op.name + ".weight"
            m = lowest_score_masks({key: np.abs(p64[key])}, {key: np.ones(p64[key].shape, bool)}, [key], f)
            mag[key] = p64[key] * m[key]
        rows.append(
            {
                "kept": f,
                "magnitude (per layer)": test_error(spec, mag, x_test, y_test),
                "OBS (layer-wise)": test_error(spec, pruned[f], x_test, y_test),
            }
        )
    res["test_error"] = rows
    return res


def fmt_pct(v):
    return "-" if v is None else f"{100 * v:.2f}"


def fmt_corr(x):
    return "-" if x is None else f"{fmt_r(x['pearson'])} / {fmt_r(x['spearman'])}"


def fmt_r(v):
    return "-" if v is None else f"{v:.3f}"


def markdown(res: dict) -> str:
    h = res["hessian"]
    t = res["training"]
    names = [k for k in res["test_error"][0] if k != "kept"]
    lines = [
        "# OBD / OBS study (no retraining)",
        "",
        f"Net `{res['net']}` ({res['n_params']} parameters), trained {t['iterations']} iterations with "
        f"refdns's Caffe solver in {t['seconds']:.1f} s; dense test error "
        f"{fmt_pct(t['dense_test_error'])} %. "
        f"Hessians on {h['samples']} training images, float64. Weights pruned, biases kept; global methods "
        f"rank all weights of both layers together, per-layer methods keep the same fraction in every layer. "
        f"Quick mode: {res['quick']}. Machine: {res['machine']['cpu_count']} cores, load average at start "
        f"{res['machine']['load_avg_start'][0]:.1f} (shared), BLAS threads {res['machine']['blas_threads']}.",
        "",
        "## Test error (%) vs weights kept",
        "",
        "| kept % | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for r in res["test_error"]:
        lines.append(f"| {100 * r['kept']:g} | " + " | ".join(fmt_pct(r[n]) for n in names) + " |")
    lines += [
        "",
        "## Predicted vs actual loss increase",
        "",
        "Per removal along each method's path (Pearson / Spearman), over all removals and over the first "
        "half; and for every weight deleted alone from the trained net.",
        "",
        "| method | path, all (P / S) | path, first half (P / S) | sum pred / actual, first half | "
        "single deletions (P / S) |",
        "|---|---|---|---|---|",
    ]
    for name, d in res["predicted_vs_actual"].items():
        a, f1, s = d.get("all_removals"), d.get("first_half"), d.get("single_deletions")
        c = fmt_corr
        sums = (
            f"{d['sum_pred_first_half']:.3g} / {d['sum_actual_first_half']:.3g}"
            if "sum_pred_first_half" in d
            else "-"
        )
        lines.append(f"| {name} | {c(a)} | {c(f1)} | {sums} | {c(s)} |")
    ei = h["exact_inverse"]
    lines += [
        "",
        "## The Hessian",
        "",
        f"- loss {h['loss']:.4f}, gradient norm {h['grad_norm']:.3g} (the trained point is not an exact "
        f"minimum: weight decay and SGD noise), eigenvalues {h['eig_min']:.3g} .. {h['eig_max']:.3g}, "
        f"{h['n_negative_eigs']} negative; Gauss-Newton eigenvalues {h['gn_eig_min']:.3g} .. "
        f"{h['gn_eig_max']:.3g}.",
        f"- OBS (exact) inverts H + {ei['lambda']:.3g} I (shifted to positive definite: relative damping "
        f"plus -lambda_min), condition {ei['condition']:.3g}. {h['zero_curvature_weights']} weights have "
        "exactly zero curvature (inputs that are 0 on every Hessian sample).",
        f"- exact diagonal vs Gauss-Newton diagonal: max relative difference "
        f"{h['exact_diag_equals_gn_diag_max_rel']:.2g} (a ReLU net is linear in each single weight).",
        f"- OBD recursion vs exact diagonal over the weights: Pearson "
        f"{fmt_r(h['obd_recursion_vs_exact_diag']['pearson'])}, Spearman "
        f"{fmt_r(h['obd_recursion_vs_exact_diag']['spearman'])}, median ratio "
        f"{h['obd_recursion_over_exact_median']:.3f}.",
        f"- recursive outer-product inverse (alpha = {h['woodbury_alpha']:.3g}) vs direct inverse of "
        f"G + alpha I: max relative difference {h['woodbury_vs_direct_max_rel']:.2g}; the second damping is "
        f"alpha = {h['second_alpha']:.3g}.",
        "- timings (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in h["timings_s"].items())
        + "; pruning paths: "
        + ", ".join(f"{k} {v:.1f}" for k, v in res["methods_seconds"].items())
        + ".",
    ]
    if "lenet300" in res:
        L = res["lenet300"]
        lines += [
            "",
            "## Layer-wise OBS on LeNet-300-100",
            "",
            f"Dense test error {fmt_pct(L['dense_test_error'])} % (10,000 iterations). Layer input Hessians "
            f"2 X X^T from {L['samples']} training images, damping 1 %; every layer keeps the same fraction "
            f"(allocation inside a layer: {L['allocation']}). "
            f"Layer-wise OBS for all levels: {L['seconds_total']:.1f} s ("
            + ", ".join(f"{n} {v['seconds']:.1f} s" for n, v in L["layers"].items())
            + f"), peak traced memory {L['peak_traced_mb']:.0f} MB.",
            "",
            "| kept % | magnitude (per layer) | OBS (layer-wise) |",
            "|---|---|---|",
        ]
        for r in L["test_error"]:
            lines.append(
                f"| {100 * r['kept']:g} | {fmt_pct(r['magnitude (per layer)'])} | "
                f"{fmt_pct(r['OBS (layer-wise)'])} |"
            )
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'refdns[plot]'): skipped the PNG"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    names = [k for k in res["test_error"][0] if k != "kept"]
    kept = [100 * r["kept"] for r in res["test_error"]]
    for n in names:
        a1.plot(kept, [100 * r[n] for r in res["test_error"]], marker="o", ms=3, label=n)
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.invert_xaxis()
    a1.set_xlabel("weights kept (%)")
    a1.set_ylabel("test error (%)")
    a1.set_title(f"{res['net']}: pruning without retraining")
    a1.legend(fontsize=8)
    for n, (p, a) in res["_paths"].items():
        p, a = np.asarray(p), np.asarray(a)
        ok = (p > 0) & (a > 0)
        a2.loglog(p[ok], a[ok], ".", ms=2, alpha=0.5, label=n)
    lo = 1e-9
    a2.plot([lo, 10], [lo, 10], "k--", lw=0.8)
    a2.set_xlabel("predicted loss increase per removal")
    a2.set_ylabel("actual loss increase (positive steps)")
    a2.set_title("predicted vs actual, along each path")
    a2.legend(fontsize=8, markerscale=4)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="2,000 training iterations, 1,000 Hessian samples, no LeNet-300-100 part",
    )
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--data-dir", help="folder holding mnist/ (default $REFDNS_DATA or ../shared/data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hessian-samples", type=int, default=5000)
    ap.add_argument(
        "--damping",
        type=float,
        default=1e-2,
        help="relative damping of the OBS inverses (times the mean exact Hessian diagonal)",
    )
    ap.add_argument("--damping2", type=float, default=1e-4, help="a second damping for the outer-product OBS")
    ap.add_argument("--blas-threads", type=int, default=1)
    ap.add_argument("--no-lenet300", action="store_true", help="skip layer-wise OBS on LeNet-300-100")
    ap.add_argument("--lenet-samples", type=int, default=2000)
    ap.add_argument(
        "--lenet-allocation",
        choices=["global", "row"],
        default="row",
        help="layer-wise OBS on LeNet-300-100: OBC's global per-layer selection (two passes) or the "
        "same fraction in every row (one pass)",
    )
    ap.add_argument("--out-dir", default=str(RESULTS))
    args = ap.parse_args(argv)
    with threadpool_limits(args.blas_threads):
        res = run_study(args)
        if not args.quick and not args.no_lenet300:
            res["lenet300"] = lenet300_layerwise(args)
    res["machine"]["blas_threads"] = args.blas_threads
    res["machine"]["load_avg_end"] = os.getloadavg()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(res)
    write_text(out / "obd_obs_study.md", md)
    public = {k: v for k, v in res.items() if not k.startswith("_")}
    text = json.dumps(public, indent=1, default=float)
    write_text(out / "obd_obs_study.json", text)
    if args.json:
        write_text(Path(args.json), text)
    msg = plot(res, out / "obd_obs_study.png")
    print(md)
    if msg:
        print(msg, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
