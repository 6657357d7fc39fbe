"""Regenerate the committed golden traces in data/golden/ (the only way they are made).

    python validate/make_goldens.py [--data-dir DIR] [--check]

Each golden is a few steps of batch 8 on real MNIST from seed 0 (settings in refdns/golden.py and in each
file's ``config`` attribute). ``--check`` regenerates into a temporary folder and runs ``refdns verify``
against the committed files instead of overwriting them. Every file must stay under 1 MB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from refdns.datasets import load_mnist
from refdns.golden import format_report, verify, write_golden
from refdns.nets import get_spec

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "data" / "golden"
MAX_BYTES = 1_000_000
# (net, method, steps): DNS goldens run long enough for pruning, splicing and a skipped draw to happen; Han's
# cross its round boundaries (rounds every 2 steps: the masks shrink at steps 0, 2 and 4); the one-shot
# methods prune at step 0 (OBD at step 1) and then retrain with the masks held.
GOLDENS = [
    ("lenet-300-100", "dns", 5),
    ("lenet-300-100", "dense", 3),
    ("lenet-5", "dns", 4),
    ("lenet-5", "dense", 3),
    *[
        (net, method, steps)
        for net in ("lenet-300-100", "lenet-5")
        for method, steps in (
            ("dns-distiller", 4),
            ("han", 6 if net == "lenet-300-100" else 5),
            ("magnitude", 3),
            ("magnitude-global", 3),
            ("random", 3),
            ("obd", 3),
        )
    ],
    # the layer-wise OBS surgeon on a 1-image Hessian batch: every layer's full one-shot prune. The batch
    # makes each layer's H = 2 X^T X low-rank (LeNet-5's ip1: rank 1, 800 inputs), which the surgeon exploits
    # (refdns.kernels.obs_lowrank): seconds, where the dense D x D downdates took minutes on LeNet-5.
    ("lenet-300-100", "obs", 3),
    ("lenet-5", "obs", 3),
]


# Settings other than write_golden's defaults, per (net, method): LeNet-5's Han golden changes its masks three
# times, and keeps under 1 MB with per-step tensors sampled to 512 elements.
OPTIONS = {("lenet-5", "han"): {"max_elements": 512}}


def options(net: str, method: str) -> dict:
    return OPTIONS.get((net, method), {})


def golden_name(net: str, method: str) -> str:
    return f"{net}-{method}.h5"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="folder holding mnist/ (default $REFDNS_DATA, then the user cache)")
    ap.add_argument(
        "--check", action="store_true", help="verify the committed goldens instead of rewriting them"
    )
    args = ap.parse_args(argv)
    x, y = load_mnist("train", data_dir=args.data_dir, download=False)
    out_dir = Path(tempfile.mkdtemp(prefix="goldens-")) if args.check else GOLDEN_DIR
    ok = True
    for net, method, steps in GOLDENS:
        path = out_dir / golden_name(net, method)
        summary = write_golden(path, get_spec(net), method, steps, x, y, **options(net, method))
        size = path.stat().st_size
        ok &= size < MAX_BYTES
        print(
            f"{path.name}: {size / 1e6:.3f} MB, {steps} steps, "
            f"losses {[round(v, 4) for v in summary['loss']]}"
            + (f", pruned {summary['pruned']}, spliced {summary['spliced']}" if summary["pruned"] else "")
            + ("" if size < MAX_BYTES else "  OVER 1 MB")
        )
        if args.check:
            report = verify(GOLDEN_DIR / path.name, path)
            if not report.ok:
                print(format_report(report))
            ok &= report.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
