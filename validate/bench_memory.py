"""Benchmark: peak resident memory of ``refdns reproduce`` for each net (issue 17: under 1 GB).

Each run is the real command in a child process (``python -m refdns reproduce --net NET``, DNS, dense phase
then pruning phase, both shortened with ``--dense-iterations`` / ``--iterations``), and its peak resident
set is the kernel's ``ru_maxrss`` for that child (``os.wait4``). Shortening does not hide the peak: the
peak is reached early, because it is set by what a run holds from its first test evaluation on (the
interpreter with NumPy and the Numba kernels, the training and test sets as float32, one test batch's
activation buffers, the run's training buffers), not by anything that grows with the iterations. The
script checks that claim by running each net at two lengths (``--iterations`` and five times that) and
reporting both peaks and their ratio.

For scale it also measures the peak of a child that only imports the CLI, and of one that imports it and
loads MNIST.

    python validate/bench_memory.py [--quick] [--iterations N] [--data-dir DIR]

Writes validate/results/bench_memory.md and validate/results/bench_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from refdns.atomic import write_text

RESULTS = Path(__file__).resolve().parent / "results"
NETS = ("lenet-300-100", "lenet-5")
GOAL_MB = 1024.0


def child_peak(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak resident MB, wall seconds) of one child process; raises if it fails."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {p.returncode}:\n{err[-2000:]}")
    return usage.ru_maxrss / 1024.0, time.perf_counter() - t0  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one length only (no check that the peak is early)")
    ap.add_argument("--iterations", type=int, default=20,
                    help="iterations of each phase in the short run (the long run uses 5x)")
    ap.add_argument("--data-dir", default=None, help="folder with MNIST (default: as the CLI finds it)")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("bench_memory: ru_maxrss of a child is read in KiB, as on Linux only")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    data_args = ["--data-dir", args.data_dir] if args.data_dir else []
    lengths = (args.iterations,) if args.quick else (args.iterations, 5 * args.iterations)
    load_before = os.getloadavg()
    base_import, _ = child_peak([sys.executable, "-c", "import refdns.cli"], env)
    load_data = ("import sys; from refdns.datasets import load_mnist; d = sys.argv[1] or None; "
                 "load_mnist('train', data_dir=d); load_mnist('test', data_dir=d)")
    base_data, _ = child_peak([sys.executable, "-c", load_data, args.data_dir or ""], env)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in NETS:
            for n in lengths:
                cmd = [sys.executable, "-m", "refdns", "reproduce", "--net", net, "--method", "dns",
                       "--dense-iterations", str(n), "--iterations", str(n), "--test-interval", "0",
                       "--out-dir", str(Path(tmp) / f"{net}-{n}"), "--no-progress", "--force", *data_args]
                mb, secs = child_peak(cmd, env)
                rows.append({"net": net, "iterations_per_phase": n, "peak_rss_mb": mb, "seconds": secs,
                             "under_goal": mb < GOAL_MB})
    load_after = os.getloadavg()
    lines = [
        "# Peak resident memory of `refdns reproduce` (DNS, dense + pruning phase)",
        "",
        f"{platform.machine()}, Python {platform.python_version()}; OPENBLAS_NUM_THREADS=1; peak = the child's "
        "ru_maxrss.",
        "",
        f"For scale: importing the CLI peaks at {base_import:.0f} MB; importing it and loading MNIST (train + "
        f"test, float32) at {base_data:.0f} MB.",
        "",
        "| net | iterations per phase | peak RSS MB | wall s | goal < 1024 MB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['net']} | {r['iterations_per_phase']} | {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} | "
                     f"{'met' if r['under_goal'] else 'MISSED'} |")
    if len(lengths) == 2:
        lines += ["", "Peak reached early (long run / short run):", ""]
        for net in NETS:
            a, b = (r["peak_rss_mb"] for r in rows if r["net"] == net)
            lines.append(f"- {net}: {b:.0f} / {a:.0f} MB = {b / a:.3f} ({lengths[1]} vs {lengths[0]} iterations "
                         "per phase)")
    lines += ["", f"load average before {load_before[0]:.1f} / {load_before[1]:.1f} / {load_before[2]:.1f}, "
              f"after {load_after[0]:.1f} / {load_after[1]:.1f} / {load_after[2]:.1f} on {os.cpu_count()} cores."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / "bench_memory.md", text)
    write_text(RESULTS / "bench_memory.json", json.dumps(
        {"rows": rows, "import_cli_mb": base_import, "import_and_load_mnist_mb": base_data,
         "lengths": list(lengths), "goal_mb": GOAL_MB, "loadavg_before": load_before,
         "loadavg_after": load_after}, indent=2) + "\n")


if __name__ == "__main__":
    main()
