"""Cross-check refdns against an independent PyTorch implementation, through the golden traces.

The worked example of :mod:`refdns.testing`: :func:`candidate` below is a replay candidate
(``candidate(start) -> step(inp) -> dict``) written in PyTorch from the papers and the Caffe code, with no
refdns code: autograd for the gradients, Caffe's SGD, DNS's surgery (Caffe reading) and Han's rounds.
``refdns.testing.check_candidate`` feeds it each golden step (batch, DNS's Bernoulli outcomes) and
``refdns verify`` compares what it returns.
Then deliberately wrong variants must be caught at the step the golden's own record predicts:

* ``masked-grad`` (DNS): pruned weights get no dL/d(W*T) (Han's rule instead of DNS eq. (2));
* ``no-splice`` (DNS): the hysteresis never revives a pruned weight;
* ``ddof1`` (DNS): the threshold's std taken with Bessel's correction (``ddof=1``) instead of the population
  std of the authors' code;
* ``han-momentum`` (Han): the gradient is masked and pruned weights are zeroed when pruned, but the momentum
  buffer is not masked and W is not re-zeroed after each step, so a weight pruned at a later round boundary
  comes back through the velocity it had built up while alive.

Usage::

    python validate/torch_crosscheck.py          # dense, DNS and Han goldens of both LeNets (results/)
    python validate/torch_crosscheck.py --quick    # only lenet-300-100
    python validate/torch_crosscheck.py GOLDEN.h5 -o CANDIDATE.h5 [--wrong VARIANT]

PyTorch is optional (``pip install torch==2.13.0``); without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from refdns.golden import format_report
from refdns.testing import check_candidate

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "data" / "golden"
RESULTS = REPO / "validate" / "results"
METHODS = ("dense", "dns", "han")
WRONG = {"masked-grad": "dns", "no-splice": "dns", "ddof1": "dns", "han-momentum": "han"}

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the message is printed by main()
    torch = None


# Caffe's models, as (kind, layer name) ops; names follow the trace's "activations" attribute.
NETS = {
    "lenet-300-100": [
        ("flatten", ""),
        ("dense", "ip1"),
        ("relu", ""),
        ("dense", "ip2"),
        ("relu", ""),
        ("dense", "ip3"),
    ],
    "lenet-5": [
        ("conv", "conv1"),
        ("pool", ""),
        ("conv", "conv2"),
        ("pool", ""),
        ("flatten", ""),
        ("dense", "ip1"),
        ("relu", ""),
        ("dense", "ip2"),
    ],
}


def forward(net, w, x):
    """Logits and every op's output; ``w`` maps '<layer>.weight' / '<layer>.bias' to tensors (Caffe
    layouts)."""
    outs, h = [], x
    for kind, name in NETS[net]:
        if kind == "dense":
            h = F.linear(h, w[name + ".weight"], w[name + ".bias"])  # y = x W^T + b, W (out, in)
        elif kind == "conv":
            h = F.conv2d(h, w[name + ".weight"], w[name + ".bias"])  # cross-correlation, stride 1, no pad
        elif kind == "pool":
            h = F.max_pool2d(h, kernel_size=2, stride=2)
        elif kind == "relu":
            h = F.relu(h)
        else:
            h = torch.flatten(h, 1)  # NCHW order
        outs.append(h)
    return h, outs


def caffe_lr(sgd, it):
    if sgd["lr_policy"] == "inv":
        return sgd["base_lr"] * (1.0 + sgd["gamma"] * it) ** (-sgd["power"])
    if sgd["lr_policy"] == "step":
        return sgd["base_lr"] * sgd["gamma"] ** (it // sgd["stepsize"])
    return sgd["base_lr"]


def dns_thresholds(w, b, wm, bm, c_rate, band, ddof=0):
    """The DNS Caffe code's per-layer statistics (float64): pooled non-zero |W*T|, |b*T|; t = mu + c std."""
    v = torch.cat([(w * wm).flatten(), (b * bm).flatten()]).double()
    v = v[v != 0].abs()
    mu = v.mean().item() if v.numel() else 0.0
    std = math.sqrt(max((v * v).mean().item() - mu * mu, 0.0)) if v.numel() else 0.0
    if ddof:  # the wrong variant: Bessel's correction
        std = v.std(correction=ddof).item()
    t = max(mu + c_rate * std, 0.0)
    return {"mu": mu, "std": std, "t": t, "a": band[0] * t, "b": band[1] * t}


def candidate(wrong=None):
    """A refdns.testing candidate for the dense, DNS (Caffe reading) and Han goldens, in PyTorch."""

    def start_fn(start):
        net, method, layers = start.net, start.method, list(start.layers)
        mcfg, sgd = start.config["method"], start.config["train"]["sgd"]
        if method not in METHODS:
            raise SystemExit(f"torch_crosscheck replays {METHODS}, not {method!r}")
        if method == "dns" and mcfg["reading"] != "caffe":
            raise SystemExit("only the Caffe reading of DNS is replayed here")
        w = {k: torch.from_numpy(v.copy()) for k, v in start.params.items()}
        m = {k: torch.from_numpy(v.copy()) for k, v in start.masks.items()}
        vel = {k: torch.from_numpy(v.copy()) for k, v in start.velocity.items()}
        th, han = {}, {"round": 0, "std": {}, "threshold": {}}
        hold_at_zero = method == "han"  # Han: pruned weights held at exactly 0, velocity included

        def dns_surgery(inp):
            if not th:  # once, from the weights at the first surgery iteration
                for n in layers:
                    th[n] = dns_thresholds(
                        w[n + ".weight"],
                        w[n + ".bias"],
                        m[n + ".weight"],
                        m[n + ".bias"],
                        mcfg["layers"][n]["c_rate"],
                        mcfg["band"],
                        ddof=1 if wrong == "ddof1" else 0,
                    )
            for i, n in enumerate(layers):
                if inp.fired[i]:
                    for k in (n + ".weight", n + ".bias"):
                        aw = w[k].abs().double()
                        # DNS eq. (3): h(w) = 0 if |w| <= a; T if a < |w| <= b; 1 if |w| > b
                        grow = torch.zeros_like(m[k]) if wrong == "no-splice" else aw > th[n]["b"]
                        m[k] = torch.where(m[k], aw > th[n]["a"], grow)
            return {"thresholds": {q: [th[n][q] for n in layers] for q in ("a", "b", "mu", "std", "t")}}

        def han_rounds(inp):
            rounds, every = mcfg["rounds"], mcfg["round_iterations"]
            while han["round"] < rounds and inp.iteration >= han["round"] * every:
                r = han["round"] + 1
                for n in layers:
                    k = n + ".weight"
                    if n not in han["std"]:  # std="dense": the population std of the weights at round 1
                        han["std"][n] = w[k].double().std(correction=0).item()
                    # Han et al. Sec. 3: prune w where |w| < q r / R std
                    han["threshold"][n] = mcfg["quality"][n] * r / rounds * han["std"][n]
                    m[k] = m[k] & (w[k].abs() >= han["threshold"][n])
                    if wrong == "han-momentum":
                        w[k] = w[k] * m[k]  # zeroed once, when pruned (as torch.nn.utils.prune.remove would)
                han["round"] = r
            return {
                "han/round": np.int64(han["round"]),
                "han/std": [han["std"].get(n, math.nan) for n in layers],
                "han/threshold": [han["threshold"].get(n, math.nan) for n in layers],
            }

        def step(inp):
            out = {}
            if method == "dns":
                out |= dns_surgery(inp)
            elif method == "han":
                out |= han_rounds(inp)
            x, y = torch.from_numpy(inp.inputs), torch.from_numpy(inp.labels)
            w_eff = {k: (w[k] * m[k]).requires_grad_(True) for k in w}
            logits, outs = forward(net, w_eff, x)
            loss = F.cross_entropy(logits, y)  # mean over the batch
            loss.backward()
            lr = caffe_lr(sgd, inp.iteration)
            grads = {}
            with torch.no_grad():
                for k in w:
                    g = w_eff[k].grad
                    grads[k] = g.numpy().copy()
                    if wrong == "masked-grad" or hold_at_zero:
                        g = g * m[k]
                    bias = k.endswith(".bias")
                    lr_mult = sgd["bias_lr_mult"] if bias else 1.0
                    decay = sgd["weight_decay"] * (sgd["bias_decay_mult"] if bias else 1.0)
                    # Caffe SGD: v = momentum v + lr lr_mult (g + wd w); w -= v
                    vel[k] = sgd["momentum"] * vel[k] + (lr * lr_mult) * (g + decay * w[k])
                    w[k] = w[k] - vel[k]
                    if hold_at_zero and wrong != "han-momentum":
                        vel[k] = vel[k] * m[k]
                        w[k] = w[k] * m[k]
            return out | {
                "lr": lr,
                "masks": {k: v.numpy().copy() for k, v in m.items()},
                "activations": [o.detach().numpy() for o in outs],
                "loss": loss.item(),
                "grads": grads,
                "params": {k: v.numpy().copy() for k, v in w.items()},
            }

        return step

    return start_fn


def expected_step(golden, wrong):
    """Where a wrong variant must first diverge, read from the golden's own record."""
    with h5py.File(golden, "r") as g:
        steps = int(g.attrs["steps"])
        surgery = [g[f"steps/{t:04d}/surgery"] for t in range(steps)]
        if wrong == "ddof1":
            return 0  # the thresholds are computed at the first step
        if wrong == "masked-grad":  # the first step whose forward pass runs on a pruned weight
            return next((t for t, s in enumerate(surgery) if s["pruned"][()].sum() > 0), None)
        if wrong == "no-splice":
            return next((t for t, s in enumerate(surgery) if s["spliced"][()].sum() > 0), None)
        if wrong == "han-momentum":  # the first round boundary after the first: weights pruned with velocity
            prunes = [t for t, s in enumerate(surgery) if s["pruned"][()].sum() > 0]
            return prunes[1] if len(prunes) > 1 else None
    return None


def run(golden, wrong=None, out=None, framework="pytorch", make=None):
    """Replay one golden (one variant); returns a result row for the table."""
    t0 = time.perf_counter()
    report = check_candidate(
        golden,
        (make or candidate)(wrong),
        out,
        producer=f"validate {framework} replay" + (f", WRONG variant {wrong}" if wrong else ""),
    )
    div = None if report.ok else report.divergence
    want = None if wrong is None else expected_step(golden, wrong)
    ok = report.ok if wrong is None else (div is not None and div[0] == want)
    return {
        "golden": Path(golden).name,
        "framework": framework,
        "variant": wrong or "correct",
        "diverges_at": None if div is None else div[0],
        "tensor": None if div is None else div[1],
        "expected": want,
        "ok": ok,
        "seconds": round(time.perf_counter() - t0, 2),
        "report": format_report(report),
    }


def goldens(quick):
    nets = ("lenet-300-100",) if quick else ("lenet-300-100", "lenet-5")
    return [GOLDEN_DIR / f"{n}-{m}.h5" for n in nets for m in METHODS]


def run_all(quick, framework, make, variants=WRONG):
    rows = []
    for golden in goldens(quick):
        method = golden.stem.split("-")[-1]
        for wrong in [None] + [v for v, meth in variants.items() if meth == method]:
            row = run(golden, wrong, framework=framework, make=make)
            rows.append(row)
            print(
                f"{framework:8s} {golden.name:28s} {row['variant']:13s} "
                f"{'pass' if row['diverges_at'] is None else 'diverges at step ' + str(row['diverges_at'])}"
                f" (expected {row['expected'] if wrong else 'pass'}): {'ok' if row['ok'] else 'UNEXPECTED'}"
            )
    return rows


def write_results(rows, name, header):
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = [
        header,
        "",
        "| golden | variant | result | expected | first diverging tensor | as expected |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        got = "pass" if r["diverges_at"] is None else f"diverges at step {r['diverges_at']}"
        want = "pass" if r["variant"] == "correct" else f"step {r['expected']}"
        md.append(
            f"| {r['golden']} | {r['variant']} | {got} | {want} | {r['tensor'] or ''} | "
            f"{'yes' if r['ok'] else 'NO'} |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps(
            {
                "ok": all(r["ok"] for r in rows),
                "results": [{k: v for k, v in r.items() if k != "report"} for r in rows],
            },
            indent=2,
        )
        + "\n"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("golden", nargs="?", help="one golden trace; default: the dense, DNS and Han goldens")
    ap.add_argument("-o", "--out", help="candidate trace to write (single-golden mode)")
    ap.add_argument("--wrong", choices=sorted(WRONG), help="replay a deliberately wrong variant")
    ap.add_argument("--quick", action="store_true", help="only lenet-300-100")
    args = ap.parse_args(argv)
    if torch is None:
        print(
            "torch_crosscheck: SKIPPED: PyTorch is not installed. It is optional; to run this cross-check: "
            "pip install torch==2.13.0"
        )
        return 0
    torch.set_num_threads(1)
    if args.golden:
        row = run(args.golden, args.wrong, args.out)
        print(row["report"])
        return 0 if row["ok"] else 1
    rows = run_all(args.quick, "pytorch", candidate)
    write_results(
        rows,
        "torch_crosscheck" + ("-quick" if args.quick else ""),
        f"# PyTorch replay of the goldens\n\n`python validate/torch_crosscheck.py"
        f"{' --quick' if args.quick else ''}`, PyTorch {torch.__version__}, through refdns.testing.",
    )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
