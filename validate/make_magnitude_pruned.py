"""Magnitude-prune a dense checkpoint to given per-layer densities (a stand-in for a DNS checkpoint).

Keeps, in every layer, the ``density`` fraction of weights with the largest |w| (ties broken by position);
biases are kept whole. ``--retrain N`` then trains N iterations with the masks fixed and pruned weights held
at exactly zero (Han et al.'s retraining step, Caffe's solver from its start), so the stand-in is also a
working classifier; the result is for timing and storage studies, not for accuracy claims. The defaults are the DNS paper's LeNet-5 densities (Guo et al. 2016, Table 1: conv1 14.2%,
conv2 3.1%, ip1 0.7%, ip2 4.3%).

    python validate/make_magnitude_pruned.py DENSE.h5 OUT.h5 [--density conv1=0.142,...] [--retrain 300
        --data-dir DIR]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from refdns import checkpoint
from refdns.prune.base import PruningMethod


class FixedMasks(PruningMethod):
    """Retraining with the masks frozen and masked weights (and their momentum) held at zero."""

    name = "magnitude-standin"
    grad_through_mask = False

DNS_LENET5 = {"conv1": 0.142, "conv2": 0.031, "ip1": 0.007, "ip2": 0.043}
DNS_LENET300 = {"ip1": 0.018, "ip2": 0.018, "ip3": 0.055}


def magnitude_masks(params: dict[str, np.ndarray], density: dict[str, float]) -> dict[str, np.ndarray]:
    """Masks keeping the round(density * size) largest-|w| weights of each listed layer; biases all kept."""
    masks = {}
    for key, w in params.items():
        layer, kind = key.split(".")
        if kind == "bias" or layer not in density:
            masks[key] = np.ones(w.shape, dtype=bool)
            continue
        keep = int(round(density[layer] * w.size))
        order = np.argsort(-np.abs(w).ravel(), kind="stable")
        m = np.zeros(w.size, dtype=bool)
        m[order[:keep]] = True
        masks[key] = m.reshape(w.shape)
    return masks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dense")
    ap.add_argument("out")
    ap.add_argument("--density", help="layer=fraction,... (default: the DNS paper's densities for the net)")
    ap.add_argument("--retrain", type=int, default=0, help="iterations of fixed-mask retraining (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", help="folder holding mnist/ (for --retrain)")
    args = ap.parse_args()
    ck = checkpoint.load(args.dense)
    st = ck.state
    if args.density:
        density = {k: float(v) for k, v in (p.split("=") for p in args.density.split(","))}
    else:
        density = DNS_LENET5 if st.spec.name == "lenet-5" else DNS_LENET300
    unknown = set(density) - set(st.spec.layer_names)
    if unknown:
        print(f"unknown layers {sorted(unknown)}; {st.spec.name} has {list(st.spec.layer_names)}", file=sys.stderr)
        return 2
    st.masks = magnitude_masks(st.params, density)
    cfg = dict(ck.config, magnitude_standin={"from": args.dense, "density": density, "retrain": args.retrain})
    if args.retrain > 0:
        from refdns.datasets import load_mnist
        from refdns.run import TrainConfig, new_run
        from refdns.train import evaluate, train

        x, y = load_mnist("train", data_dir=args.data_dir)
        xt, yt = load_mnist("test", data_dir=args.data_dir)
        tcfg = TrainConfig(iterations=args.retrain, test_interval=0)
        params = {k: v * st.masks[k] for k, v in st.params.items()}
        run = new_run(st.spec, len(x), tcfg, seed=args.seed, params=params, masks=st.masks)
        print(f"before retraining: test error {100 * evaluate(run, xt, yt):.2f}%")
        st = train(run, x, y, tcfg, method=FixedMasks())
        print(f"after {args.retrain} iterations: test error {100 * evaluate(st, xt, yt):.2f}%")
    checkpoint.save(args.out, st, method="magnitude-standin", config=cfg)
    for layer in st.spec.layer_names:
        m = st.masks[f"{layer}.weight"]
        print(f"{layer}: kept {m.sum():,} of {m.size:,} ({100 * m.mean():.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
