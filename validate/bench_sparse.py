"""Benchmark: pruned LeNets at batch 1, 64 and 10,000 - dense NumPy vs scipy CSR vs refdns kernels vs torch.sparse.

All backends run in one process on the same real MNIST test images and the same effective weights
``w * mask``; each figure is the median (and min) over the repetitions of a timed loop of calls
(batch 1 cycles through 64 different images, since skipping zero activations depends on the image),
after warm-up (Numba compilation, BLAS buffers). The repetitions are interleaved round-robin over the
backends, so that a change in the load of a shared machine hits every backend alike. Backends:

- ``dense``: refdns's dense forward (NumPy, im2col convolution; BLAS with its default threads).
- ``scipy``: ``scipy.sparse.csr_matrix`` per layer, activations feature-major (D, N); LeNet-5's convolutions
  as CSR filters times an im2col matrix, max-pool from refdns.
- ``refdns``: :class:`refdns.sparse.SparseNet` with serial kernels and its default paths (MLPs: the
  per-sample fused kernel at batch 1, the tiled whole-MLP kernel otherwise; LeNet-5 layer by layer);
  ``refdns-par``: the Numba-parallel variants of the same kernels. Both run inside ``threadpool_limits(1, "blas")``
  so no BLAS worker competes with Numba threads.
- ``torch``: ``torch.sparse.mm`` with CSR tensors (and ``F.unfold`` for convolutions), when PyTorch is installed.
- ``dense-1t`` / ``torch-1t``: the same with one BLAS / one PyTorch thread. On a loaded 2-core machine a
  2-thread pool waits for a second core at every barrier, so one thread can be much faster; each ratio is
  taken against the FASTER variant of the reference, never a handicapped one.

Wall time is the official figure. Because the machine may be shared, the single-threaded variants are also
timed in process CPU time (the work of one core, little affected by other processes), and each target is
checked both ways.

Targets (issue 5): LeNet-300-100 at DNS density >= 4x faster than dense at batch 1 and >= 5x at batch 10,000,
>= 1.5x faster than scipy, no slower than torch.sparse.mm; LeNet-5 >= 2x faster than dense. The refdns figure
for a target is the faster of refdns and refdns-par in that row, against the faster variant of each reference
(the table shows all of them).

    python validate/bench_sparse.py [--quick] [--json FILE] [--mlp CKPT ...] [--lenet5 CKPT ...]

Writes validate/results/bench_sparse.md (tables plus each checkpoint's storage report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from refdns import checkpoint
from refdns.atomic import write_text
from refdns.datasets import load_mnist
from refdns.layers import maxpool_forward
from refdns.nets import forward
from refdns.run import effective_params
from refdns.sparse import SparseNet, format_storage

RESULTS = Path(__file__).resolve().parent / "results"
# The DNS paper's per-layer densities (Guo et al. 2016, Table 1): the stand-ins are pruned to these.
DNS_DENSITIES = {"lenet-300-100": {"ip1": 0.018, "ip2": 0.018, "ip3": 0.055},
                 "lenet-5": {"conv1": 0.142, "conv2": 0.031, "ip1": 0.007, "ip2": 0.043}}
TARGETS = {"lenet-300-100": {"dense": {1: 4.0, 10_000: 5.0}, "scipy": 1.5, "torch": 1.0},
           "lenet-5": {"dense": 2.0}}


def timed(fn, inputs, *, reps: int, inner: int, warm: bool = True) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) per call, one figure per repetition; inputs used round-robin."""
    for i in range(min(3, len(inputs)) if warm else 0):
        fn(inputs[i])
    wall, cpu = [], []
    k = 0
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(inner):
            fn(inputs[k % len(inputs)])
            k += 1
        wall.append((time.perf_counter() - t0) / inner)
        cpu.append((time.process_time() - c0) / inner)
    return wall, cpu


#: Longest timed loop of one repetition (seconds), unless one call alone takes longer.
REP_SECONDS = 0.05

#: Single-threaded variants, whose process CPU time is the work of one core (a load-robust figure).
SINGLE_THREADED = ("dense-1t", "scipy", "refdns", "torch-1t")


# ---------------------------------------------------------------- scipy
def scipy_forward_fn(spec, params):
    import scipy.sparse as sp

    mats = {}
    for op in spec.layers:
        w = params[f"{op.name}.weight"]
        mats[op.name] = (sp.csr_matrix(w.reshape(w.shape[0], -1)), params[f"{op.name}.bias"])

    def run(x):
        h = x
        fm = False  # feature-major (D, N) once flattened
        for op in spec.ops:
            if op.kind == "conv":
                w, b = mats[op.name]
                _, _, kh, kw = op.w_shape
                n, c = h.shape[:2]
                win = np.lib.stride_tricks.sliding_window_view(h, (kh, kw), axis=(2, 3))  # (N, C, OH, OW, KH, KW)
                oh, ow = win.shape[2], win.shape[3]
                cols = win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * oh * ow)  # (CKK, N*OH*OW)
                h = (w @ cols + b[:, None]).reshape(-1, n, oh, ow).transpose(1, 0, 2, 3)
            elif op.kind == "pool":
                h, _ = maxpool_forward(np.ascontiguousarray(h), size=op.size, stride=op.stride)
            elif op.kind == "flatten":
                h = h.reshape(h.shape[0], -1).T
                fm = True
            elif op.kind == "dense":
                w, b = mats[op.name]
                h = w @ h + b[:, None] if fm else None
            elif op.kind == "relu":
                h = np.maximum(h, 0)
        return h.T

    return run


# ---------------------------------------------------------------- torch
def torch_forward_fn(spec, params):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    mats = {}
    for op in spec.layers:
        w = torch.from_numpy(params[f"{op.name}.weight"])
        mats[op.name] = (w.reshape(w.shape[0], -1).to_sparse_csr(), torch.from_numpy(params[f"{op.name}.bias"]))

    def run(x):
        with torch.inference_mode():
            h = torch.from_numpy(x)
            for op in spec.ops:
                if op.kind == "conv":
                    w, b = mats[op.name]
                    n, _, hh, ww = h.shape
                    _, _, kh, kw = op.w_shape
                    oh, ow = hh - kh + 1, ww - kw + 1
                    cols = F.unfold(h, (kh, kw))  # (N, CKK, OH*OW)
                    cols = cols.permute(1, 0, 2).reshape(cols.shape[1], -1)  # (CKK, N*OH*OW)
                    h = (torch.sparse.mm(w, cols) + b[:, None]).reshape(-1, n, oh, ow).permute(1, 0, 2, 3)
                elif op.kind == "pool":
                    h = F.max_pool2d(h, op.size, op.stride)
                elif op.kind == "flatten":
                    h = h.reshape(h.shape[0], -1).T
                elif op.kind == "dense":
                    w, b = mats[op.name]
                    h = torch.sparse.mm(w, h) + b[:, None]
                elif op.kind == "relu":
                    h = torch.relu(h)
            return h.T.numpy()

    return run


@contextmanager
def torch_one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_checkpoint(path: str, x_all: np.ndarray, batches, reps: int, *, skip_torch: bool = False) -> dict:
    ck = checkpoint.load(path)
    st = ck.state
    spec = st.spec
    params = effective_params(st.params, st.masks)
    net = SparseNet.from_params(spec, st.params, st.masks)
    storage = net.storage()
    one_blas = lambda: threadpool_limits(limits=1, user_api="blas")  # noqa: E731
    backends = {
        "dense": (lambda x: forward(spec, params, x)[0], nullcontext),
        "dense-1t": (lambda x: forward(spec, params, x)[0], one_blas),
        "scipy": (scipy_forward_fn(spec, params), nullcontext),
        "refdns": (lambda x: net.forward(x, parallel=False), one_blas),
        "refdns-par": (lambda x: net.forward(x, parallel=True), one_blas),
    }
    torch_fn = None if skip_torch else torch_forward_fn(spec, params)
    if torch_fn is not None:
        backends["torch"] = (torch_fn, nullcontext)
        backends["torch-1t"] = (torch_fn, torch_one_thread)
    rows = []
    for n in batches:
        if n == 1:
            inputs, inner = [x_all[i : i + 1] for i in range(64)], 200 if reps > 3 else 100
        else:
            inputs = [x_all[:n]]
            inner = max(1, 2000 // n) if n < 1000 else 1
        want = forward(spec, params, inputs[0])[0].argmax(axis=1)
        row = {"batch": n, "ms": {}, "ms_min": {}, "ms_all": {}, "agree": {}}
        walls = {name: [] for name in backends}
        cpus = {name: [] for name in backends}
        calls = {}
        for name, (fn, ctx) in backends.items():  # warm-up (compilation, buffers) and the top-1 check
            with ctx():
                one, _ = timed(fn, inputs, reps=1, inner=1)
                row["agree"][name] = bool(np.array_equal(np.asarray(fn(inputs[0])).argmax(axis=1), want))
            # Calls per timed loop: up to `inner`, but about REP_SECONDS of work at most, so that a backend
            # made slow by a loaded machine (a 2-thread pool waiting at barriers) does not take the run hostage.
            calls[name] = max(1, min(inner, int(REP_SECONDS / max(one[0], 1e-9))))
        for _ in range(reps):  # round-robin: a change in the machine's load hits every backend alike
            for name, (fn, ctx) in backends.items():
                with ctx():
                    ts, cpu = timed(fn, inputs, reps=1, inner=calls[name], warm=False)
                walls[name] += ts
                cpus[name] += cpu
        for name in backends:
            ts, cpu = walls[name], cpus[name]
            print(f"  {spec.name} batch {n:>6,} {name:<10} {1e3 * statistics.median(ts):10.4g} ms", file=sys.stderr,
                  flush=True)
            row["ms"][name] = 1e3 * statistics.median(ts)
            row["ms_min"][name] = 1e3 * min(ts)
            row["ms_all"][name] = [1e3 * t for t in ts]
            if name in SINGLE_THREADED:
                row.setdefault("cpu_ms", {})[name] = 1e3 * statistics.median(cpu)
        fastest = {fam: min((k for k in row["ms"] if k.split("-")[0] == fam), key=lambda k: row["ms"][k])
                   for fam in ("dense", "scipy", "refdns", "torch") if fam in row["ms"]}
        row["fastest"] = fastest
        best = fastest["refdns"]
        row["refdns_best"] = best
        row["ratios"] = {f"{fam}/refdns": row["ms"][k] / row["ms"][best] for fam, k in fastest.items()
                         if fam != "refdns"}
        ref = row["cpu_ms"]["refdns"]
        row["cpu_ratios"] = {f"{k.split('-')[0]}/refdns": v / ref for k, v in row["cpu_ms"].items() if k != "refdns"}
        rows.append(row)
    density = storage[-1]["density"]
    return {"checkpoint": path, "net": spec.name, "method": ck.method, "density": density, "storage": storage,
            "rows": rows, "targets": check_targets(spec.name, rows)}


def check_targets(net: str, rows) -> list[dict]:
    """Each target against the wall-clock ratio (the official figure) and the single-thread CPU-time ratio."""
    t = TARGETS[net]
    out = []
    for r in rows:
        dense_goal = t["dense"].get(r["batch"]) if isinstance(t["dense"], dict) else t["dense"]
        for ref, goal in (("dense", dense_goal), ("scipy", t.get("scipy")), ("torch", t.get("torch"))):
            key = f"{ref}/refdns"
            if goal is None or key not in r["ratios"]:
                continue
            cpu = r["cpu_ratios"].get(key)
            fam = r["fastest"][ref]
            best_min = min(v for k, v in r["ms_min"].items() if k.split("-")[0] == ref)
            ref_min = min(v for k, v in r["ms_min"].items() if k.split("-")[0] == "refdns")
            min_ratio = best_min / ref_min
            out.append({"batch": r["batch"], "vs": ref, "vs_variant": fam, "ratio": r["ratios"][key], "target": goal,
                        "met": r["ratios"][key] >= goal, "min_ratio": min_ratio, "min_met": min_ratio >= goal,
                        "cpu_ratio": cpu, "cpu_met": None if cpu is None else cpu >= goal})
    return out


def markdown(results, meta) -> str:
    lines = [f"# Sparse inference benchmark ({'quick' if meta['quick'] else 'full'} run)", "",
             f"{meta['machine']}; numpy {meta['numpy']}, scipy {meta['scipy']}, numba {meta['numba']} "
             f"({meta['numba_threads']} threads, {meta['threading_layer']} layer), torch {meta['torch']}; "
             f"BLAS {meta['blas']}. Load average before / after: {meta['load_before']} / {meta['load_after']} "
             f"on {os.cpu_count()} cores.", "",
             "Milliseconds per forward call, median of the repetitions (min in brackets); ratio = time of the faster "
             "variant of a backend / time of the faster refdns variant (fastest of each family marked *); "
             "`agree` = same top-1 class as dense for every image of the batch.", ""]
    for res in results:
        lines += [f"## {res['net']} - {res['checkpoint']} ({res['method']}, {100 * res['density']:.2f}% of "
                  "weights kept)", ""]
        names = list(res["rows"][0]["ms"])
        lines.append("| batch | " + " | ".join(names) + " | dense / refdns | scipy / refdns | torch / refdns | agree |")
        lines.append("|---:|" + "---:|" * (len(names) + 3) + "---|")
        for r in res["rows"]:
            cells = [f"{r['ms'][k]:.4g} ({r['ms_min'][k]:.3g})" + ("*" if k in r["fastest"].values() else "") for k in names]
            ratios = [f"{r['ratios'][k]:.2f}x" if k in r["ratios"] else "-" for k in
                      ("dense/refdns", "scipy/refdns", "torch/refdns")]
            agree = "yes" if all(r["agree"].values()) else "NO: " + ", ".join(k for k, v in r["agree"].items() if not v)
            lines.append(f"| {r['batch']:,} | " + " | ".join(cells) + " | " + " | ".join(ratios) + f" | {agree} |")
        lines += ["", "Process CPU time per call, single-threaded variants only (ms, median) - the work done, "
                  "much less sensitive to other processes on the machine than wall time:", "",
                  "| batch | " + " | ".join(SINGLE_THREADED) + " | dense-1t / refdns | scipy / refdns | torch-1t / refdns |",
                  "|---:|" + "---:|" * (len(SINGLE_THREADED) + 3)]
        for r in res["rows"]:
            cells = [f"{r['cpu_ms'][k]:.4g}" if k in r["cpu_ms"] else "-" for k in SINGLE_THREADED]
            ratios = [f"{r['cpu_ratios'][k]:.2f}x" if k in r["cpu_ratios"] else "-" for k in
                      ("dense/refdns", "scipy/refdns", "torch/refdns")]
            lines.append(f"| {r['batch']:,} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        lines += ["", "Targets. Wall ratio: medians (the official figure); min-wall ratio: fastest repetition of "
                  "each side (preemption by other processes only ever adds time, so on a loaded machine the minimum "
                  "is the closer estimate of what the code costs); CPU-time ratio: single-threaded variants only.", "",
                  "| batch | refdns vs | wall ratio | met | min-wall ratio | met | CPU-time ratio | met | target |",
                  "|---:|---|---:|---|---:|---|---:|---|---:|"]
        for t in res["targets"]:
            cpu = "-" if t["cpu_ratio"] is None else f"{t['cpu_ratio']:.2f}x"
            cpu_met = "-" if t["cpu_met"] is None else ("yes" if t["cpu_met"] else "NO")
            lines.append(f"| {t['batch']:,} | {t['vs']} | {t['ratio']:.2f}x | {'yes' if t['met'] else 'NO'} | "
                         f"{t['min_ratio']:.2f}x | {'yes' if t['min_met'] else 'NO'} | "
                         f"{cpu} | {cpu_met} | >= {t['target']}x |")
        lines += ["", "Storage (float32 values; CSR int32 indices; relative index as in Deep Compression):", "",
                  format_storage(res["storage"]), ""]
    return "\n".join(lines) + "\n"


def standin(net: str, folder: Path, data_dir: str | None) -> str:
    """A checkpoint pruned to the DNS paper's densities, made here (no path that exists on one machine only):
    1,000 dense iterations, one-shot magnitude pruning per layer, 500 iterations of retraining. For timing
    and storage (which depend on the densities, not the accuracy), not for accuracy claims."""
    from refdns.pipeline import experiment, load_data, reproduce

    out = folder / f"{net}-standin.h5"
    print(f"making a {net} stand-in at the DNS paper's densities ({out})", file=sys.stderr, flush=True)
    exp = experiment(net, "magnitude", overrides={"densities": DNS_DENSITIES[net], "retrain_iterations": 500},
                     dense_iterations=1_000, test_interval=0)
    reproduce(exp, load_data(data_dir=data_dir), out=out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions and fewer calls (a smoke run)")
    ap.add_argument("--json", metavar="FILE", help="raw figures, ratios and targets as JSON")
    ap.add_argument("--mlp", nargs="*", default=None, metavar="CKPT",
                    help="pruned LeNet-300-100 checkpoints (default: a stand-in made here at DNS's densities)")
    ap.add_argument("--lenet5", nargs="*", default=None, metavar="CKPT",
                    help="pruned LeNet-5 checkpoints (default: a stand-in made here at DNS's densities)")
    ap.add_argument("--data-dir", default=os.environ.get("REFDNS_DATA"), help="folder holding mnist/")
    ap.add_argument("--batches", default="1,64,10000", help="comma-separated batch sizes")
    ap.add_argument("--no-torch", default="", metavar="NETS",
                    help="comma-separated nets to time without torch (no torch target for them; LeNet-5's torch "
                    "convolution takes ~6 s a call at batch 10,000)")
    ap.add_argument("--out", default=str(RESULTS / "bench_sparse.md"), help="markdown file to write")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the markdown (and targets) from a --json file")
    args = ap.parse_args()
    if args.render:
        raw = json.loads(Path(args.render).read_text())
        for res in raw["results"]:
            for r in res["rows"]:
                r["batch"] = int(r["batch"])
            res["targets"] = check_targets(res["net"], res["rows"])
        write_text(args.out, markdown(raw["results"], raw["meta"]))
        write_text(args.render, json.dumps(raw, indent=2) + "\n")
        return
    scratch = tempfile.TemporaryDirectory()
    paths, nets = [], []
    for net, given in (("lenet-300-100", args.mlp), ("lenet-5", args.lenet5)):
        got = given if given is not None else [standin(net, Path(scratch.name), args.data_dir)]
        paths += got
        nets += [net] * len(got)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise SystemExit(f"missing checkpoints {missing}")
    batches = [int(b) for b in args.batches.split(",")]
    reps = 3 if args.quick else 9
    x_all, _ = load_mnist("test", data_dir=args.data_dir)
    import numba
    import scipy

    try:
        import torch
        torch_v = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_v = "not installed"
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    no_torch = set(filter(None, args.no_torch.split(",")))
    results = [bench_checkpoint(p, x_all, batches, reps, skip_torch=net in no_torch)
               for p, net in zip(paths, nets)]
    meta = {"quick": args.quick, "reps": reps, "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "numpy": np.__version__, "scipy": scipy.__version__, "numba": numba.__version__,
            "numba_threads": numba.get_num_threads(), "threading_layer": numba.threading_layer(), "torch": torch_v,
            "blas": ", ".join(f"{i.get('internal_api')} {i.get('num_threads')} threads" for i in threadpool_info()
                              if i.get("user_api") == "blas"),
            "load_before": load_before, "load_after": " ".join(f"{v:.1f}" for v in os.getloadavg())}
    text = markdown(results, meta)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    if args.json:
        write_text(args.json, json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
