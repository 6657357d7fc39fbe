"""Benchmark: one training step (forward, backward, Caffe SGD update) at batch 64, refdns vs PyTorch eager.

Both sides run in this one process on the same machine, with the same batch, architecture and solver
(momentum 0.9, weight decay 5e-4). The figure is the median over ``--reps`` timed repetitions of
``--steps`` consecutive steps each, after warm-up. PyTorch is optional (``pip install torch==2.13.0``);
without it only refdns is timed. ``--threads N [N ...]`` runs the comparison at each thread count, limiting
BLAS (threadpoolctl), Numba and PyTorch to N threads. By default neither side gets allocator tuning
(refdns.perf's ``tune_malloc`` is not called): the figures are what a program importing either library
gets. ``--tune-malloc`` calls it first, for both sides (it is process-wide), as the refdns CLI does, and
writes its tables to ``bench_train_step_tuned.{md,json}`` instead: PyTorch's eager step allocates fresh
tensors every step, so it gains more from the setting than refdns, whose step allocates nothing.

Beside each ratio: the FLOPs of one step, counted analytically from the net's spec (the matrix products of
the forward pass, of the weight gradients and of the input gradients below the first layer: ``2 M K N``
each; element-wise work is not counted), the achieved GFLOP/s, and that as a fraction of the machine's
sgemm peak at the same thread count, measured in the same run (median over repetitions of a 2048 x 2048
float32 product through NumPy's BLAS). The load average before and after is recorded: the machine is
shared.

A second table times a DNS surgery step of LeNet-300-100 at about 2 % density (where DNS spends most of its
iterations): masks keep the largest 2 % of each layer by magnitude, the thresholds (a, b) are set around that
cut, and the run sits at iteration 2,000, where each layer's mask update fires with probability
sigma = 1/3. It is timed once per path for the masked fully connected weights: sparse (masked GEMM
kernels), dense (W*T + BLAS) and auto (the density-based choice of ``refdns.effective``).

    python validate/bench_train_step.py [--quick] [--threads N [N ...]] [--tune-malloc]

Writes validate/results/bench_train_step.md (a markdown table) and validate/results/bench_train_step.json
(the raw figures).
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
from refdns.atomic import write_text

from refdns.effective import SPARSE_MAX_DENSITY, SPARSE_MIN_WEIGHTS, EffectiveParams
from refdns.nets import get_spec
from refdns.nets.ops import OPS
from refdns.perf import limit_threads
from refdns.prune.base import PruningMethod
from refdns.prune.dns import DNS, default_config
from refdns.run import TrainConfig, new_run
from refdns.train import train_step

RESULTS = Path(__file__).resolve().parent / "results"


def time_refdns(name: str, x: np.ndarray, y: np.ndarray, steps: int, reps: int) -> list[float]:
    spec = get_spec(name)
    cfg = TrainConfig(iterations=10**9)
    state = new_run(spec, len(x), cfg, seed=0)
    method = PruningMethod()
    for _ in range(20):  # warm-up: BLAS buffers, page faults
        train_step(state, x, y, cfg, method)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(state, x, y, cfg, method)
        out.append((time.perf_counter() - t0) / steps)
    return out


def dns_state(density: float, sparse_max_density: float | None):
    """A LeNet-300-100 DNS run at ``density`` per layer, iteration 2,000, thresholds around the cut."""
    spec = get_spec("lenet-300-100")
    cfg = TrainConfig(iterations=10**9)
    state = new_run(spec, 64, cfg, seed=0)
    method = DNS(default_config("lenet-300-100"))
    state.method_state = method.init_state(spec, state.params)
    for layer in spec.layer_names:
        w, b = state.params[f"{layer}.weight"], state.params[f"{layer}.bias"]
        b[...] = np.random.default_rng(1).uniform(-0.05, 0.05, b.shape)  # trained biases are not all 0
        t = float(np.quantile(np.abs(w), 1.0 - density))
        for key in (f"{layer}.weight", f"{layer}.bias"):
            state.masks[key][...] = np.abs(state.params[key]) > t
        for k, v in {"mu": 0.0, "std": 0.0, "t": t, "a": 0.9 * t, "b": 1.1 * t}.items():
            state.method_state[f"{layer}.{k}"] = np.array(v, dtype=np.float64)
    state.iteration = 2_000
    if sparse_max_density is not None:
        state.workspace = EffectiveParams(spec, sparse_max_density=sparse_max_density, sparse_min_weights=0)
    return state, cfg, method


def time_refdns_dns(x: np.ndarray, y: np.ndarray, steps: int, reps: int, density: float,
                    sparse_max_density: float | None) -> tuple[list[float], float, dict]:
    state, cfg, method = dns_state(density, sparse_max_density)
    for _ in range(20):
        train_step(state, x, y, cfg, method)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(state, x, y, cfg, method)
        out.append((time.perf_counter() - t0) / steps)
    kept = sum(int(m.sum()) for m in state.masks.values()) / state.spec.n_params()
    return out, kept, dict(state.workspace.paths)


def time_torch(name: str, x: np.ndarray, y: np.ndarray, steps: int, reps: int) -> list[float] | None:
    try:
        import torch
    except ImportError:
        return None
    nn = torch.nn
    torch.manual_seed(0)
    if name == "lenet-300-100":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                              nn.Linear(100, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
                              nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()

    for _ in range(20):
        step()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        out.append((time.perf_counter() - t0) / steps)
    return out


def step_flops(name: str, batch: int) -> int:
    """Multiply-adds x 2 of one training step's matrix products (forward, dL/dW, dL/dx below the first layer)."""
    spec = get_spec(name)
    c, h, w = spec.input_shape
    first = True
    total = 0
    for op in spec.ops:
        if op.kind == "conv":
            f, _, kh, kw = op.w_shape
            h = (h + 2 * op.pad - kh) // op.stride + 1
            w = (w + 2 * op.pad - kw) // op.stride + 1
            per = 2 * batch * f * (c * kh * kw) * h * w
            total += per * (2 if first else 3)
            c, first = f, False
        elif op.kind == "pool":
            h = (h - op.size) // op.stride + 1
            w = (w - op.size) // op.stride + 1
        elif op.kind == "dense":
            m, d = op.w_shape
            total += 2 * batch * m * d * (2 if first else 3)
            first = False
        elif OPS[op.kind].has_params:
            raise ValueError(f"no FLOP rule for {op.kind}")
    return total


def sgemm_peak(reps: int, n: int = 2048) -> tuple[float, list[float]]:
    """Median GFLOP/s of an n x n x n float32 product through NumPy's BLAS (at the current thread limit)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates), rates


TARGETS = {"lenet-300-100": 0.6, "lenet-5": 0.6}  # refdns / PyTorch eager at equal threads (issue 17)
PEAK_FRACTION_TARGET = 0.4  # LeNet-5 GFLOP/s at least 40 % of the measured sgemm peak (issue 17)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="thread counts to compare at (default: 1)")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="call refdns.perf.tune_malloc first (both sides); results go to bench_train_step_tuned.*")
    args = ap.parse_args()
    if args.tune_malloc:
        from refdns.perf import tune_malloc

        tune_malloc()
    run(args)


def run(args) -> None:
    steps, reps = (20, 5) if args.quick else (50, 15)
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, size=(64, 1, 28, 28)) / 256).astype(np.float32)  # MNIST-like scale
    y = rng.integers(0, 10, size=64).astype(np.int64)
    load_before = os.getloadavg()
    try:
        import torch
    except ImportError:
        torch = None
    rows, peaks, dns_rows = [], {}, []
    for threads in args.threads:
        with limit_threads(threads):
            if torch is not None:
                torch.set_num_threads(threads)
            peak, peak_all = sgemm_peak(7 if args.quick else 15)
            peaks[threads] = {"gflops": peak, "gflops_all": peak_all}
            for name, target in TARGETS.items():
                ours = time_refdns(name, x, y, steps, reps)
                theirs = time_torch(name, x, y, steps, reps)
                flops = step_flops(name, len(x))
                row = {"net": name, "threads": threads, "refdns_ms": 1e3 * statistics.median(ours),
                       "refdns_ms_all": [1e3 * t for t in ours], "target_ratio": target, "flops": flops}
                row["gflops"] = flops / (row["refdns_ms"] * 1e-3) / 1e9
                row["peak_fraction"] = row["gflops"] / peak
                if theirs is not None:
                    row["torch_ms"] = 1e3 * statistics.median(theirs)
                    row["torch_ms_all"] = [1e3 * t for t in theirs]
                    row["ratio"] = row["refdns_ms"] / row["torch_ms"]
                    row["met"] = row["ratio"] <= target
                    row["torch_gflops"] = flops / (row["torch_ms"] * 1e-3) / 1e9
                rows.append(row)
            if threads == args.threads[0]:
                for path, crossover in (("sparse", 1.0), ("dense", 0.0), ("auto", None)):
                    times, kept, paths = time_refdns_dns(x, y, steps, reps, 0.02, crossover)
                    dns_rows.append({"path": path, "threads": threads, "ms": 1e3 * statistics.median(times),
                                     "ms_all": [1e3 * t for t in times], "kept_fraction": kept,
                                     "weight_paths": {k: v for k, v in paths.items() if "weight" in k}})
    load_after = os.getloadavg()
    torch_version = torch.__version__ if torch is not None else "not installed"
    lines = [
        "# One training step at batch 64 (median of %d reps x %d steps)" % (reps, steps),
        "",
        f"numpy {np.__version__}; torch {torch_version}; {platform.machine()}, {platform.python_version()}; "
        + ("glibc malloc tuned (refdns.perf.tune_malloc) for both sides." if args.tune_malloc else
           "no allocator tuning on either side."),
        "",
        "FLOPs per step counted from the spec (matrix products only); peak = median sgemm GFLOP/s "
        "(2048^3 float32, NumPy's BLAS) at the same thread count, measured in this run.",
        "",
        "| net | threads | refdns ms/step | PyTorch eager ms/step | ratio (refdns / torch) | target | met | "
        "MFLOP/step | refdns GFLOP/s | sgemm peak GFLOP/s | % of peak | PyTorch GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pk = peaks[r["threads"]]["gflops"]
        tail = (f"{r['flops'] / 1e6:.0f} | {r['gflops']:.1f} | {pk:.1f} | {100 * r['peak_fraction']:.0f} % | "
                + (f"{r['torch_gflops']:.1f} |" if "torch_ms" in r else "- |"))
        if "torch_ms" in r:
            lines.append(f"| {r['net']} | {r['threads']} | {r['refdns_ms']:.3f} | {r['torch_ms']:.3f} | "
                         f"{r['ratio']:.2f} | <= {r['target_ratio']} | {'yes' if r['met'] else 'NO'} | " + tail)
        else:
            lines.append(f"| {r['net']} | {r['threads']} | {r['refdns_ms']:.3f} | - | - | "
                         f"<= {r['target_ratio']} | - | " + tail)
    lines += ["", "Targets (issue 17):", ""]
    for r in rows:
        if "ratio" in r:
            lines.append(f"- {r['net']}, {r['threads']} thread(s): refdns / PyTorch = {r['ratio']:.2f} against "
                         f"<= {r['target_ratio']}: {'met' if r['met'] else 'missed'}")
        if r["net"] == "lenet-5":
            ok = r["peak_fraction"] >= PEAK_FRACTION_TARGET
            lines.append(f"- lenet-5, {r['threads']} thread(s): {100 * r['peak_fraction']:.0f} % of the sgemm "
                         f"peak against >= {100 * PEAK_FRACTION_TARGET:.0f} %: {'met' if ok else 'missed'}")
    dense_ms = next(r["ms"] for r in dns_rows if r["path"] == "dense")
    lines += [
        "",
        f"## DNS surgery step, LeNet-300-100 at about 2 % density (iteration 2,000, sigma = 1/3), "
        f"{args.threads[0]} thread(s)",
        "",
        f"sparse and dense force one path on every masked fc weight; auto is the training loop's choice "
        f"(SPARSE_MAX_DENSITY = {SPARSE_MAX_DENSITY}, SPARSE_MIN_WEIGHTS = {SPARSE_MIN_WEIGHTS}).",
        "",
        "| path of the masked fc weights | ms/step | vs dense path | kept fraction | weight paths |",
        "|---|---|---|---|---|",
    ]
    for r in dns_rows:
        wp = ", ".join(f"{k.split('.')[0]} {v}" for k, v in r["weight_paths"].items())
        lines.append(f"| {r['path']} | {r['ms']:.3f} | {r['ms'] / dense_ms:.2f} | {r['kept_fraction']:.4f} "
                     f"| {wp} |")
    lines += ["", f"load average (1/5/15 min) before {load_before[0]:.1f} / {load_before[1]:.1f} / "
              f"{load_before[2]:.1f}, after {load_after[0]:.1f} / {load_after[1]:.1f} / {load_after[2]:.1f} "
              f"on {os.cpu_count()} cores (a shared machine is noisy; both sides share the noise)."]
    text = "\n".join(lines) + "\n"
    print(text)
    result = {"steps": steps, "reps": reps, "threads": args.threads, "rows": rows, "dns_rows": dns_rows,
              "sgemm_peak": {str(k): v for k, v in peaks.items()}, "loadavg_before": load_before,
              "loadavg_after": load_after, "numpy": np.__version__, "torch": torch_version}
    RESULTS.mkdir(exist_ok=True)
    stem = "bench_train_step_tuned" if args.tune_malloc else "bench_train_step"
    result["tune_malloc"] = bool(args.tune_malloc)
    write_text(RESULTS / f"{stem}.md", text)
    write_text(RESULTS / f"{stem}.json", json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
