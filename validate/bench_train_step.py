"""Benchmark: one training step (forward, backward, Caffe SGD update) at batch 64, refdns vs PyTorch eager.

Both sides run in this one process on the same machine, with the same batch, architecture and solver
(momentum 0.9, weight decay 5e-4). The figure is the median over ``--reps`` timed repetitions of
``--steps`` consecutive steps each, after warm-up. PyTorch is optional (``pip install torch==2.13.0``);
without it only refdns is timed. ``--threads N`` limits both BLAS (threadpoolctl) and PyTorch to N threads.

A second table times a DNS surgery step of LeNet-300-100 at about 2 % density (where DNS spends most of its
iterations): masks keep the largest 2 % of each layer by magnitude, the thresholds (a, b) are set around that
cut, and the run sits at iteration 2,000, where each layer's mask update fires with probability
sigma = 1/3. It is timed once per path for the masked fully connected weights: sparse (masked GEMM
kernels), dense (W*T + BLAS) and auto (the density-based choice of ``refdns.effective``).

    python validate/bench_train_step.py [--quick] [--json FILE] [--threads N]

Writes validate/results/bench_train_step.md (a markdown table) and, with --json, the raw figures.
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
from threadpoolctl import threadpool_limits

from refdns.effective import SPARSE_MAX_DENSITY, SPARSE_MIN_WEIGHTS, EffectiveParams
from refdns.nets import get_spec
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


def main() -> None:
    from refdns.perf import tune_malloc

    tune_malloc()  # as the refdns CLI does: large temporaries stay on the heap (no per-step page faults)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit BLAS and PyTorch to N threads (default: each library's own setting)")
    args = ap.parse_args()
    with threadpool_limits(args.threads, user_api="blas"):
        if args.threads is not None:
            try:
                import torch
                torch.set_num_threads(args.threads)
            except ImportError:
                pass
        run(args)


def run(args) -> None:
    steps, reps = (20, 5) if args.quick else (50, 15)
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, size=(64, 1, 28, 28)) / 256).astype(np.float32)  # MNIST-like scale
    y = rng.integers(0, 10, size=64).astype(np.int64)
    targets = {"lenet-300-100": 0.8, "lenet-5": 1.0}
    rows = []
    for name, target in targets.items():
        ours = time_refdns(name, x, y, steps, reps)
        theirs = time_torch(name, x, y, steps, reps)
        row = {"net": name, "refdns_ms": 1e3 * statistics.median(ours),
               "refdns_ms_all": [1e3 * t for t in ours], "target_ratio": target}
        if theirs is not None:
            row["torch_ms"] = 1e3 * statistics.median(theirs)
            row["torch_ms_all"] = [1e3 * t for t in theirs]
            row["ratio"] = row["refdns_ms"] / row["torch_ms"]
            row["met"] = row["ratio"] <= target
        rows.append(row)
    dns_rows = []
    for path, crossover in (("sparse", 1.0), ("dense", 0.0), ("auto", None)):
        times, kept, paths = time_refdns_dns(x, y, steps, reps, 0.02, crossover)
        dns_rows.append({"path": path, "ms": 1e3 * statistics.median(times),
                         "ms_all": [1e3 * t for t in times], "kept_fraction": kept,
                         "weight_paths": {k: v for k, v in paths.items() if "weight" in k}})
    try:
        import torch
        torch_version = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_version = "not installed"
    lines = [
        "# One training step at batch 64 (median of %d reps x %d steps)" % (reps, steps),
        "",
        f"numpy {np.__version__}; torch {torch_version}; {platform.machine()}, {platform.python_version()}",
        "",
        "| net | refdns ms/step | PyTorch eager ms/step | ratio (refdns / torch) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "torch_ms" in r:
            lines.append(f"| {r['net']} | {r['refdns_ms']:.3f} | {r['torch_ms']:.3f} | {r['ratio']:.2f} | "
                         f"<= {r['target_ratio']} | {'yes' if r['met'] else 'NO'} |")
        else:
            lines.append(f"| {r['net']} | {r['refdns_ms']:.3f} | - | - | <= {r['target_ratio']} | - |")
    dense_ms = next(r["ms"] for r in dns_rows if r["path"] == "dense")
    lines += [
        "",
        "## DNS surgery step, LeNet-300-100 at about 2 % density (iteration 2,000, sigma = 1/3)",
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
    load = os.getloadavg()
    lines += ["", f"threads limit: {args.threads or 'library default'}; load average at the end "
              f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores "
              "(a shared machine is noisy)."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_train_step.md").write_text(text)
    if args.json:
        result = {"steps": steps, "reps": reps, "threads": args.threads, "rows": rows, "dns_rows": dns_rows,
                  "loadavg": load}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
