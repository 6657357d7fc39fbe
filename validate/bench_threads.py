"""Benchmark: refdns's default thread setting against every explicit one, on a quiet and on a loaded machine.

What a user runs, run as a user runs it: each measurement is a fresh ``refdns`` process (the console script
of this checkout, ``python -m refdns``) with a clean environment (no OPENBLAS/OMP/MKL/NUMBA thread
variables), timed by the figure the command itself reports in ``--json`` (``seconds``: the training loop,
or the inference pass, without process start-up). Workloads:

- ``train lenet-300-100`` and ``train lenet-5``: dense training, short iteration counts;
- ``infer lenet-5``: dense inference (im2col + BLAS) of the net trained above, batch 1,000;
- ``infer --sparse lenet-300-100``: the sparse kernels on a checkpoint pruned here to the DNS paper's
  densities (one-shot magnitude pruning of the net trained above; timing depends on the density, not the
  accuracy).

Settings: ``default`` (no flag, no variable), ``--threads 1``, ``--threads 2``, and
``OPENBLAS_NUM_THREADS=2`` without ``--threads`` (the way a user might try to override it). Each
(workload, setting) pair runs ``--reps`` times, interleaved round-robin so that a change in the machine's
load hits every setting alike; the figure is the median.

Conditions: ``quiet`` (as quiet as the machine is: its load average is recorded) and ``loaded`` (this script
starts a second CPU-bound process, a Python busy loop, runs the same measurements, then stops it).

Target (issue 17): the default within 10% of the best setting found, in every workload and condition:
``default / best <= 1.10``.

    python validate/bench_threads.py [--quick] [--reps N] [--data-dir DIR] [--json FILE] [--out FILE]

Writes validate/results/bench_threads.md and, with --json (default validate/results/bench_threads.json), the
raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
SETTINGS = {"default": ([], {}), "--threads 1": (["--threads", "1"], {}), "--threads 2": (["--threads", "2"], {}),
            "OPENBLAS_NUM_THREADS=2": ([], {"OPENBLAS_NUM_THREADS": "2"})}
DNS_DENSITIES = {"ip1": 0.018, "ip2": 0.018, "ip3": 0.055}  # Guo et al. 2016, Table 1
TARGET = 1.10
#: Labels that run exactly the default configuration (--threads 1; the variable is overridden by it).
SAME_AS_DEFAULT = ("default", "--threads 1", "OPENBLAS_NUM_THREADS=2")


def clean_env(data_dir: str | None, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    if data_dir:
        env["REFDNS_DATA"] = data_dir
    return env | extra


def refdns(argv: list[str], env: dict[str, str], json_path: Path) -> dict:
    """One ``refdns`` process; its ``--json`` figures plus the process wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "refdns", *argv, "--json", str(json_path), "--force"],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"refdns {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    out = json.loads(json_path.read_text())
    return {"seconds": float(out["seconds"]), "process_seconds": wall}


def make_inputs(folder: Path, data_dir: str | None, iters: dict[str, int]) -> dict[str, list[str]]:
    """The workloads' command lines; trains the dense nets the inference workloads read, and prunes one."""
    import numpy as np

    from refdns import checkpoint
    from refdns.nets import weight_key

    cmds = {}
    for net in ("lenet-300-100", "lenet-5"):
        out = folder / f"{net}.h5"
        cmds[f"train {net}"] = ["train", "--net", net, "--iterations", str(iters[net]), "--test-interval", "0",
                                "--no-progress", "--out", str(out)]
    env = clean_env(data_dir, {})
    for net in ("lenet-300-100", "lenet-5"):  # the checkpoints the inference workloads read (default settings)
        refdns(cmds[f"train {net}"], env, folder / "make.json")
    # One-shot magnitude pruning per layer to DNS's densities: the kept weights are the largest |w|.
    ck = checkpoint.load(folder / "lenet-300-100.h5")
    st = ck.state
    for name, density in DNS_DENSITIES.items():
        w = np.abs(st.params[weight_key(name)])
        k = max(1, int(round(density * w.size)))
        thresh = np.partition(w.ravel(), w.size - k)[w.size - k]
        st.masks[weight_key(name)][...] = w >= thresh
    sparse = folder / "lenet-300-100-pruned.h5"
    checkpoint.save(sparse, st, method="magnitude")
    cmds["infer lenet-5"] = ["infer", str(folder / "lenet-5.h5")]
    cmds["infer --sparse lenet-300-100"] = ["infer", str(sparse), "--sparse"]
    return cmds


def measure(cmds: dict[str, list[str]], data_dir: str | None, reps: int, folder: Path) -> dict:
    runs: dict[str, dict[str, list[dict]]] = {w: {s: [] for s in SETTINGS} for w in cmds}
    for rep in range(reps):
        for work, argv in cmds.items():
            for setting, (flags, extra) in SETTINGS.items():
                r = refdns(argv + flags, clean_env(data_dir, extra), folder / "m.json")
                runs[work][setting].append(r)
                print(f"  rep {rep + 1}/{reps} {work:<30} {setting:<24} {r['seconds']:8.3f} s", file=sys.stderr,
                      flush=True)
    table = {}
    for work, by_setting in runs.items():
        med = {s: statistics.median(r["seconds"] for r in rs) for s, rs in by_setting.items()}
        best = min(med, key=med.get)
        table[work] = {"median_s": med, "all_s": {s: [r["seconds"] for r in rs] for s, rs in by_setting.items()},
                       "process_s": {s: statistics.median(r["process_seconds"] for r in rs)
                                     for s, rs in by_setting.items()},
                       "best": best, "default_over_best": med["default"] / med[best],
                       "met": med["default"] / med[best] <= TARGET}
    return table


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_condition(name: str, cmds, data_dir, reps, folder) -> dict:
    hog = None
    if name == "loaded":
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(2.0)  # let it take its core
    try:
        before = load()
        table = measure(cmds, data_dir, reps, folder)
        after = load()
    finally:
        if hog is not None:
            hog.terminate()
            hog.wait()
    return {"condition": name, "load_before": before, "load_after": after, "workloads": table}


def markdown(meta: dict, conditions: list[dict]) -> str:
    names = list(SETTINGS)
    lines = [f"# Thread settings: the default against each explicit one ({'quick' if meta['quick'] else 'full'} run)",
             "", f"{meta['machine']}, {meta['cores']} cores; python {meta['python']}; {meta['reps']} repetitions per "
             f"figure, interleaved; training iterations: "
             f"{', '.join(f'{k} {v}' for k, v in meta['iterations'].items())}. Each figure is the median of the seconds "
             "`refdns` itself reports with --json (training loop / inference pass, no start-up), one fresh "
             "process per run, thread variables removed from the environment. `loaded`: this script ran a "
             "second CPU-bound process (a Python busy loop) beside the measurements.", "",
             "Target: default / best <= 1.10 in every row.", ""]
    for c in conditions:
        lines += [f"## {c['condition']} (load average before / after: {c['load_before']} / {c['load_after']})", "",
                  "| workload | " + " | ".join(names) + " | best | default / best | met | default / --threads 2 "
                  "| same-config spread |",
                  "|---|" + "---:|" * len(names) + "---|---:|---|---:|---:|"]
        for work, r in c["workloads"].items():
            cells = [f"{r['median_s'][s]:.3f}" + ("*" if s == r["best"] else "") for s in names]
            same = [r["median_s"][s] for s in SAME_AS_DEFAULT]
            lines.append(f"| {work} | " + " | ".join(cells) + f" | {r['best']} | {r['default_over_best']:.2f}x | "
                         f"{'yes' if r['met'] else 'NO'} | {r['median_s']['default'] / r['median_s']['--threads 2']:.2f}x "
                         f"| {max(same) / min(same):.2f}x |")
        lines.append("")
    lines += ["`same-config spread`: slowest / fastest of the three labels that run the same configuration "
              "(default, --threads 1, OPENBLAS_NUM_THREADS=2): the noise floor of the figure on this machine. A "
              "`default / best` above 1.10 that stays within that spread is noise, not a worse default.", "",
              "Seconds (median; fastest marked *). `OPENBLAS_NUM_THREADS=2` without `--threads` still runs with "
              "the default --threads 1: refdns sets BLAS and Numba threads itself for the run (and records them in "
              "the checkpoint), so the variable alone does not change the run. `default`, `--threads 1` and "
              "`OPENBLAS_NUM_THREADS=2` therefore run the same configuration, and their spread is the noise of "
              "the measurement on this machine; `--threads 2` is the one different setting.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition, fewer iterations (a smoke run)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 3; quick 1)")
    ap.add_argument("--data-dir", default=os.environ.get("REFDNS_DATA"), help="folder holding mnist/")
    ap.add_argument("--conditions", default="quiet,loaded", help="comma-separated: quiet, loaded")
    ap.add_argument("--json", default=str(RESULTS / "bench_threads.json"), metavar="FILE")
    ap.add_argument("--out", default=str(RESULTS / "bench_threads.md"), metavar="FILE")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the markdown from a --json file of an earlier run")
    args = ap.parse_args()
    if args.render:
        from refdns.atomic import write_text

        raw = json.loads(Path(args.render).read_text())
        write_text(args.out, markdown(raw["meta"], raw["conditions"]))
        return
    reps = args.reps or (1 if args.quick else 3)
    iters = {"lenet-300-100": 100 if args.quick else 150, "lenet-5": 30 if args.quick else 40}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cmds = make_inputs(folder, args.data_dir, iters)
        conditions = [run_condition(c, cmds, args.data_dir, reps, folder) for c in args.conditions.split(",")]
    meta = {"quick": args.quick, "reps": reps, "iterations": iters, "cores": os.cpu_count(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version(), "target": TARGET}
    text = markdown(meta, conditions)
    print(text)
    from refdns.atomic import write_text

    write_text(args.out, text)
    write_text(args.json, json.dumps({"meta": meta, "conditions": conditions}, indent=2) + "\n")


if __name__ == "__main__":
    main()
