"""Deep Compression on refdns's pruned nets: bytes and test error after each stage, in the paper's Table form.

Claim under test (Han, Mao, Dally, ICLR 2016, Table 1): pruning + trained quantization + Huffman coding
compresses LeNet-300-100 40x (test error 1.64% -> 1.58%) and LeNet-5 39x (0.80% -> 0.74%) with no loss of
accuracy. Here the pruning stage is refdns's Han et al. recipe or DNS (whose sparser nets should compress
further), and the other stages are :mod:`refdns.compress`:

1. pruned net: made with the repo's recipe via :func:`refdns.pipeline.reproduce` (dense 10,000 iterations,
   then the method's recipe), or read from ``--checkpoint METHOD=PATH`` (``--dense-checkpoint PATH``: the
   dense net they came from, for the dense error);
2. weight sharing: per-layer k-means, linear initialisation, default widths (8 bits conv, 5 bits fc);
3. trained quantization: SGD with momentum on the centroids, eq. (3), masks and ties fixed
   (:func:`refdns.compress.finetune.finetune_centroids`; ``--finetune-iterations``, ``--finetune-lr``);
4. Huffman coding into a real ``.rdc`` file, read back and checked bit for bit against the fine-tuned net
   (the test error is measured on the net read back from the file).

Bytes per stage are :func:`refdns.compress.compression_report`'s (dense float32; pruned = float32 value +
relative index per entry; quantised = cluster index + relative index + codebook; Huffman = the two coded
streams + codebook; biases float32 throughout; ``.rdc`` = the file, header and checksum included).

Run: ``python validate/deep_compression.py [--quick] [--net lenet-300-100] [--methods dns,han]
[--checkpoint dns=PATH ...]``. Writes ``validate/results/deep_compression.{md,json,png}``
for LeNet-300-100, ``deep_compression_lenet-5.*`` for LeNet-5 (``..._quick.*`` with --quick; the PNG needs
matplotlib, the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from refdns import checkpoint
from refdns.atomic import write_figure, write_text
from refdns.compress import compression_report, dequantize_net, format_report, quantize_net, write_rdc
from refdns.compress.finetune import finetune_centroids
from refdns.netfiles import read_compressed
from refdns.nets.sequential import error_rate
from refdns.optim import SGDConfig
from refdns.pipeline import experiment, load_data, reproduce
from refdns.run import TrainConfig, effective_params
from refdns.train import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
# Han, Mao, Dally 2016, Table 1: (compression, error before, error after), pruned with Han et al.'s method.
PAPER = {"lenet-300-100": (40, 0.0164, 0.0158), "lenet-5": (39, 0.0080, 0.0074)}
STAGES = ("dense", "pruned", "quantized", "huffman", "rdc")


def pruned_state(net, method, data, args, dense_state, log):
    """(pruned RunState, dense RunState or None, dense error or None, where it came from)."""
    given = dict(c.split("=", 1) for c in args.checkpoint)
    if method in given:
        ck = checkpoint.load(given[method])
        if ck.state.spec.name != net:
            raise SystemExit(
                f"--checkpoint {method}={given[method]} holds a {ck.state.spec.name}, not a {net}"
            )
        log(f"{net} {method}: pruned net from {given[method]}")
        return ck.state, dense_state, None, Path(given[method]).name
    if args.quick:
        over = {"round_iterations": 300} if method == "han" else {}
        exp = experiment(
            net,
            method,
            dense_iterations=1_000,
            iterations=None if method == "han" else 1_000,
            overrides=over,
            test_interval=0,
            seed=args.seed,
        )
    else:
        exp = experiment(net, method, seed=args.seed)
    log(
        f"{net} {method}: dense {'reused' if dense_state else exp.dense.iterations}, "
        f"{method} {exp.train.iterations} iterations"
    )
    res = reproduce(exp, data, dense_state=dense_state)
    return res.pruned.state, res.dense.state, res.dense.test_error, f"recipe, seed {args.seed}"


def run_one(net, method, data, args, dense_state, log):
    t0 = time.perf_counter()
    state, dense_state, dense_err, source = pruned_state(net, method, data, args, dense_state, log)
    spec = state.spec
    if dense_err is None and dense_state is not None:
        dense_err = evaluate(dense_state, data.x_test, data.y_test)
    pruned_err = evaluate(state, data.x_test, data.y_test)
    layers = quantize_net(spec, state.params, state.masks)
    p, m = dequantize_net(layers)
    quant_err = error_rate(spec, effective_params(p, m), data.x_test, data.y_test)
    iters = 300 if args.quick else args.finetune_iterations
    cfg = TrainConfig(
        iterations=iters,
        batch_size=64,
        test_interval=max(iters // 5, 1),
        sgd=SGDConfig(base_lr=args.finetune_lr, lr_policy="fixed"),
    )
    tuned, hist = finetune_centroids(
        spec,
        layers,
        data.x_train,
        data.y_train,
        cfg,
        rng=np.random.default_rng(args.seed),
        x_test=data.x_test,
        y_test=data.y_test,
    )
    with tempfile.TemporaryDirectory() as tmp:  # the real file: its size, and the net read back from it
        path = write_rdc(Path(tmp) / f"{net}-{method}.rdc", spec.name, tuned)
        _, _, back_p, back_m = read_compressed(path)
        want_p, _ = dequantize_net(tuned)
        exact = all(np.array_equal(back_p[k].view(np.uint32), want_p[k].view(np.uint32)) for k in want_p)
        file_bytes = path.stat().st_size
        tuned_err = error_rate(spec, effective_params(back_p, back_m), data.x_test, data.y_test)
    rows = compression_report(tuned, net_name=spec.name)
    assert rows[-1]["rdc_bytes"] == file_bytes and exact
    log(
        f"{net} {method}: errors pruned {100 * pruned_err:.2f}% quantised {100 * quant_err:.2f}% "
        f"fine-tuned {100 * tuned_err:.2f}%; {rows[-1]['ratio_huffman']:.1f}x (P+Q+H), "
        f"{rows[-1]['ratio_rdc']:.1f}x (.rdc)"
    )
    return {
        "net": net,
        "method": method,
        "source": source,
        "seed": args.seed,
        "errors": {"dense": dense_err, "pruned": pruned_err, "quantized": quant_err, "finetuned": tuned_err},
        "finetune": {
            "iterations": iters,
            "batch_size": 64,
            "base_lr": args.finetune_lr,
            "lr_policy": "fixed",
            "momentum": cfg.sgd.momentum,
            "weight_decay": cfg.sgd.weight_decay,
            "test_error_history": hist,
        },
        "bits": {la.name: la.bits for la in tuned},
        "clusters": {la.name: la.n_clusters for la in tuned},
        "rdc_round_trip_exact": exact,
        "rdc_bytes": file_bytes,
        "layers": rows,
        "seconds": time.perf_counter() - t0,
    }, dense_state


def pct(v):
    return "-" if v is None else f"{100 * v:.2f}%"


def markdown(results, args) -> str:
    lines = [
        "# Deep Compression on refdns's pruned nets",
        "",
        f"`python validate/deep_compression.py{' --quick' if args.quick else ''}` - seed {args.seed}; "
        f"weight sharing at 8 bits conv / 5 bits fc, relative indices 8 conv / 5 fc; centroid fine-tuning "
        f"{results[0]['finetune']['iterations']} iterations at lr {args.finetune_lr} (fixed), momentum 0.9, "
        "batch 64. Errors are MNIST test errors; the fine-tuned error is measured on the net read back from "
        "the `.rdc` file (bit-for-bit equal to the fine-tuned net).",
        "",
        "| net | pruning | kept weights | dense / P | dense / P+Q | dense / P+Q+H | dense / .rdc "
        "| error dense | pruned | quantised | + fine-tuned | paper (Han et al. 2016) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        t, e = r["layers"][-1], r["errors"]
        ratio, before, after = PAPER[r["net"]]
        lines.append(
            f"| {r['net']} | {r['method']} | {100 * t['density']:.2f}% | {t['ratio_pruned']:.1f}x "
            f"| {t['ratio_quantized']:.1f}x | {t['ratio_huffman']:.1f}x | {t['ratio_rdc']:.1f}x "
            f"| {pct(e['dense'])} | {pct(e['pruned'])} | {pct(e['quantized'])} | {pct(e['finetuned'])} "
            f"| {ratio}x, {100 * before:.2f}% -> {100 * after:.2f}% |"
        )
    for r in results:
        lines += ["", format_report(r["layers"], title=f"{r['net']}, {r['method']} pruning ({r['source']})")]
    return "\n".join(lines) + "\n"


def plot(results, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        t = r["layers"][-1]
        kb = [t[f"{s}_bytes"] / 1000 for s in STAGES]
        bars = ax.bar(np.arange(len(STAGES)) + i * width, kb, width, label=f"{r['net']} {r['method']}")
        for b, v in zip(bars, kb, strict=True):
            ax.annotate(
                f"{v:.0f}" if v >= 10 else f"{v:.1f}",
                (b.get_x() + b.get_width() / 2, v),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(np.arange(len(STAGES)) + width * (len(results) - 1) / 2)
    ax.set_xticklabels(["dense", "pruned (P)", "quantised (P+Q)", "Huffman (P+Q+H)", ".rdc file"])
    ax.set_yscale("log")
    ax.set_ylabel("kB")
    ax.set_title("Deep Compression: bytes per stage")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    write_figure(path, fig, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test of the whole pipeline)")
    ap.add_argument("--net", default="lenet-300-100", choices=sorted(PAPER))
    ap.add_argument("--methods", default="dns,han")
    ap.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="METHOD=PATH",
        help="use this pruned checkpoint instead of making one (repeatable)",
    )
    ap.add_argument(
        "--dense-checkpoint",
        metavar="PATH",
        help="the dense net the given pruned ones started from "
        "(for the dense error column, and as the start of any pruned net made here)",
    )
    ap.add_argument("--finetune-iterations", type=int, default=2_000)
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=os.environ.get("REFDNS_DATA"))
    ap.add_argument("--out-dir", default=str(RESULTS))
    args = ap.parse_args(argv)
    for c in args.checkpoint:
        if "=" not in c:
            ap.error(f"--checkpoint {c!r}: expected METHOD=PATH")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    data = load_data("mnist", data_dir=args.data_dir)
    results, dense_state = [], None
    if args.dense_checkpoint:
        dense_state = checkpoint.load(args.dense_checkpoint).state
    for method in args.methods.split(","):
        r, dense_state = run_one(args.net, method, data, args, dense_state, log)
        results.append(r)
    out = Path(args.out_dir)
    stem = "deep_compression" + ("" if args.net == "lenet-300-100" else f"_{args.net}")
    stem += "_quick" if args.quick else ""
    write_text(
        out / f"{stem}.json",
        json.dumps({"paper": PAPER, "results": results}, indent=1, sort_keys=True, allow_nan=False) + "\n",
    )
    md = markdown(results, args)
    write_text(out / f"{stem}.md", md)
    if not plot(results, out / f"{stem}.png"):
        log("matplotlib not installed: no PNG (pip install 'refdns[plot]')")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
