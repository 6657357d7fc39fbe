"""Benchmark: the layer-wise OBS surgeon on a small Hessian batch, dense D x D downdates against the low-rank
paths (``refdns.kernels.obs_lowrank``), on LeNet-5's layers as its OBS golden prunes them.

The golden prunes LeNet-5 at its golden start (Caffe xavier from seed 0, rounded to the golden grid) with
the layer-wise Hessian ``H = 2 X^T X`` of one training image: ip1 has rank 1 over 800 inputs, conv2 rank 64
over 500. Both surgeons run the same removals (OBC's global allocation, kept fraction 0.5) on the same rows:

* dense: ``layerwise_obs`` with X padded by D zero rows (H unchanged: the same problem; the padding only
  stops the low-rank branch), i.e. per row two passes of D removals, each a D x D downdate;
* low-rank: ``layerwise_obs`` on X itself: the kernel's paths on the factor of H, closed-form levels.

ip1's dense surgeon takes minutes for 500 rows, so both run on its first ``--rows`` rows (on the dense path a
row's cost does not depend on the others). The weights of both are compared (the masks must be equal). Then
the kernel against its NumPy twin on all of ip1's paths, and the whole LeNet-5 OBS golden (write_golden).
Medians over ``--reps`` repetitions; the machine's load is recorded (it is shared).

    python validate/bench_obs_lowrank.py --data-dir DIR [--quick] [--reps N] [--rows N]

Writes validate/results/bench_obs_lowrank.{md,json}.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from refdns.kernels.obs_lowrank import obs_lowrank_paths, obs_lowrank_paths_ref
from threadpoolctl import threadpool_limits

from refdns.datasets import load_mnist
from refdns.golden import GOLDEN_OBS, INIT_GRID, write_golden
from refdns.nets import get_spec
from refdns.prune.obs import layer_inputs, layerwise_obs
from refdns.run import TrainConfig, new_run

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn, reps: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="folder holding mnist/ (default $REFDNS_DATA, then the user cache)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=20, help="ip1 rows for the dense surgeon")
    ap.add_argument("--quick", action="store_true", help="1 repetition, 5 ip1 rows")
    args = ap.parse_args(argv)
    reps, rows = (1, 5) if args.quick else (args.reps, args.rows)
    x, y = load_mnist("train", data_dir=args.data_dir, download=False)
    spec = get_spec("lenet-5")
    state = new_run(spec, len(x), TrainConfig(iterations=1, batch_size=8), seed=0)
    p64 = {k: np.round(w / INIT_GRID) * INIT_GRID for k, w in state.params.items()}
    X = layer_inputs(spec, {k: v.astype(np.float64) for k, v in p64.items()}, x[:1])
    damping, f = GOLDEN_OBS["damping"], GOLDEN_OBS["kept_fraction"]
    load_before = os.getloadavg()
    results = []
    with threadpool_limits(1):
        for layer, n_rows in (("conv2", None), ("ip1", rows)):
            W = p64[f"{layer}.weight"].reshape(p64[f"{layer}.weight"].shape[0], -1)[:n_rows]
            Xl = X[layer]
            pad = np.vstack([Xl, np.zeros((W.shape[1], W.shape[1]))])
            dense_fn = functools.partial(layerwise_obs, W, pad, [f], damping=damping)
            t_dense, dense = median_seconds(dense_fn, reps)
            t_low, low = median_seconds(functools.partial(layerwise_obs, W, Xl, [f], damping=damping), reps)
            dense, low = dense[f], low[f]
            results.append({
                "layer": layer, "rows": len(W), "inputs": W.shape[1], "hessian_rank": int(min(Xl.shape)),
                "dense_s": t_dense, "lowrank_s": t_low, "speedup": t_dense / t_low,
                "same_masks": bool(np.array_equal(dense != 0, low != 0)),
                "max_abs_diff": float(np.max(np.abs(dense - low))),
            })
        W = p64["ip1.weight"].astype(np.float64)
        t_all, _ = median_seconds(functools.partial(layerwise_obs, W, X["ip1"], [f], damping=damping), reps)
        Z = np.sqrt(2.0) * X["ip1"]
        lam = damping * float(np.mean(np.sum(Z * Z, axis=0)))
        t_kernel, (_, o1) = median_seconds(functools.partial(obs_lowrank_paths, W, Z, lam, 800), reps)
        t_twin, (_, o2) = median_seconds(functools.partial(obs_lowrank_paths_ref, W, Z, lam, 800), reps)
        per_row_dense = next(r["dense_s"] for r in results if r["layer"] == "ip1") / rows
        with tempfile.TemporaryDirectory() as tmp:
            t_golden, _ = median_seconds(
                lambda: write_golden(Path(tmp) / "g.h5", spec, "obs", 3, x, y), reps)
    load_after = os.getloadavg()
    out = {
        "results": results,
        "ip1_all_500_rows_lowrank_s": t_all,
        "ip1_paths_kernel_s": t_kernel, "ip1_paths_numpy_twin_s": t_twin,
        "ip1_paths_same_order": bool(np.array_equal(o1, o2)),
        "ip1_all_500_rows_dense_estimate_s": per_row_dense * 500,
        "lenet5_obs_golden_s": t_golden,
        "reps": reps, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": load_after, "blas_threads": 1,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_obs_lowrank.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        "# Layer-wise OBS on a one-image Hessian batch: dense downdates vs the low-rank paths",
        "",
        f"`python validate/bench_obs_lowrank.py` - LeNet-5 at its OBS golden's start, kept fraction {f}, "
        f"damping {damping}; medians of {reps} repetition(s), 1 BLAS thread, {os.cpu_count()} CPUs, load "
        f"average {load_before[0]:.1f} before / {load_after[0]:.1f} after (a shared machine: the ratios, "
        "measured in the same run, matter more than the seconds).",
        "",
        "| layer | rows | inputs | rank of H | dense (s) | low-rank (s) | speed-up | same masks "
        "| max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        lines.append(f"| {r['layer']} | {r['rows']} | {r['inputs']} | {r['hessian_rank']} | "
                     f"{r['dense_s']:.2f} | {r['lowrank_s']:.3f} | {r['speedup']:.0f}x | "
                     f"{'yes' if r['same_masks'] else 'NO'} | {r['max_abs_diff']:.1e} |")
    lines += [
        "",
        f"ip1, all 500 rows: low-rank {t_all:.1f} s; dense, extrapolated from {rows} rows, "
        f"{per_row_dense * 500:.0f} s.",
        f"ip1's 500 full paths (800 removals each): kernel {t_kernel:.2f} s, NumPy twin {t_twin:.2f} s "
        f"({t_twin / t_kernel:.1f}x), same removals: {'yes' if np.array_equal(o1, o2) else 'NO'}.",
        f"The whole LeNet-5 OBS golden (3 steps, `write_golden`): {t_golden:.1f} s.",
    ]
    (RESULTS / "bench_obs_lowrank.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
