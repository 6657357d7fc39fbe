"""Side by side with the original: refdns against the DNS authors' own Caffe, step by step.

Both start from the same ``.caffemodel`` (the authors' dense ``caffe_lenet300100_original.caffemodel`` or
``caffe_lenet5_original.caffemodel``) with the same solver (Caffe's MNIST LeNet recipe), the same DNS settings
(read from the DNS train prototxt given), the training set in Caffe's file order (``data_order="caffe"``) and
the same mask-update draws (``draws="caffe"``: glibc ``rand()`` never seeded, the fork's float32 arithmetic).

Caffe runs twice (it is deterministic on one thread): once with ``snapshot: 1`` for the first ``--steps``
iterations, once with ``snapshot: --every`` up to ``--until``. Each snapshot (``.caffemodel`` +
``.solverstate``)
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

# Caffe's MNIST LeNet solver (BVLC examples/mnist/lenet_solver.prototxt); refdns's SGDConfig defaults.
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

        def num(key, block=block, name=name):
            m = re.search(rf"\b{key}:\s*([-+0-9.eE]+)", block)
            if m is None:
                raise ValueError(
                    f"layer {name}: no {key} in the prototxt (give every DNS setting explicitly)"
                )
            return float(m.group(1))

        out[name] = DNSLayerConfig(
            c_rate=num("c_rate"), gamma=num("gamma"), power=num("power"), iter_stop=int(num("iter_stop"))
        )
    return out


def run_caffe(
    caffe: Path,
    root: Path,
    net: Path,
    weights: Path,
    workdir: Path,
    *,
    max_iter: int,
    snapshot: int,
    tag: str,
    env_extra: dict | None = None,
    test_at_end: bool = False,
) -> tuple[Path, float, str]:
    """One ``caffe train`` run; returns the snapshot prefix, the wall time and the log.

    Without ``env_extra`` the run has the never-seeded rand() stream; with ``test_at_end`` Caffe tests the
    final net on the whole test set (100 batches of 100)."""
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = workdir / tag
    solver = workdir / f"{tag}_solver.prototxt"
    text = SOLVER.format(
        net=net,
        test_interval=max_iter if test_at_end else max_iter + 1,
        max_iter=max_iter,
        snapshot=snapshot,
        prefix=prefix,
    )
    if test_at_end:
        text = text.replace("test_iter: 1\n", "test_iter: 100\n")
    solver.write_text(text)
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "GLOG_logtostderr": "1"}
    env.pop("LD_PRELOAD", None)
    env |= env_extra or {}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(caffe), "train", f"--solver={solver}", f"--weights={weights}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    (workdir / f"{tag}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(
            f"caffe exited with {proc.returncode}; log: {workdir / f'{tag}.log'}\n" + proc.stderr[-2000:]
        )
    return prefix, seconds, proc.stderr


def caffe_stats_from_log(log: str) -> list[tuple[float, float, int]]:
    """The ``mu  std  ncount`` lines the fork's CInnerProduct logs at iteration 0 (not the conv layer)."""
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


def _g3(x) -> float:
    return float(f"{float(x):.3g}")


def compare(state, caffe: tuple[dict, dict, dict]) -> dict:
    params, masks, velocity = caffe
    row = {}
    for key in state.params:
        w_ref, w_caffe = state.params[key], params[key]
        scale = float(np.abs(w_caffe).max()) or 1.0
        row[key] = {
            "mask_mismatch": int(np.count_nonzero(state.masks[key] != masks[key])),
            "kept": int(np.count_nonzero(masks[key])),
            "max_abs": _g3(np.abs(w_ref - w_caffe).max()),
            "max_rel": _g3(np.abs(w_ref - w_caffe).max() / scale),
            "v_max_abs": _g3(np.abs(state.velocity[key] - velocity[key]).max()),
            "identical": bool(np.array_equal(w_ref, w_caffe)),
        }
    return row


def explain_mask_mismatch(
    prev_ref: dict, prev_caffe: dict, state_before, now_ref_masks, now_caffe_masks, method_state, limit=5
) -> list[dict]:
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
            out.append(
                {
                    "tensor": key,
                    "index": int(i),
                    "refdns_abs_w": float(wr),
                    "caffe_abs_w": float(wc),
                    "threshold": float(edge),
                    "ulps_from_threshold": ulps,
                    "refdns_mask": bool(m.ravel()[i]),
                    "caffe_mask": bool(now_caffe_masks[key].ravel()[i]),
                }
            )
    return out


def _dns_run(spec, layers, x, y, iterations, *, draws, srand_seed=1, data_order="caffe", seed=0, params=None):
    method = DNS(DNSConfig(layers=layers, draws=draws, srand_seed=srand_seed))
    cfg = TrainConfig(iterations=iterations, test_interval=0, data_order=data_order)
    state = new_run(spec, len(x), cfg, seed=seed, params=params)
    t0 = time.perf_counter()
    train(state, x, y, cfg, method=method)
    return state, time.perf_counter() - t0


def _kept(masks: dict, spec) -> dict[str, float]:
    return {
        n: float(np.count_nonzero(masks[f"{n}.weight"])) / masks[f"{n}.weight"].size for n in spec.layer_names
    }


def speed(args, caffe, root, spec, layers, x, y, params) -> dict:
    """The same DNS run (``--until`` iterations, no snapshots or tests) in both, one thread each, in turn."""
    work = Path(tempfile.mkdtemp(prefix="caffe_speed_"))
    _, caffe_secs, _ = run_caffe(
        caffe,
        root,
        args.prototxt.resolve(),
        args.model.resolve(),
        work,
        max_iter=args.until,
        snapshot=0,
        tag="speed",
    )
    shutil.rmtree(work, ignore_errors=True)
    print(f"caffe: {args.until} iterations in {caffe_secs:.1f} s", flush=True)
    _dns_run(spec, layers, x, y, 50, draws="caffe", params=params)  # compile / load the Numba kernels untimed
    _, ref_secs = _dns_run(spec, layers, x, y, args.until, draws="caffe", params=params)
    print(
        f"refdns: {args.until} iterations in {ref_secs:.1f} s; "
        f"ratio caffe/refdns {caffe_secs / ref_secs:.2f}",
        flush=True,
    )
    return {
        "iterations": args.until,
        "caffe_seconds": caffe_secs,
        "refdns_seconds": ref_secs,
        "caffe_over_refdns": caffe_secs / ref_secs,
    }


def seeds(args, caffe, root, spec, layers, x, y, params, out: Path) -> dict:
    """Per seed: Caffe with srand(seed) (the shim), refdns's own draws in Caffe's order and shuffled."""
    x_test, y_test = load_mnist(
        "test", data_dir=args.data_dir or os.environ.get("REFDNS_DATA"), download=False
    )
    from refdns.train import evaluate

    work = Path(tempfile.mkdtemp(prefix="caffe_seeds_"))
    shim = work / "srand_shim.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(shim), str(args.shim)], check=True)
    res = json.loads(out.read_text()) if out.exists() else {"runs": []}
    done = {(r["impl"], r["seed"]) for r in res["runs"]}
    test_prototxt = args.prototxt.resolve()
    for seed in args.seeds:
        if ("caffe", seed) not in done and "caffe" in args.impls:
            env_extra = {"LD_PRELOAD": str(shim), "DNS_SRAND": str(seed)}
            prefix, secs, log = run_caffe(
                caffe,
                root,
                test_prototxt,
                args.model.resolve(),
                work,
                max_iter=args.until,
                snapshot=0,
                tag=f"seed{seed}",
                env_extra=env_extra,
                test_at_end=True,
            )
            acc = [float(m) for m in re.findall(r"Test net output #\d+: accuracy = ([0-9.]+)", log)]
            layers_c = read_caffemodel(f"{prefix}_iter_{args.until}.caffemodel")
            _, masks = caffemodel_to_params(layers_c, spec.layer_names, spec.param_shapes())
            res["runs"].append(
                {
                    "impl": "caffe",
                    "seed": seed,
                    "test_error": 1 - acc[-1],
                    "kept": _kept(masks, spec),
                    "seconds": secs,
                }
            )
            out.write_text(json.dumps(res, indent=1))
            out.with_suffix(".md").write_text(render_seeds(res))
            print(res["runs"][-1], flush=True)
        for order in ("caffe", "shuffled"):
            impl = "refdns-fileorder" if order == "caffe" else "refdns-shuffled"
            if (impl, seed) in done or impl not in args.impls:
                continue
            state, secs = _dns_run(
                spec, layers, x, y, args.until, draws="numpy", data_order=order, seed=seed, params=params
            )
            res["runs"].append(
                {
                    "impl": impl,
                    "seed": seed,
                    "test_error": evaluate(state, x_test, y_test),
                    "kept": _kept(state.masks, spec),
                    "seconds": secs,
                }
            )
            out.write_text(json.dumps(res, indent=1))
            out.with_suffix(".md").write_text(render_seeds(res))
            print(res["runs"][-1], flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return res


class _ReversedBatches:
    """The same batches, each in reverse order: only the order of the float32 sums over the batch changes."""

    def __init__(self, stream):
        self.stream = stream

    def next_indices(self):
        return self.stream.next_indices()[::-1]


def chaos(args, spec, layers, x, y, params) -> dict:
    """refdns against itself with each batch reversed (the same sums, added in another order).

    If refdns and Caffe part only through float rounding, two refdns runs that differ only in summation order
    must part at the same pace: this measures that pace at the same checkpoints as the Caffe comparison.
    """
    method = DNS(DNSConfig(layers=layers, draws="caffe", srand_seed=1))
    cfg = TrainConfig(iterations=args.until, test_interval=0, data_order="caffe")
    a = new_run(spec, len(x), cfg, seed=0, params=params)
    b = new_run(spec, len(x), cfg, seed=0, params=params)
    b.data = _ReversedBatches(b.data)
    rows = []
    for k in range(args.every, args.until + 1, args.every):
        train(a, x, y, cfg, method=method, until=k)
        train(b, x, y, cfg, method=method, until=k)
        row = {
            "iteration": k,
            "mask_mismatch": sum(int(np.count_nonzero(a.masks[key] != b.masks[key])) for key in a.masks),
            "max_rel": max(
                float(np.abs(a.params[key] - b.params[key]).max()) / float(np.abs(a.params[key]).max())
                for key in a.params
            ),
        }
        rows.append(row)
        print(row, flush=True)
    return {"every": args.every, "until": args.until, "rows": rows}


def window(args, caffe, root, spec, layers, x, y, params) -> dict:
    """Every iteration from ``--start`` to ``--until``: Caffe snapshots each step (earlier ones are deleted as
    they appear), refdns is compared at each, and every entry whose mask differs is shown beside its
    threshold."""
    work = Path(tempfile.mkdtemp(prefix="caffe_window_"))
    prefix = work / "w"
    solver = work / "w_solver.prototxt"
    solver.write_text(
        SOLVER.format(
            net=args.prototxt.resolve(),
            test_interval=args.until + 1,
            max_iter=args.until,
            snapshot=1,
            prefix=prefix,
        )
    )
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "GLOG_logtostderr": "1"}
    env.pop("LD_PRELOAD", None)
    with open(work / "w.log", "w") as log:
        proc = subprocess.Popen(
            [str(caffe), "train", f"--solver={solver}", f"--weights={args.model.resolve()}"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=log,
        )
        while proc.poll() is None:  # keep only the window's snapshots (4 MB each)
            for f in work.glob("w_iter_*"):
                if int(f.name.split("_")[2].split(".")[0]) < args.start - 1:
                    f.unlink(missing_ok=True)
            time.sleep(0.2)
    if proc.returncode != 0:
        raise RuntimeError(f"caffe exited with {proc.returncode}; log in {work / 'w.log'}")
    method = DNS(DNSConfig(layers=layers, draws="caffe", srand_seed=1))
    cfg = TrainConfig(iterations=args.until, test_interval=0, data_order="caffe")
    state = new_run(spec, len(x), cfg, seed=0, params=params)
    train(state, x, y, cfg, method=method, until=args.start - 1)
    prev_caffe, prev_caffe_masks, _ = read_snapshot(prefix, args.start - 1, spec)
    rows, events = [], []
    for k in range(args.start, args.until + 1):
        prev_ref = {kk: v.copy() for kk, v in state.params.items()}
        prev_masks = {kk: v.copy() for kk, v in state.masks.items()}
        n_rec = len(state.history.mask_updates)
        train(state, x, y, cfg, method=method, until=k)
        snap = read_snapshot(prefix, k, spec)
        row = compare(state, snap)
        mm = sum(r["mask_mismatch"] for r in row.values())
        rows.append(
            {
                "iteration": k,
                "mask_mismatch": mm,
                "max_rel": max(r["max_rel"] for r in row.values()),
                "fired": [r.layer for r in state.history.mask_updates[n_rec:]],
            }
        )
        if (
            len(rows) > 1
            and rows[-1]["max_rel"] > 4 * max(rows[-2]["max_rel"], 1e-9)
            and "jump" not in locals()
        ):
            jump = relu_flips(
                spec,
                prev_ref,
                prev_masks,
                prev_caffe,
                prev_caffe_masks,
                x,
                (k - 1) * cfg.batch_size,
                cfg.batch_size,
            )
            jump = {
                "iteration": k,
                "rel_before": rows[-2]["max_rel"],
                "rel_after": rows[-1]["max_rel"],
                "per_tensor": {kk: r["max_rel"] for kk, r in row.items()},
            } | jump
            print("jump:", jump, flush=True)
        if mm:
            for e in explain_mask_mismatch(
                prev_ref, prev_caffe, None, state.masks, snap[1], state.method_state
            ):
                events.append({"iteration": k} | e)
        if mm or k % 10 == 0:
            print(rows[-1], flush=True)
        prev_caffe, prev_caffe_masks = snap[0], snap[1]
    shutil.rmtree(work, ignore_errors=True)
    return {
        "start": args.start,
        "until": args.until,
        "rows": rows,
        "mask_events": events[:50],
        "jump": locals().get("jump"),
    }


def kink(args, caffe, root, spec, x, y, params, layers) -> dict:
    """Iteration ``--start`` (K) in both, from their own states after K iterations: the weights before and
    after, the ReLU inputs whose sign differs on K's batch, and the entry that differs most afterwards.

    Caffe runs to K and to K+1 with only the final snapshot, so no per-step snapshots are needed."""
    k0 = args.start
    work = Path(tempfile.mkdtemp(prefix="caffe_kink_"))
    for k in (k0, k0 + 1):
        run_caffe(
            caffe,
            root,
            args.prototxt.resolve(),
            args.model.resolve(),
            work,
            max_iter=k,
            snapshot=0,
            tag=f"k{k}",
        )
    method = DNS(DNSConfig(layers=layers, draws="caffe", srand_seed=1))
    cfg = TrainConfig(iterations=k0 + 1, test_interval=0, data_order="caffe")
    st = new_run(spec, len(x), cfg, seed=0, params=params)
    train(st, x, y, cfg, method=method, until=k0)
    pc, _, _ = read_snapshot(work / f"k{k0}", k0, spec)
    before = {k: v.copy() for k, v in st.params.items()}
    train(st, x, y, cfg, method=method, until=k0 + 1)
    pc1, mc1, _ = read_snapshot(work / f"k{k0 + 1}", k0 + 1, spec)
    shutil.rmtree(work, ignore_errors=True)
    res = {
        "iteration": k0,
        "rel_before": {k: _g3(np.abs(before[k] - pc[k]).max() / np.abs(pc[k]).max()) for k in pc},
        "rel_after": {k: _g3(np.abs(st.params[k] - pc1[k]).max() / np.abs(pc1[k]).max()) for k in pc1},
        "masks_equal_after": all(np.array_equal(st.masks[k], mc1[k]) for k in mc1),
    }
    # the step's forward used the masks after its own update, which both hold (checked above)
    res |= relu_flips(spec, before, st.masks, pc, mc1, x, k0 * cfg.batch_size, cfg.batch_size)
    for key in st.params:
        d = np.abs(st.params[key] - pc1[key])
        i = np.unravel_index(d.argmax(), d.shape)
        res.setdefault("worst", {})[key] = {
            "index": [int(v) for v in i],
            "refdns": float(st.params[key][i]),
            "caffe": float(pc1[key][i]),
        }
    return res


def relu_flips(spec, p_ref, m_ref, p_caffe, m_caffe, x, start, n) -> dict:
    """The batch of iteration k-1 through both nets as they were before it: every kink taken differently.

    ReLU: inputs whose sign differs between refdns's and Caffe's weights. Max pooling (2x2, stride 2): windows
    whose winner differs, with the gap between the two largest inputs. Masks as the step used them."""
    from refdns.nets.sequential import forward

    idx = (start + np.arange(n)) % len(x)
    xb = x[idx]
    outs = []
    for p, m in ((p_ref, m_ref), (p_caffe, m_caffe)):
        _, cache = forward(spec, {k: p[k] * m[k] for k in p}, xb, keep_outputs=True)
        outs.append(cache.outputs)
    flips = []
    for i, op in enumerate(spec.ops):
        if i == 0 or op.kind not in ("relu", "pool"):
            continue
        a, b = outs[0][i - 1], outs[1][i - 1]  # the op's input in each run
        where = spec.ops[i - 1].name or spec.ops[i - 1].kind
        if op.kind == "relu":
            for s_, u in np.argwhere((a > 0) != (b > 0))[:10]:
                flips.append(
                    {
                        "kink": f"relu after {where}",
                        "sample": int(s_),
                        "unit": int(u),
                        "input_refdns": float(a[s_, u]),
                        "input_caffe": float(b[s_, u]),
                    }
                )
        else:
            N, C, H, W = a.shape
            k = op.size

            def windows(t, k=k, N=N, C=C, H=H, W=W):
                t = t[:, :, : H // k * k, : W // k * k].reshape(N, C, H // k, k, W // k, k)
                return t.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H // k, W // k, k * k)

            wa, wb = windows(a), windows(b)
            ga, gb = wa.argmax(-1), wb.argmax(-1)
            for pos in np.argwhere(ga != gb)[:10]:
                va, vb = wa[tuple(pos)], wb[tuple(pos)]
                top = np.sort(va)[-2:]
                flips.append(
                    {
                        "kink": f"max pool after {where}",
                        "sample": int(pos[0]),
                        "unit": [int(v) for v in pos[1:]],
                        "winner_refdns": int(ga[tuple(pos)]),
                        "winner_caffe": int(gb[tuple(pos)]),
                        "top_two_refdns": [float(t) for t in top],
                        "top_two_caffe": [float(t) for t in np.sort(vb)[-2:]],
                    }
                )
    return {"relu_flips": flips}


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
    ap.add_argument(
        "--rtol", type=float, default=1e-4, help="largest |dW| / max|W| still 'the same' (float32)"
    )
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--workdir", type=Path, default=None, help="keep Caffe's snapshots here (default: a temp dir)"
    )
    ap.add_argument("--quick", action="store_true", help="--steps 20 --until 200 --every 50")
    ap.add_argument(
        "--mode",
        default="steps",
        choices=["steps", "speed", "seeds", "chaos", "window", "kink"],
        help="steps: the step-by-step comparison; speed: wall time of --until iterations in each; "
        "seeds: final kept fractions and test errors over --seeds; chaos: refdns against itself "
        "with each batch summed in reverse order; window: every step from --start to --until; "
        "kink: iteration --start in both, which ReLU inputs changed sign",
    )
    ap.add_argument("--start", type=int, default=1, help="window mode: the first iteration compared")
    ap.add_argument("--seeds", type=lambda v: [int(s) for s in v.split(",")], default=[1, 2, 3, 4, 5])
    ap.add_argument(
        "--impls",
        type=lambda v: v.split(","),
        default=["caffe", "refdns-fileorder", "refdns-shuffled"],
        help="seeds mode: which of caffe, refdns-fileorder, refdns-shuffled to run (one process per "
        "implementation, each with its own --out, uses both cores; merge the JSON files afterwards)",
    )
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="do not run anything; merge these seeds results into --out (and its .md)",
    )
    ap.add_argument(
        "--shim", type=Path, help="seeds mode: srand_shim.c (seeds Caffe's rand() from $DNS_SRAND)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="results JSON (default validate/results/caffe_peer_<net>.json)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.until, args.every = 20, 200, 50
    if args.merge:  # joins finished results: no net, model or data needed
        out = args.out or RESULTS / f"caffe_peer_{args.net}_seeds.json"
        merge_seeds(args.merge, out)
        print(f"wrote {out}")
        return 0
    caffe = args.caffe.resolve()
    root = (args.caffe_root or caffe.parents[3]).resolve()
    spec = get_spec(args.net)
    layers = dns_layers_from_prototxt(args.prototxt.read_text())
    method = DNS(DNSConfig(layers=layers, draws="caffe", srand_seed=1))
    method.config.check_net(spec)
    cfg = TrainConfig(iterations=args.until, test_interval=0, data_order="caffe")
    data_dir = args.data_dir or os.environ.get("REFDNS_DATA")
    x, y = load_mnist("train", data_dir=data_dir, download=False)
    if args.mode != "steps":
        params, _ = caffemodel_to_params(read_caffemodel(args.model), spec.layer_names, spec.param_shapes())
        out = args.out or RESULTS / f"caffe_peer_{args.net}_{args.mode}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        if args.mode == "kink":
            out.write_text(json.dumps(kink(args, caffe, root, spec, x, y, params, layers), indent=1))
        elif args.mode == "window":
            out.write_text(json.dumps(window(args, caffe, root, spec, layers, x, y, params), indent=1))
        elif args.mode == "chaos":
            out.write_text(json.dumps(chaos(args, spec, layers, x, y, params), indent=1))
        elif args.mode == "speed":
            out.write_text(json.dumps(speed(args, caffe, root, spec, layers, x, y, params), indent=1))
        else:
            seeds(args, caffe, root, spec, layers, x, y, params, out)
        print(f"wrote {out}")
        return 0

    work = args.workdir or Path(tempfile.mkdtemp(prefix="caffe_peer_"))
    print(f"caffe snapshots in {work}", flush=True)
    prefix_a, secs_a, log_a = run_caffe(
        caffe,
        root,
        args.prototxt.resolve(),
        args.model.resolve(),
        work,
        max_iter=args.steps,
        snapshot=1,
        tag="every1",
    )
    prefix_b, secs_b, _ = run_caffe(
        caffe,
        root,
        args.prototxt.resolve(),
        args.model.resolve(),
        work,
        max_iter=args.until,
        snapshot=args.every,
        tag=f"every{args.every}",
    )
    print(
        f"caffe: {args.steps} its with a snapshot each in {secs_a:.1f} s; {args.until} its in {secs_b:.1f} s",
        flush=True,
    )

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
                explanation = explain_mask_mismatch(
                    prev_ref, prev_caffe, None, state.masks, snap[1], state.method_state
                )
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
    stats_ref = [
        (float(state.method_state[f"{n}.mu"]), float(state.method_state[f"{n}.std"])) for n in layers
    ]
    result = {
        "net": args.net,
        "model": args.model.name,
        "prototxt": args.prototxt.name,
        "dns": {n: vars(lc) for n, lc in layers.items()},
        "steps": args.steps,
        "until": args.until,
        "every": args.every,
        "rtol": args.rtol,
        "first_difference": first,
        "explanation": explanation,
        "caffe_logged_stats": stats_caffe,
        "refdns_stats": stats_ref,
        "caffe_seconds": {"every1": secs_a, f"every{args.every}": secs_b},
        "refdns_seconds": refdns_secs,
        "rows": rows,
    }
    out = args.out or RESULTS / f"caffe_peer_{args.net}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(render(result))
    out.write_text(json.dumps(slim(result), separators=(",", ":")))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def render_seeds(res: dict) -> str:
    """Per implementation: kept fraction per layer and test error, mean +- sd over the seeds run."""
    impls = sorted(
        {r["impl"] for r in res["runs"]}, key=["caffe", "refdns-fileorder", "refdns-shuffled"].index
    )
    layers = list(res["runs"][0]["kept"])
    lines = [
        "| implementation | seeds | " + " | ".join(f"{n} kept %" for n in layers) + " | test error % |",
        "|---|---|" + "---:|" * (len(layers) + 1),
    ]
    for impl in impls:
        runs = [r for r in res["runs"] if r["impl"] == impl]

        def ms(vals):
            v = 100 * np.asarray(vals)
            return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"

        cells = [ms([r["kept"][n] for r in runs]) for n in layers] + [ms([r["test_error"] for r in runs])]
        lines.append(f"| {impl} | {','.join(str(r['seed']) for r in runs)} | " + " | ".join(cells) + " |")
    caffe = [r for r in res["runs"] if r["impl"] == "caffe"]
    others = [i for i in impls if i != "caffe"]
    if len(caffe) > 1 and others:
        lines += [
            "",
            "Differences of the means from Caffe's, in points, with Welch's t (a |t| above about 2.3 is"
            " outside the seed spread at these sample sizes):",
            "",
            "| | " + " | ".join(f"{n} kept" for n in layers) + " | test error |",
            "|---|" + "---:|" * (len(layers) + 1),
        ]
        for impl in others:
            runs = [r for r in res["runs"] if r["impl"] == impl]
            if len(runs) < 2:
                continue
            cells = []
            for get in [lambda r, n=n: r["kept"][n] for n in layers] + [lambda r: r["test_error"]]:
                a = 100 * np.asarray([get(r) for r in runs])
                c = 100 * np.asarray([get(r) for r in caffe])
                se = np.sqrt(a.var(ddof=1) / len(a) + c.var(ddof=1) / len(c))
                d = a.mean() - c.mean()
                cells.append(f"{d:+.3f} (t {d / se:+.1f})" if se > 0 else f"{d:+.3f}")
            lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def merge_seeds(paths: list[Path], out: Path) -> dict:
    """One seeds result from several (one process per implementation): runs concatenated, first wins."""
    res: dict = {"runs": []}
    seen = set()
    for path in paths:
        for r in json.loads(path.read_text())["runs"]:
            if (r["impl"], r["seed"]) not in seen:
                seen.add((r["impl"], r["seed"]))
                res["runs"].append(r)
    res["runs"].sort(key=lambda r: (r["seed"], r["impl"]))
    out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(render_seeds(res))
    return res


def slim(res: dict) -> dict:
    """Per-tensor rows only up to the first difference and at the --every checkpoints; totals elsewhere."""
    first = (res["first_difference"] or {}).get("iteration", res["until"])
    rows = []
    for r in res["rows"]:
        k, t = r["iteration"], r["tensors"]
        if k <= 10 or k % res["every"] == 0 or k == first:
            rows.append(r)
        else:
            rows.append(
                {
                    "iteration": k,
                    "mask_mismatch": sum(x["mask_mismatch"] for x in t.values()),
                    "max_rel": max(x["max_rel"] for x in t.values()),
                    "v_max_abs": max(x["v_max_abs"] for x in t.values()),
                }
            )
    return res | {"rows": rows}


def render(res: dict) -> str:
    lines = [
        f"# refdns vs the authors' Caffe, step by step: {res['net']}",
        "",
        f"Start: `{res['model']}`; net `{res['prototxt']}`; DNS {res['dns']}; Caffe's MNIST solver; "
        "data in file order; draws: glibc rand() never seeded.",
        "",
    ]
    first = res["first_difference"]
    if first is None:
        lines.append(
            f"**Identical masks and weights within rtol {res['rtol']:g} at every snapshot up to iteration "
            f"{res['until']}** (every iteration up to {res['steps']}, then every {res['every']})."
        )
    else:
        lines.append(
            f"**First difference between iteration {first['after']} and {first['iteration']}:** "
            f"{', '.join(first['tensors'])}."
        )
    lines += [
        "",
        f"Threshold statistics (mu, std) logged by Caffe: {res['caffe_logged_stats']}; refdns "
        f"(float32): {res['refdns_stats']}",
        "",
        "| iteration | mask mismatches | kept (Caffe) | max abs dW | max dW / max abs W | max abs dv | "
        "bit-identical tensors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        k = r["iteration"]
        if not (k <= 10 or k % 50 == 0 or (first and k == first["iteration"])):
            continue
        t = r["tensors"].values()
        lines.append(
            f"| {k} | {sum(x['mask_mismatch'] for x in t)} | {sum(x['kept'] for x in t)} | "
            f"{max(x['max_abs'] for x in t):.2e} | {max(x['max_rel'] for x in t):.2e} | "
            f"{max(x['v_max_abs'] for x in t):.2e} | {sum(x['identical'] for x in t)}/{len(r['tensors'])} |"
        )
    if res["explanation"]:
        lines += [
            "",
            "Entries whose masks differ at the first difference (|w| just before the update):",
            "",
            "| tensor | index | refdns abs w | Caffe abs w | nearest threshold | ulps from it "
            "| mask refdns/Caffe |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for e in res["explanation"]:
            lines.append(
                f"| {e['tensor']} | {e['index']} | {e['refdns_abs_w']:.9g} | {e['caffe_abs_w']:.9g} | "
                f"{e['threshold']:.9g} | {e['ulps_from_threshold']} | {int(e['refdns_mask'])}/"
                f"{int(e['caffe_mask'])} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
