"""Benchmark: how large a net's exact Hessian refdns builds on this machine (memory and time), and what the
OBS inverse of it costs.

Nets: 784-H-10 ReLU MLPs on full-size MNIST inputs (n = 795 H + 10 parameters) and one small conv net
(conv 4@5x5 -> 2x2 max-pool -> dense 10, n = 5,874), softmax cross-entropy on ``--samples`` training images,
float64. For each: the median time of one Hessian-vector product (R-operator), the time to build the full
n x n Hessian (n products), its memory (8 n^2 bytes), and for n up to ``--max-invert`` the time of the
damped inverse OBS needs (``numpy.linalg.eigh``, which also yields the smallest eigenvalue the damping
check needs). From the measured scaling (build ~ n^2, inverse ~ n^3) the script states the largest n whose
exact Hessian and inverse fit in the available memory, and how long they would take.

    python validate/hessian_scale.py [--quick] [--json FILE] [--data-dir DIR]

``--quick`` measures the two smallest MLPs only (about a minute); the full run took ~25 minutes on a loaded
2-core machine, 15 of them the conv net.

Writes validate/results/hessian_scale.md (and, with --json, the raw figures).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from refdns.datasets import load_mnist
from refdns.hessian import full_hessian, hessian_nbytes, hvp
from refdns.nets.sequential import NetSpec, Op, init_params
from refdns.prune.obs import damped_inverse

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "validate" / "results"


def mlp(h: int) -> NetSpec:
    return NetSpec(
        f"mlp-784-{h}-10",
        (1, 28, 28),
        10,
        (
            Op("flatten"),
            Op("dense", "ip1", w_shape=(h, 784), b_shape=(h,)),
            Op("relu"),
            Op("dense", "ip2", w_shape=(10, h), b_shape=(10,)),
        ),
    )


CONV = NetSpec(
    "conv4-pool-10",
    (1, 28, 28),
    10,
    (
        Op("conv", "conv1", w_shape=(4, 1, 5, 5), b_shape=(4,)),
        Op("pool", size=2, stride=2),
        Op("relu"),
        Op("flatten"),
        Op("dense", "ip1", w_shape=(10, 576), b_shape=(10,)),
    ),
)


def available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(spec, x, y, rng, reps, max_invert, build):
    p = init_params(spec, rng=rng, dtype=np.float64)
    n = spec.n_params()
    v = rng.standard_normal(n)
    hvp(spec, p, x, y, v)  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        hvp(spec, p, x, y, v)
        ts.append(time.perf_counter() - t0)
    row = {"net": spec.name, "n": n, "hessian_mb": hessian_nbytes(n) / 2**20, "hvp_s": statistics.median(ts)}
    if build:
        t0 = time.perf_counter()
        H = full_hessian(spec, p, x, y)
        row["build_s"] = time.perf_counter() - t0
        row["asymmetry"] = float(np.max(np.abs(H - H.T)) / np.max(np.abs(H)))
        if n <= max_invert:
            t0 = time.perf_counter()
            _, info = damped_inverse(H, damping=1e-2, shift_indefinite=True)
            row["inverse_s"] = time.perf_counter() - t0
            row["eig_min"] = info["eig_min"]
        del H
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--data-dir")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-invert", type=int, default=3500)
    ap.add_argument("--blas-threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-json", help="re-render the table and limits from a saved --json run")
    args = ap.parse_args(argv)
    if args.from_json:
        return render(json.loads(Path(args.from_json).read_text()), args.json)
    data_dir = args.data_dir or os.environ.get("REFDNS_DATA") or str(REPO.parent / "shared" / "data")
    x, y = load_mnist("train", data_dir=data_dir)
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(x), size=args.samples, replace=False)
    x, y = x[idx].astype(np.float64), y[idx]
    hs = [2, 4] if args.quick else [2, 4, 8, 16]
    # The conv net's Hv is ~40x an MLP's (max-pool routing over 1000 x 4 x 24 x 24 maps): full mode only.
    specs = [mlp(h) for h in hs] + ([] if args.quick else [CONV])
    rows = []
    load0 = os.getloadavg()
    with threadpool_limits(args.blas_threads):
        for spec in specs:
            rows.append(measure(spec, x, y, rng, args.reps, args.max_invert, build=True))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress: one line per net
    res = {
        "samples": args.samples,
        "blas_threads": args.blas_threads,
        "rows": rows,
        "load_avg_start": load0,
        "load_avg_end": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "reps": args.reps,
    }
    return render(res, args.json)


def render(res: dict, json_path: str | None) -> int:
    """Scaling limits and the markdown table from measured rows (``--from-json`` re-renders a saved run)."""
    rows = res["rows"]
    load0 = res["load_avg_start"]
    # Build time: a power law a * n^b fitted (log-log) to the MLP rows; the inverse: n^3 (eigh) with the
    # constant of the largest inverted matrix.
    mlps = [r for r in rows if r["net"].startswith("mlp")]
    ns = np.array([r["n"] for r in mlps], dtype=float)
    b, log_a = np.polyfit(np.log(ns), np.log([r["build_s"] for r in mlps]), 1)
    inv = max((r for r in rows if "inverse_s" in r), key=lambda r: r["n"])
    c_inv = inv["inverse_s"] / inv["n"] ** 3
    avail = available_bytes()
    # H, its eigenvectors and the inverse: three n x n float64 matrices during OBS.
    n_mem = int(np.sqrt(avail / (3 * 8)))
    limits = {
        "available_mb": avail / 2**20,
        "n_max_memory": n_mem,
        "build_exponent": float(b),
        "build_s_at_n_max": float(np.exp(log_a) * n_mem**b),
        "inverse_s_at_n_max": c_inv * n_mem**3,
        "n_max_build_in_1h": int((3600 / np.exp(log_a)) ** (1 / b)),
        "n_max_inverse_in_1h": int((3600 / c_inv) ** (1 / 3)),
    }
    res["limits"] = limits
    res["largest_built_n"] = int(ns.max())
    args = argparse.Namespace(
        samples=res["samples"], blas_threads=res["blas_threads"], reps=res.get("reps", 5)
    )
    lines = [
        "# Exact Hessian scale",
        "",
        f"{args.samples} MNIST training images, float64, softmax CE, BLAS threads {args.blas_threads}; "
        f"{os.cpu_count()} cores shared with other jobs (load average {load0[0]:.1f} at start, "
        f"{res['load_avg_end'][0]:.1f} at end). Median of {args.reps} Hessian-vector products. Build time "
        f"fitted as n^{limits['build_exponent']:.2f} over the MLPs; the inverse extrapolated as n^3.",
        "",
        "| net | n params | H memory (MB) | one Hv (ms) | full H (s) | max asymmetry "
        "| OBS inverse, eigh (s) | lambda_min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['n']} | {r['hessian_mb']:.0f} | {1e3 * r['hvp_s']:.1f} | "
            f"{r.get('build_s', float('nan')):.1f} | {r.get('asymmetry', float('nan')):.1e} | "
            + (f"{r['inverse_s']:.1f} | {r['eig_min']:.3g} |" if "inverse_s" in r else "- | - |")
        )
    lines += [
        "",
        f"Largest exact Hessian built here: n = {res['largest_built_n']}. Available memory "
        f"{limits['available_mb'] / 1024:.1f} GB holds three n x n float64 matrices (H, eigenvectors, "
        f"inverse) up to n = {n_mem}; extrapolated from the measured constants, building that Hessian would "
        f"take {limits['build_s_at_n_max'] / 3600:.1f} h and its inverse "
        f"{limits['inverse_s_at_n_max'] / 3600:.1f} h. "
        f"Within one hour each (memory permitting): build up to n = {limits['n_max_build_in_1h']}, "
        f"invert up to n = {limits['n_max_inverse_in_1h']}. LeNet-300-100 (n = 266,610) would need "
        f"{hessian_nbytes(266_610) / 2**30:.0f} GB per matrix: out of reach, hence layer-wise OBS.",
    ]
    md = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS / "hessian_scale.md.tmp"
    tmp.write_text(md)
    os.replace(tmp, RESULTS / "hessian_scale.md")
    if json_path:
        tmpj = Path(json_path + ".tmp")
        tmpj.write_text(json.dumps(res, indent=1))
        os.replace(tmpj, json_path)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
