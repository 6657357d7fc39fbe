"""Benchmark: one training step (forward, backward, Caffe SGD update) at batch 64, refdns vs PyTorch eager.

Both sides run in this one process on the same machine, with the same batch, architecture and solver
(momentum 0.9, weight decay 5e-4). The figure is the median over ``--reps`` timed repetitions of
``--steps`` consecutive steps each, after warm-up. PyTorch is optional (``pip install torch==2.13.0``);
without it only refdns is timed.

    python validate/bench_train_step.py [--quick] [--json FILE]

Writes validate/results/bench_train_step.md (a markdown table) and, with --json, the raw figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from refdns.nets import get_spec
from refdns.train import TrainConfig, new_run, train_step
from refdns.prune.base import PruningMethod

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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
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
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_train_step.md").write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": steps, "reps": reps, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
