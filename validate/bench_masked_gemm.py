"""Benchmark: masked GEMM (sparse path) against W*T + BLAS (dense path) across densities; the crossover.

For each fully connected shape of LeNet-300-100 and LeNet-5 at batch 64, and each density, times what one
training step needs from a masked dense layer besides dL/dW (which is dense on both paths):

* sparse path: ``Y = X (W*T)^T`` and ``dX = dY (W*T)`` with the Numba kernels of
  ``refdns.kernels.masked_gemm``, values read from the dense W through the mask's CSR structure;
  also the variant that gathers the values into a CSR data array first (every step, since DNS changes W);
* dense path: ``np.multiply(W, T, out=buf)`` into a preallocated buffer, then the two BLAS products.

Medians over ``--reps`` repetitions of ``--inner`` calls each. The crossover of a shape is the density where
the sparse path stops being faster (linear interpolation between the measured densities). The masks are
uniformly random (DNS's surviving connections are spread out too); the CSR structure is rebuilt only when a
mask changes, so its cost is reported separately.

    python validate/bench_masked_gemm.py [--quick] [--json FILE] [--blas-threads N]

Writes validate/results/bench_masked_gemm.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from refdns.kernels.masked_gemm import csr_gather, mask_csr, masked_matmul, masked_matmul_t
from threadpoolctl import threadpool_info, threadpool_limits

from refdns.effective import SPARSE_MAX_DENSITY, SPARSE_MIN_WEIGHTS

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {  # (M, D) of each fully connected layer, Caffe layout (out, in)
    "lenet-300-100 ip1": (300, 784),
    "lenet-300-100 ip2": (100, 300),
    "lenet-300-100 ip3": (10, 100),
    "lenet-5 ip1": (500, 800),
    "lenet-5 ip2": (10, 500),
}
DENSITIES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
BATCH = 64


def median_seconds(fn, reps: int, inner: int) -> float:
    fn()  # warm-up (and JIT compilation on the first call)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def bench_shape(m: int, d: int, densities, reps: int, inner: int, rng: np.random.Generator) -> list[dict]:
    # The closures below are timed inside the loop iteration that defines them (ruff B023 does not apply).
    x = rng.random((BATCH, d), dtype=np.float32)
    dy = rng.standard_normal((BATCH, m), dtype=np.float32)
    w = rng.standard_normal((m, d), dtype=np.float32)
    buf = np.empty_like(w)
    rows = []
    for density in densities:
        mask = rng.random((m, d)) < density
        indptr, indices = mask_csr(mask)
        data = np.empty(indices.shape[0], dtype=w.dtype)

        def sparse():
            masked_matmul_t(x, w, indptr, indices)
            masked_matmul(dy, w, indptr, indices)

        def gathered():
            csr_gather(w, indptr, indices, out=data)
            masked_matmul_t(x, w, indptr, indices, data=data)
            masked_matmul(dy, w, indptr, indices, data=data)

        def dense():
            np.multiply(w, mask, out=buf)
            x @ buf.T  # noqa: B018 -- timed for its cost
            dy @ buf  # noqa: B018

        def rebuild():
            mask_csr(mask)

        row = {"density": density, "nnz": int(indices.shape[0]),
               "sparse_us": 1e6 * median_seconds(sparse, reps, inner),
               "gathered_us": 1e6 * median_seconds(gathered, reps, inner),
               "dense_us": 1e6 * median_seconds(dense, reps, inner),
               "rebuild_us": 1e6 * median_seconds(rebuild, max(3, reps // 3), max(1, inner // 4))}
        row["ratio"] = row["sparse_us"] / row["dense_us"]
        rows.append(row)
    return rows


def crossover(rows: list[dict]) -> float | None:
    """Density where sparse / dense crosses 1 (interpolated); None if the sparse path never wins."""
    if rows[0]["ratio"] >= 1.0:
        return None
    for lo, hi in zip(rows, rows[1:], strict=False):
        if hi["ratio"] >= 1.0:
            f = (1.0 - lo["ratio"]) / (hi["ratio"] - lo["ratio"])
            return lo["density"] + f * (hi["density"] - lo["density"])
    return rows[-1]["density"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer densities and repetitions (a smoke run)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="limit BLAS to N threads (default: the library's own setting)")
    args = ap.parse_args()
    reps, inner = (5, 10) if args.quick else (15, 30)
    densities = (0.01, 0.05, 0.1, 0.2, 0.5) if args.quick else DENSITIES
    rng = np.random.default_rng(0)
    out = {}
    with threadpool_limits(args.blas_threads, user_api="blas"):
        blas = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)" for i in threadpool_info()
                if i["user_api"] == "blas"]
        for name, (m, d) in SHAPES.items():
            rows = bench_shape(m, d, densities, reps, inner, rng)
            out[name] = {"shape": [m, d], "rows": rows, "crossover": crossover(rows)}
    load = os.getloadavg()
    lines = [
        f"# Masked GEMM vs W*T + BLAS at batch {BATCH}: forward Y = X (W*T)^T plus dX = dY (W*T)",
        "",
        f"Median of {reps} reps x {inner} calls; times in microseconds per step (both products). "
        f"BLAS: {', '.join(blas)}; numpy {np.__version__}; {platform.machine()}; "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores.",
        "",
        "sparse = Numba kernels reading W through the mask's CSR structure; gathered = the same after "
        "gathering the values into a CSR data array (every step); dense = np.multiply into a preallocated "
        "buffer + BLAS; rebuild = mask_csr (only when a mask changes).",
        "",
    ]
    for name, r in out.items():
        c = r["crossover"]
        lines += [f"## {name} {tuple(r['shape'])}: crossover density "
                  + (f"{c:.3f}" if c is not None else "none (sparse never faster)"), "",
                  "| density | nnz | sparse us | gathered us | dense us | sparse / dense | rebuild us |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['density']:.3f} | {row['nnz']} | {row['sparse_us']:.1f} "
                         f"| {row['gathered_us']:.1f} | {row['dense_us']:.1f} | {row['ratio']:.2f} "
                         f"| {row['rebuild_us']:.1f} |")
        lines.append("")
    crossovers = [r["crossover"] for r in out.values() if r["crossover"] is not None]
    lines += [f"Smallest measured crossover: {min(crossovers):.3f}. " if crossovers else "",
              f"The training loop uses refdns.effective.SPARSE_MAX_DENSITY = {SPARSE_MAX_DENSITY} for fully "
              f"connected weights of at least SPARSE_MIN_WEIGHTS = {SPARSE_MIN_WEIGHTS} entries.", ""]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_masked_gemm.md").write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"reps": reps, "inner": inner, "batch": BATCH, "blas": blas,
                                               "loadavg": load, "shapes": out,
                                               "SPARSE_MAX_DENSITY": SPARSE_MAX_DENSITY,
                                               "SPARSE_MIN_WEIGHTS": SPARSE_MIN_WEIGHTS}, indent=2) + "\n")


if __name__ == "__main__":
    main()
