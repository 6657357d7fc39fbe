"""What thinning buys: parameters, FLOPs and forward latency of dense, unstructured-sparse and thinned nets.

For each LeNet the script makes its own nets, quickly, on real MNIST (no checkpoint needed):

- ``dense``: Caffe's recipe, ``--dense-iterations`` iterations;
- ``sparse``: the dense net pruned by per-layer magnitude to the DNS paper's densities (Guo et al. 2016,
  Table 1: the unstructured stand-in bench_sparse.py uses too), retrained ``--finetune`` iterations with the
  masks fixed, run with refdns's CSR kernels (:class:`refdns.sparse.SparseNet`, serial kernels);
- ``thinned``: the dense net pruned by whole units to a FLOP budget (``--flop-fraction`` of the dense net's
  FLOPs; l1-norm criterion, Li et al. 2017, so no data is scored; 4 steps, ``--finetune`` iterations of
  fine-tuning in all), then :func:`refdns.thin.thin`: a smaller dense net run by the ordinary dense forward.

Each is timed at batch 1, 64 and 10,000 on the same MNIST test images: the median (and min) over ``--reps``
repetitions of a timed loop of calls (batch 1 cycles through 64 images), after warm-up; ratios are against the
dense net measured in the same run. The thinned net is also checked against its masked source (same argmax on
the whole test set). BLAS and Numba use one thread (the machine is shared; the figures are single-core ones),
and the load average is recorded beside them.

FLOPs: Molchanov et al.'s count (:mod:`refdns.nets.flops`) for dense and thinned nets; for the sparse net the
same count over kept weights only, ``2 nnz H'W' + F H'W'`` per conv layer and ``2 nnz`` per fc layer (what the
CSR kernels multiply and add).

    python validate/thin_speed.py [--quick] [--reps 7]

Writes validate/results/thin_speed.{md,json}.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from refdns.atomic import write_text  # noqa: E402
from refdns.datasets import load_mnist  # noqa: E402
from refdns.nets import get_spec  # noqa: E402
from refdns.nets.flops import layer_flops, net_flops  # noqa: E402
from refdns.nets.sequential import forward, predict  # noqa: E402
from refdns.pipeline import Data, run_training  # noqa: E402
from refdns.prune.magnitude import Magnitude, MagnitudeConfig  # noqa: E402
from refdns.prune.structured import StructuredConfig, StructuredPruning  # noqa: E402
from refdns.prune.units import effective_params, unit_layers  # noqa: E402
from refdns.run import TrainConfig  # noqa: E402
from refdns.sparse import SparseNet  # noqa: E402
from refdns.thin import thin  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DNS_DENSITIES = {
    "lenet-300-100": {"ip1": 0.018, "ip2": 0.018, "ip3": 0.055},
    "lenet-5": {"conv1": 0.142, "conv2": 0.031, "ip1": 0.007, "ip2": 0.043},
}
BATCHES = (1, 64, 10_000)


def sparse_flops(spec, masks) -> int:
    """Multiply-adds over kept weights (plus conv bias adds): what the CSR kernels compute per image."""
    dense = layer_flops(spec)
    total = 0
    for op in spec.layers:
        nnz = int(np.count_nonzero(masks[f"{op.name}.weight"]))
        if len(op.w_shape) == 4:
            # recover H'W' from the dense count 2 H'W' (C K^2 + 1) F
            hw = dense[op.name] // (2 * (int(np.prod(op.w_shape[1:])) + 1) * op.w_shape[0])
            total += 2 * nnz * hw + op.w_shape[0] * hw
        else:
            total += 2 * nnz
    return total


def timed(fn, inputs, *, reps: int, inner: int) -> list[float]:
    """Seconds per call, one figure per repetition, after warm-up; inputs used round-robin."""
    for i in range(min(2, len(inputs))):
        fn(inputs[i])
    out, k = [], 0
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn(inputs[k % len(inputs)])
            k += 1
        out.append((time.perf_counter() - t0) / inner)
    return out


def batch_plan(batch: int, n: int, *, reps: int, quick: bool) -> tuple[list[int], int, int]:
    """Where the timed calls at ``batch`` start in the ``n`` test images, calls per repetition, repetitions.

    Batch 1 cycles through 64 images (64 calls a repetition, quick 16); batches up to 64 through 8
    slices (8 calls, quick 2); larger batches are one call on the first ``batch`` images, with
    ``max(3, reps // 2)`` repetitions."""
    if batch > n:
        raise ValueError(f"batch={batch} is more than the {n:,} test images")
    if batch == 1:
        return list(range(min(64, n))), (16 if quick else 64), reps
    if batch <= 64:
        return list(range(0, min(8 * batch, n - batch + 1), batch)), (2 if quick else 8), reps
    return [0], 1, max(3, reps // 2)


def time_runners(runners: dict, x: np.ndarray, *, reps: int, quick: bool, batches=BATCHES) -> dict:
    """{runner: {batch: seconds per call, one figure per repetition}}, one BLAS thread; the runners are
    interleaved within each batch so that load drift hits each alike."""
    times: dict[str, dict[int, list[float]]] = {k: {} for k in runners}
    with threadpool_limits(1):
        for batch in batches:
            starts, inner, n_reps = batch_plan(batch, len(x), reps=reps, quick=quick)
            inputs = [x[s : s + batch] for s in starts]
            for name, fn in runners.items():
                times[name][batch] = timed(fn, inputs, reps=n_reps, inner=inner)
    return times


def speed_columns(times: dict, name: str, dense: str = "dense", batches=BATCHES) -> dict:
    """Median and min seconds per call of ``name`` and its speed-up (dense median / its median) per batch."""
    row = {}
    for b in batches:
        med = statistics.median(times[name][b])
        row[f"batch{b}_median_s"] = med
        row[f"batch{b}_min_s"] = min(times[name][b])
        row[f"batch{b}_speedup"] = statistics.median(times[dense][b]) / med
    return row


def make_nets(net: str, data: Data, args) -> tuple[dict, dict]:
    """The three nets (spec, params, masks) and their wall times of training."""
    spec = get_spec(net)
    walls = {}
    t0 = time.perf_counter()
    dense, _ = run_training(
        spec, data, TrainConfig(iterations=args.dense_iterations, test_interval=10**6), seed=0
    )
    walls["dense"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mag = Magnitude(MagnitudeConfig(densities=DNS_DENSITIES[net], retrain_iterations=args.finetune))
    sparse, _ = run_training(
        spec,
        data,
        TrainConfig(iterations=args.finetune, test_interval=10**6),
        seed=0,
        method=mag,
        params=dense.params,
        masks=dense.masks,
    )
    walls["sparse"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    budget = int(args.flop_fraction * net_flops(spec))
    steps = 4
    cfg = StructuredConfig(
        criterion="l1", flops=budget, steps=steps, step_iterations=max(args.finetune // steps, 0)
    )
    structured, _ = run_training(
        spec,
        data,
        TrainConfig(iterations=cfg.steps * cfg.step_iterations, test_interval=10**6),
        seed=0,
        method=StructuredPruning(cfg),
        params=dense.params,
        masks=dense.masks,
    )
    small_spec, small_params, report = thin(spec, structured.params, structured.masks)
    walls["thinned"] = time.perf_counter() - t0
    nets = {
        "dense": (spec, dense.params, dense.masks),
        "sparse": (spec, sparse.params, sparse.masks),
        "masked": (spec, structured.params, structured.masks),
        "thinned": (small_spec, small_params, {k: np.ones(v.shape, bool) for k, v in small_params.items()}),
    }
    return nets, {"walls": walls, "budget": budget, "thin": report.message}


def bench_net(net: str, data: Data, x_test, y_test, args) -> dict:
    nets, made = make_nets(net, data, args)
    rows = []
    eff = {name: effective_params(p, m) for name, (s, p, m) in nets.items()}
    same_argmax = bool(
        np.array_equal(
            predict(nets["thinned"][0], eff["thinned"], x_test),
            predict(nets["masked"][0], eff["masked"], x_test),
        )
    )
    sparse_net = SparseNet.from_params(*nets["sparse"])
    runners = {
        "dense": lambda x: forward(nets["dense"][0], eff["dense"], x)[0],
        "sparse (CSR)": lambda x: sparse_net.forward(x),
        "thinned": lambda x: forward(nets["thinned"][0], eff["thinned"], x)[0],
    }
    facts = {
        "dense": (nets["dense"][0].n_params(), net_flops(nets["dense"][0]), "dense"),
        "sparse (CSR)": (
            sum(int(np.count_nonzero(m)) for m in nets["sparse"][2].values()),
            sparse_flops(nets["sparse"][0], nets["sparse"][2]),
            "sparse",
        ),
        "thinned": (nets["thinned"][0].n_params(), net_flops(nets["thinned"][0]), "thinned"),
    }
    errors = {
        "dense": float(np.mean(predict(nets["dense"][0], eff["dense"], x_test) != y_test)),
        "sparse (CSR)": float(np.mean(sparse_net.predict(x_test) != y_test)),
        "thinned": float(np.mean(predict(nets["thinned"][0], eff["thinned"], x_test) != y_test)),
    }
    times = time_runners(runners, x_test, reps=args.reps, quick=args.quick)
    for name in runners:
        params, flops, _ = facts[name]
        row = {
            "net": name,
            "params": params,
            "flops": flops,
            "test_error": errors[name],
            "params_ratio": facts["dense"][0] / params,
            "flops_ratio": facts["dense"][1] / flops,
        }
        row |= speed_columns(times, name)
        rows.append(row)
    units = {n: nets["thinned"][0].param_shapes()[f"{n}.weight"][0] for n in unit_layers(nets["dense"][0])}
    return {
        "net": net,
        "rows": rows,
        "thinned_units": units,
        "thinned_name": nets["thinned"][0].name,
        "same_argmax_as_masked": same_argmax,
        "flop_budget": made["budget"],
        "thin": made["thin"],
        "train_seconds": made["walls"],
        "layer_flops": {k: layer_flops(nets[k][0]) for k in ("dense", "thinned")},
    }


def to_markdown(res: dict) -> str:
    lines = [
        "# Thinning against unstructured sparsity: parameters, FLOPs, forward latency",
        "",
        f"Produced by `python validate/thin_speed.py{' --quick' if res['quick'] else ''}` "
        f"on {res['machine']}, "
        f"one BLAS and one Numba thread; load average {res['load_before']} before, {res['load_after']} after "
        f"(a shared 2-core machine: absolute times move with the load, ratios against dense measured in the "
        f"same run much less). Median of {res['reps']} repetitions (batch 10,000: "
        f"{max(3, res['reps'] // 2)}); wall {res['seconds']:.0f} s in all.",
        "",
        "Nets made here, quickly (test errors are of these short runs, not of the papers' nets): dense "
        f"{res['dense_iterations']} iterations; sparse = magnitude to the DNS paper's per-layer densities + "
        f"{res['finetune']} iterations retraining; thinned = l1 structured pruning to "
        f"{100 * res['flop_fraction']:.0f}% of the dense FLOPs in 4 steps with {res['finetune']} iterations "
        "of fine-tuning, then `thin`. The test errors are not matched: read the speed-ups beside them.",
        "",
    ]
    for r in res["nets"]:
        lines += [
            f"## {r['net']}",
            "",
            f"Thinned net `{r['thinned_name']}` (FLOP budget {r['flop_budget']:,}); {r['thin']}. "
            "Same argmax as "
            f"the masked net on all 10,000 test images: {'yes' if r['same_argmax_as_masked'] else 'NO'}.",
            "",
            "| net | parameters | x fewer | FLOPs/image | x fewer | test error | batch 1 | speed-up "
            "| batch 64 "
            "| speed-up | batch 10,000 | speed-up |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in r["rows"]:
            lines.append(
                f"| {row['net']} | {row['params']:,} | {row['params_ratio']:.1f} | {row['flops']:,} | "
                f"{row['flops_ratio']:.1f} | {100 * row['test_error']:.2f}% | "
                f"{1e6 * row['batch1_median_s']:.0f} us | {row['batch1_speedup']:.2f} | "
                f"{1e3 * row['batch64_median_s']:.2f} ms | {row['batch64_speedup']:.2f} | "
                f"{1e3 * row['batch10000_median_s']:.0f} ms | {row['batch10000_speedup']:.2f} |"
            )
        lines += [
            "",
            "Per-layer FLOPs (dense -> thinned): "
            + ", ".join(
                f"{k} {r['layer_flops']['dense'][k]:,} -> {r['layer_flops']['thinned'][k]:,}"
                for k in r["layer_flops"]["dense"]
            ),
            "",
            "Training wall times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["train_seconds"].items()),
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="shorter training and fewer repetitions (a smoke run)"
    )
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per figure (median reported)")
    p.add_argument(
        "--dense-iterations", type=int, default=None, help="dense training (default 2,000; quick 300)"
    )
    p.add_argument(
        "--finetune", type=int, default=None, help="retraining iterations (default 1,000; quick 200)"
    )
    p.add_argument(
        "--flop-fraction", type=float, default=0.2, help="thinned net's FLOP budget, of the dense net's"
    )
    p.add_argument("--nets", default="lenet-300-100,lenet-5")
    p.add_argument("--out", default=str(RESULTS / "thin_speed"), help="results path without suffix")
    args = p.parse_args(argv)
    if args.dense_iterations is None:
        args.dense_iterations = 300 if args.quick else 2_000
    if args.finetune is None:
        args.finetune = 200 if args.quick else 1_000
    if args.quick:
        args.reps = min(args.reps, 3)
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    data = Data(x_train, y_train, x_test[:500], y_test[:500])
    t0 = time.perf_counter()
    load_before = [round(v, 2) for v in os.getloadavg()]
    nets = [bench_net(n, data, x_test, y_test, args) for n in args.nets.split(",")]
    res = {
        "quick": args.quick,
        "reps": args.reps,
        "dense_iterations": args.dense_iterations,
        "finetune": args.finetune,
        "flop_fraction": args.flop_fraction,
        "nets": nets,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".replace(
            "  ", " "
        ),
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "seconds": time.perf_counter() - t0,
        "threads": {"blas": 1, "numba": os.environ["NUMBA_NUM_THREADS"]},
    }
    out = Path(args.out)
    write_text(out.with_suffix(".json"), json.dumps(res, indent=1) + "\n")
    write_text(out.with_suffix(".md"), to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
