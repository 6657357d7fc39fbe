"""Side by side with the original: refdns against the DNS authors' own Caffe, step by step.

Both start from the same ``.caffemodel`` (the authors' dense ``caffe_lenet300100_original.caffemodel`` or
``caffe_lenet5_original.caffemodel``) with the same solver (Caffe's MNIST LeNet recipe), the same DNS settings
(read from the DNS train prototxt given), the training set in Caffe's file order (``data_order="caffe"``) and
the same mask-update draws (``draws="caffe"``: glibc ``rand()`` never seeded, the fork's float32 arithmetic).

Caffe runs twice (it is deterministic on one thread): once with ``snapshot: 1`` for the first ``--steps``
iterations, once with ``snapshot: --every`` up to ``--until``. Each snapshot (``.caffemodel`` + ``.solverstate``)
is read with :mod:`refdns.caffe.proto` and compared with refdns's state after the same number of iterations:
masks exactly, W and b and the momentum (Caffe's history = refdns's velocity) by their largest difference.
The first snapshot where a mask differs, or a tensor differs by more than ``--rtol`` of the layer's largest
|value|, is "where they part"; for a mask that differs, the weights that decided it are printed beside the
layer's thresholds, in float32 ulps.

Usage::

    python validate/caffe_peer.py --caffe ~/caffe-dns/src/build/tools/caffe \\
        --model lenet300100_original.caffemodel --prototxt lenet300100_dns.prototxt [--net lenet-5] \\
        [--steps 200 --until 3000 --every 100] [--quick]

``--caffe-root`` is where the prototxt's data sources (``data/mnist_train_lmdb``) resolve (default: three
levels above the binary, ``<root>/src/build/tools/caffe``). MNIST for refdns comes from ``--data-dir`` or
``$REFDNS_DATA``. Writes ``validate/results/caffe_peer_<net>.json`` and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from refdns.caffe.proto import caffemodel_to_params, read_caffemodel, read_solverstate
from refdns.datasets import load_mnist
from refdns.nets import get_spec
from refdns.prune.dns import DNS, DNSConfig, DNSLayerConfig
from refdns.run import TrainConfig, new_run
from refdns.train import train

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "validate" / "results"

# Caffe's MNIST LeNet solver (BVLC examples/mnist/lenet_solver.prototxt); refdns's SGDConfig defaults are these.
SOLVER = """net: "{net}"
test_iter: 1
test_interval: {test_interval}
test_initialization: false
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 100
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
solver_mode: CPU
"""


def dns_layers_from_prototxt(text: str) -> dict[str, DNSLayerConfig]:
    """Each CInnerProduct / CConvolution layer's gamma, power, c_rate, iter_stop, in net order."""
    out = {}
    for block in re.split(r"\n(?=layers? \{)", text):
        kind = re.search(r'type:\s*"?(\w+)"?', block)
        if not kind or kind.group(1) not in ("CInnerProduct", "CConvolution"):
            continue
        name = re.search(r'name:\s*"([^"]+)"', block).group(1)

        def num(key, block=block):
            m = re.search(rf"\b{key}:\s*([-+0-9.eE]+)", block)
            if m is None:
                raise ValueError(f"layer {name}: no {key} in the prototxt (give every DNS setting explicitly)")
            return float(m.group(1))

        out[name] = DNSLayerConfig(c_rate=num("c_rate"), gamma=num("gamma"), power=num("power"),
                                   iter_stop=int(num("iter_stop")))
    return out


def run_caffe(caffe: Path, root: Path, net: Path, weights: Path, workdir: Path, *, max_iter: int,
              snapshot: int, tag: str) -> tuple[Path, float, str]:
    """One ``caffe train`` run; returns the snapshot prefix, the wall time and the log."""
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = workdir / tag
    solver = workdir / f"{tag}_solver.prototxt"
    solver.write_text(SOLVER.format(net=net, test_interval=max_iter + 1, max_iter=max_iter, snapshot=snapshot,
                                    prefix=prefix))
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "GLOG_logtostderr": "1"}
    env.pop("LD_PRELOAD", None)  # the never-seeded rand() stream
    t0 = time.perf_counter()
    proc = subprocess.run([str(caffe), "train", f"--solver={solver}", f"--weights={weights}"], cwd=root, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (workdir / f"{tag}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"caffe exited with {proc.returncode}; log: {workdir / f'{tag}.log'}\n"
                           + proc.stderr[-2000:])
    return prefix, seconds, proc.stderr


def caffe_stats_from_log(log: str) -> list[tuple[float, float, int]]:
    """The ``mu  std  ncount`` lines the fork's CInnerProduct logs at iteration 0 (the conv layer does not)."""
    out = []
    for m in re.finditer(r"\]\s*([-0-9.e+]+)\s+([-0-9.e+]+)\s+(\d+)\s*$", log, re.M):
        out.append((float(m.group(1)), float(m.group(2)), int(m.group(3))))
    return out


def read_snapshot(prefix: Path, it: int, spec) -> tuple[dict, dict, dict]:
    """(params, masks, velocity) of Caffe after ``it`` iterations, under refdns's names."""
    layers = read_caffemodel(f"{prefix}_iter_{it}.caffemodel")
    params, masks = caffemodel_to_params(layers, spec.layer_names, spec.param_shapes())
    _, history = read_solverstate(f"{prefix}_iter_{it}.solverstate")
    shapes = spec.param_shapes()
    velocity = {}
    for i, name in enumerate(spec.layer_names):  # four history blobs per DNS layer: W, b, W mask, b mask
        for j, kind in enumerate(("weight", "bias")):
            key = f"{name}.{kind}"
            velocity[key] = history[4 * i + j].reshape(shapes[key])
    return params, masks, velocity


def compare(state, caffe: tuple[dict, dict, dict]) -> dict:
    params, masks, velocity = caffe
    row = {}
    for key in state.params:
        w_ref, w_caffe = state.params[key], params[key]
        scale = float(np.abs(w_caffe).max()) or 1.0
        row[key] = {
            "mask_mismatch": int(np.count_nonzero(state.masks[key] != masks[key])),
            "kept": int(np.count_nonzero(masks[key])),
            "max_abs": float(np.abs(w_ref - w_caffe).max()),
            "max_rel": float(np.abs(w_ref - w_caffe).max()) / scale,
            "v_max_abs": float(np.abs(state.velocity[key] - velocity[key]).max()),
            "identical": bool(np.array_equal(w_ref, w_caffe)),
        }
    return row


def explain_mask_mismatch(prev_ref: dict, prev_caffe: dict, state_before, now_ref_masks, now_caffe_masks,
                          method_state, limit=5) -> list[dict]:
    """For each entry whose mask differs: |w| in both just before the update, and the layer's a and b."""
    out = []
    for key, m in now_ref_masks.items():
        diff = np.flatnonzero(m.ravel() != now_caffe_masks[key].ravel())
        layer = key.split(".")[0]
        a, b = float(method_state[f"{layer}.a"]), float(method_state[f"{layer}.b"])
        for i in diff[:limit]:
            wr = np.float32(abs(prev_ref[key].ravel()[i]))
            wc = np.float32(abs(prev_caffe[key].ravel()[i]))
            edge = np.float32(a) if abs(float(wr) - a) < abs(float(wr) - b) else np.float32(b)
            ulps = int(abs(int(wr.view(np.int32)) - int(edge.view(np.int32))))
            out.append({"tensor": key, "index": int(i), "refdns_abs_w": float(wr), "caffe_abs_w": float(wc),
                        "threshold": float(edge), "ulps_from_threshold": ulps,
                        "refdns_mask": bool(m.ravel()[i]), "caffe_mask": bool(now_caffe_masks[key].ravel()[i])})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caffe", required=True, type=Path, help="the built tools/caffe binary of the DNS fork")
    ap.add_argument("--caffe-root", type=Path, help="cwd for caffe (where data/mnist_*_lmdb are)")
    ap.add_argument("--model", required=True, type=Path, help="the .caffemodel both start from")
    ap.add_argument("--prototxt", required=True, type=Path, help="the DNS train/test net prototxt")
    ap.add_argument("--net", default="lenet-300-100", choices=["lenet-300-100", "lenet-5"])
    ap.add_argument("--steps", type=int, default=200, help="snapshots every iteration up to this one")
    ap.add_argument("--until", type=int, default=3000, help="then every --every iterations up to this one")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--rtol", type=float, default=1e-4, help="largest |dW| / max|W| still 'the same' (float32)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="keep Caffe's snapshots here (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="--steps 20 --until 200 --every 50")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default validate/results/caffe_peer_<net>.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.until, args.every = 20, 200, 50
    caffe = args.caffe.resolve()
    root = (args.caffe_root or caffe.parents[3]).resolve()
    spec = get_spec(args.net)
    layers = dns_layers_from_prototxt(args.prototxt.read_text())
    method = DNS(DNSConfig(layers=layers, draws="caffe", srand_seed=1))
    method.config.check_net(spec)
    cfg = TrainConfig(iterations=args.until, test_interval=0, data_order="caffe")
    data_dir = args.data_dir or os.environ.get("REFDNS_DATA")
    x, y = load_mnist("train", data_dir=data_dir, download=False)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="caffe_peer_"))
    print(f"caffe snapshots in {work}", flush=True)
    prefix_a, secs_a, log_a = run_caffe(caffe, root, args.prototxt.resolve(), args.model.resolve(), work,
                                        max_iter=args.steps, snapshot=1, tag="every1")
    prefix_b, secs_b, _ = run_caffe(caffe, root, args.prototxt.resolve(), args.model.resolve(), work,
                                    max_iter=args.until, snapshot=args.every, tag=f"every{args.every}")
    print(f"caffe: {args.steps} its with a snapshot each in {secs_a:.1f} s; {args.until} its in {secs_b:.1f} s",
          flush=True)

    params, masks = caffemodel_to_params(read_caffemodel(args.model), spec.layer_names, spec.param_shapes())
    state = new_run(spec, len(x), cfg, seed=0, params=params, masks=masks)
    checkpoints = [(k, prefix_a) for k in range(1, args.steps + 1)]
    checkpoints += [(k, prefix_b) for k in range(args.every, args.until + 1, args.every) if k > args.steps]
    rows, first, explanation = [], None, []
    prev_ref = {k: v.copy() for k, v in state.params.items()}
    prev_caffe = {k: v.copy() for k, v in params.items()}
    prev_k = 0
    t0 = time.perf_counter()
    for k, prefix in checkpoints:
        train(state, x, y, cfg, method=method, until=k)
        snap = read_snapshot(prefix, k, spec)
        row = compare(state, snap)
        rows.append({"iteration": k, "tensors": row})
        parted = [key for key, r in row.items() if r["mask_mismatch"] or r["max_rel"] > args.rtol]
        if parted and first is None:
            first = {"iteration": k, "after": prev_k, "tensors": parted}
            if k - prev_k == 1:  # the update at iteration k-1 read the weights of snapshot k-1
                explanation = explain_mask_mismatch(prev_ref, prev_caffe, None, state.masks, snap[1],
                                                    state.method_state)
            print(f"first difference between iteration {prev_k} and {k}: {parted}", flush=True)
        if k <= args.steps or k % (10 * args.every) == 0:
            worst = max(r["max_rel"] for r in row.values())
            mm = sum(r["mask_mismatch"] for r in row.values())
            print(f"iter {k:6d}: mask mismatches {mm}, max |dW|/max|W| {worst:.2e}", flush=True)
        prev_ref = {kk: v.copy() for kk, v in state.params.items()}
        prev_caffe = {kk: v.copy() for kk, v in snap[0].items()}
        prev_k = k
    refdns_secs = time.perf_counter() - t0

    stats_caffe = caffe_stats_from_log(log_a)
    stats_ref = [(float(state.method_state[f"{n}.mu"]), float(state.method_state[f"{n}.std"])) for n in layers]
    result = {
        "net": args.net, "model": args.model.name, "prototxt": args.prototxt.name,
        "dns": {n: vars(lc) for n, lc in layers.items()},
        "steps": args.steps, "until": args.until, "every": args.every, "rtol": args.rtol,
        "first_difference": first, "explanation": explanation,
        "caffe_logged_stats": stats_caffe, "refdns_stats": stats_ref,
        "caffe_seconds": {"every1": secs_a, f"every{args.every}": secs_b}, "refdns_seconds": refdns_secs,
        "rows": rows,
    }
    out = args.out or RESULTS / f"caffe_peer_{args.net}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def render(res: dict) -> str:
    lines = [f"# refdns vs the authors' Caffe, step by step: {res['net']}", "",
             f"Start: `{res['model']}`; net `{res['prototxt']}`; DNS {res['dns']}; Caffe's MNIST solver; "
             "data in file order; draws: glibc rand() never seeded.", ""]
    first = res["first_difference"]
    if first is None:
        lines.append(f"**Identical masks and weights within rtol {res['rtol']:g} at every snapshot up to iteration "
                     f"{res['until']}** (every iteration up to {res['steps']}, then every {res['every']}).")
    else:
        lines.append(f"**First difference between iteration {first['after']} and {first['iteration']}:** "
                     f"{', '.join(first['tensors'])}.")
    lines += ["", f"Threshold statistics (mu, std) logged by Caffe: {res['caffe_logged_stats']}; refdns "
              f"(float32): {res['refdns_stats']}", "",
              "| iteration | mask mismatches | kept (Caffe) | max abs dW | max dW / max abs W | max abs dv | "
              "bit-identical tensors |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        k = r["iteration"]
        if not (k <= 10 or k % 50 == 0 or (first and k == first["iteration"])):
            continue
        t = r["tensors"].values()
        lines.append(f"| {k} | {sum(x['mask_mismatch'] for x in t)} | {sum(x['kept'] for x in t)} | "
                     f"{max(x['max_abs'] for x in t):.2e} | {max(x['max_rel'] for x in t):.2e} | "
                     f"{max(x['v_max_abs'] for x in t):.2e} | {sum(x['identical'] for x in t)}/{len(r['tensors'])} |")
    if res["explanation"]:
        lines += ["", "Entries whose masks differ at the first difference (|w| just before the update):", "",
                  "| tensor | index | refdns abs w | Caffe abs w | nearest threshold | ulps from it | mask refdns/Caffe |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for e in res["explanation"]:
            lines.append(f"| {e['tensor']} | {e['index']} | {e['refdns_abs_w']:.9g} | {e['caffe_abs_w']:.9g} | "
                         f"{e['threshold']:.9g} | {e['ulps_from_threshold']} | {int(e['refdns_mask'])}/"
                         f"{int(e['caffe_mask'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
