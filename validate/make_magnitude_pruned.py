"""Magnitude-prune a dense checkpoint to given per-layer densities (a stand-in for a DNS checkpoint).

Keeps, in every layer, the ``density`` fraction of weights with the largest |w| (ties broken by position);
biases are kept whole. No retraining: the result is for timing and storage studies, not for accuracy
claims. The defaults are the DNS paper's LeNet-5 densities (Guo et al. 2016, Table 1: conv1 14.2%,
conv2 3.1%, ip1 0.7%, ip2 4.3%).

    python validate/make_magnitude_pruned.py DENSE.h5 OUT.h5 [--density conv1=0.142,conv2=0.031,...]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from refdns import checkpoint

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
    cfg = dict(ck.config, magnitude_standin={"from": args.dense, "density": density})
    checkpoint.save(args.out, st, method="magnitude-standin", config=cfg)
    for layer in st.spec.layer_names:
        m = st.masks[f"{layer}.weight"]
        print(f"{layer}: kept {m.sum():,} of {m.size:,} ({100 * m.mean():.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
