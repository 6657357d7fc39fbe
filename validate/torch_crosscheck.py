"""Cross-check refdns against an independent PyTorch implementation, through the golden traces.

Reads a golden trace (``data/golden/*.h5``, schema in ``data/SCHEMA.md``) with h5py, replays it in PyTorch
(autograd for the gradients; the nets, Caffe's SGD and DNS's surgery written here from the papers and the
Caffe code, no refdns code), writes a candidate trace, and runs ``refdns verify golden candidate``. Then it
replays deliberately wrong variants, which ``verify`` must reject at the right step:

* ``masked-grad``: pruned weights get no dL/dW_eff (Han et al.'s rule instead of DNS eq. (2)); the golden's
  step 0 already prunes, so the weights after step 0 differ.
* ``no-splice``: the hysteresis never revives a pruned weight; the runs part at the first step where the
  golden splices (its ``surgery/spliced`` says which).

What the replay takes from the golden: the initial weights and masks, the inputs and labels of each step, the
solver and DNS settings from the ``config`` attribute, and each layer's Bernoulli outcome ``surgery/fired``
(so NumPy's random stream need not be reproduced). Everything else (activations, loss, gradients, the DNS
thresholds a and b, the masks, the updated weights) is computed here.

Usage::

    python validate/torch_crosscheck.py          # every golden in data/golden/; tables in validate/results/
    python validate/torch_crosscheck.py --quick    # only lenet-300-100 DNS
    python validate/torch_crosscheck.py GOLDEN.h5 -o CANDIDATE.h5 [--wrong masked-grad|no-splice]

PyTorch is optional (``pip install torch==2.13.0``); without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "data" / "golden"
RESULTS = REPO / "validate" / "results"
WRONG = ("masked-grad", "no-splice")

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the message is printed by main()
    torch = None


# ----------------------------------------------------------------------------------------------- nets
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
    """Logits and every op's output; ``w`` maps '<layer>.weight' / '<layer>.bias' to tensors (Caffe layouts).

    """
    outs = []
    h = x
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


def op_names(net):
    return [f"{i:02d}_{k}" + (f"_{n}" if n else "") for i, (k, n) in enumerate(NETS[net])]


# ----------------------------------------------------------------------------------------------- replay


def caffe_lr(sgd, it):
    if sgd["lr_policy"] == "inv":
        return sgd["base_lr"] * (1.0 + sgd["gamma"] * it) ** (-sgd["power"])
    if sgd["lr_policy"] == "step":
        return sgd["base_lr"] * sgd["gamma"] ** (it // sgd["stepsize"])
    return sgd["base_lr"]


def dns_thresholds(w, b, wm, bm, c_rate, band):
    """The DNS Caffe code's per-layer statistics (float64): pooled non-zero |W*T|, |b*T|; t = mu + c std."""
    v = torch.cat([(w * wm).flatten(), (b * bm).flatten()]).double()
    v = v[v != 0].abs()
    mu = v.mean().item() if v.numel() else 0.0
    std = math.sqrt(max((v * v).mean().item() - mu * mu, 0.0)) if v.numel() else 0.0
    t = max(mu + c_rate * std, 0.0)
    return {"mu": mu, "std": std, "t": t, "a": band[0] * t, "b": band[1] * t}


def read(ds):
    return torch.from_numpy(np.ascontiguousarray(ds[()]))


def replay(golden_path, out_path, wrong=None):
    """Replay the golden in PyTorch and write a candidate trace; returns a short summary."""
    torch.manual_seed(0)
    with h5py.File(golden_path, "r") as g:
        cfg = json.loads(g.attrs["config"])
        net, method, steps = str(g.attrs["net"]), str(g.attrs["method"]), int(g.attrs["steps"])
        layers = [s.decode() if isinstance(s, bytes) else s for s in g.attrs["layers"]]
        names = [s.decode() if isinstance(s, bytes) else s for s in g.attrs["activations"]]
        if names != op_names(net):
            raise SystemExit(f"{golden_path}: ops {names} are not this script's {net} {op_names(net)}")
        dns = method == "dns"
        if dns and cfg["method"]["reading"] != "caffe":
            raise SystemExit(f"{golden_path}: only the Caffe reading of DNS is replayed here")
        keys = [f"{n}.{k}" for n in layers for k in ("weight", "bias")]
        w = {k: read(g[f"init/params/{k.replace('.', '/')}"]).float() for k in keys}
        m = {k: read(g[f"init/masks/{k.replace('.', '/')}"]).bool() for k in keys}
        v = {k: torch.zeros_like(w[k]) for k in keys}
        sgd = cfg["train"]["sgd"]
        th = None
        fh = tempfile.NamedTemporaryFile(
            dir=Path(out_path).parent, prefix=".cand.", suffix=".h5", delete=False
        )
        fh.close()
        with h5py.File(fh.name, "w") as c:
            c.attrs.update(
                {
                    "format": "refdns-trace",
                    "schema_version": 1,
                    "net": net,
                    "method": method,
                    "steps": steps,
                    "producer": f"validate/torch_crosscheck.py, PyTorch {torch.__version__}"
                    + (f", WRONG variant {wrong}" if wrong else ""),
                }
            )
            for grp, src in (("params", w), ("masks", m), ("velocity", v)):
                for k, a in src.items():
                    c[f"init/{grp}/{k.replace('.', '/')}"] = a.numpy().astype(
                        np.uint8 if grp == "masks" else np.float32
                    )
            for t in range(steps):
                s = g[f"steps/{t:04d}"]
                it = int(s.attrs["iteration"])
                x, y = read(s["inputs"]).float(), read(s["labels"]).long()
                out = c.create_group(f"steps/{t:04d}")
                out.attrs["iteration"] = it
                out["inputs"], out["labels"] = x.numpy(), y.numpy()
                if dns:  # surgery before the forward pass (Caffe's CInnerProduct/CConvolution Forward)
                    if th is None:  # once, from the weights at the first surgery iteration
                        th = {
                            n: dns_thresholds(
                                w[n + ".weight"],
                                w[n + ".bias"],
                                m[n + ".weight"],
                                m[n + ".bias"],
                                cfg["method"]["layers"][n]["c_rate"],
                                cfg["method"]["band"],
                            )
                            for n in layers
                        }
                    fired = s["surgery/fired"][()]  # the golden's Bernoulli outcomes: input to the replay
                    pruned, spliced = [], []
                    for i, n in enumerate(layers):
                        p = sp = 0
                        if fired[i]:
                            for kind in ("weight", "bias"):
                                k = f"{n}.{kind}"
                                aw = w[k].abs().double()
                                # DNS eq. (3): h(w) = 0 if |w| <= a; T if a < |w| <= b; 1 if |w| > b
                                grow = aw > th[n]["b"]
                                if wrong == "no-splice":
                                    grow = torch.zeros_like(grow)
                                new = torch.where(m[k], aw > th[n]["a"], grow)
                                p += int((m[k] & ~new).sum())
                                sp += int((~m[k] & new).sum())
                                m[k] = new
                        pruned.append(p)
                        spliced.append(sp)
                    for q in ("a", "b", "mu", "std", "t"):
                        out[f"thresholds/{q}"] = np.array([th[n][q] for n in layers], dtype=np.float64)
                    out["surgery/fired"] = fired.astype(np.uint8)
                    out["surgery/pruned"] = np.array(pruned, dtype=np.int64)
                    out["surgery/spliced"] = np.array(spliced, dtype=np.int64)
                for k in keys:
                    out[f"masks/{k.replace('.', '/')}"] = m[k].numpy().astype(np.uint8)
                w_eff = {k: (w[k] * m[k]).requires_grad_(True) for k in keys}
                logits, outs = forward(net, w_eff, x)
                loss = F.cross_entropy(logits, y)  # mean over the batch
                loss.backward()
                for name, o in zip(names, outs, strict=True):
                    out[f"activations/{name}"] = o.detach().numpy()
                out["loss"] = np.float32(loss.item())
                lr = caffe_lr(sgd, it)
                out["lr"] = np.float64(lr)
                with torch.no_grad():
                    for k in keys:
                        grad = w_eff[k].grad
                        out[f"grads/{k.replace('.', '/')}"] = grad.numpy()
                        if wrong == "masked-grad":
                            grad = grad * m[k]
                        bias = k.endswith(".bias")
                        lr_mult = sgd["bias_lr_mult"] if bias else 1.0
                        decay = sgd["weight_decay"] * (sgd["bias_decay_mult"] if bias else 1.0)
                        # Caffe SGD: v = momentum v + lr lr_mult (g + wd w); w -= v
                        v[k] = sgd["momentum"] * v[k] + (lr * lr_mult) * (grad + decay * w[k])
                        w[k] = w[k] - v[k]
                        out[f"params/{k.replace('.', '/')}"] = w[k].numpy()
        os.replace(fh.name, out_path)
    return {"net": net, "method": method, "steps": steps}


# ----------------------------------------------------------------------------------------------- driver


def refdns_cli():
    exe = Path(sys.executable).with_name("refdns")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "refdns"]


def run_verify(golden, candidate):
    r = subprocess.run([*refdns_cli(), "verify", str(golden), str(candidate)], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"refdns verify failed to run ({r.returncode}):\n{r.stderr}")
    return r.returncode, r.stdout


def expected_step(golden, wrong):
    """Where a wrong variant must first diverge, read from the golden's own record."""
    with h5py.File(golden, "r") as g:
        for t in range(int(g.attrs["steps"])):
            s = g[f"steps/{t:04d}/surgery"]
            if wrong == "masked-grad" and s["fired"][()].any() and (s["pruned"][()].sum() > 0 or t > 0):
                return t
            if wrong == "no-splice" and s["spliced"][()].sum() > 0:
                return t
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("golden", nargs="?", help="one golden trace; default: every file in data/golden/")
    ap.add_argument("-o", "--out", help="candidate trace to write (single-golden mode)")
    ap.add_argument("--wrong", choices=WRONG, help="replay a deliberately wrong variant (single-golden mode)")
    ap.add_argument("--quick", action="store_true", help="only the lenet-300-100 DNS golden")
    ap.add_argument("--json", metavar="FILE", help="machine-readable results (default validate/results/...)")
    args = ap.parse_args(argv)
    if torch is None:
        print(
            "torch_crosscheck: SKIPPED: PyTorch is not installed. It is optional; to run this cross-check: "
            "pip install torch==2.13.0"
        )
        return 0
    torch.set_num_threads(1)
    if args.golden:
        out = (
            args.out
            or str(Path(args.golden).with_suffix(""))
            + (f"-torch-{args.wrong}" if args.wrong else "-torch")
            + ".h5"
        )
        replay(args.golden, out, args.wrong)
        code, table = run_verify(args.golden, out)
        print(table)
        return code if not args.wrong else (0 if code == 1 else 1)
    goldens = sorted(GOLDEN_DIR.glob("*.h5"))
    if args.quick:
        goldens = [p for p in goldens if p.name.startswith("lenet-300-100-dns")]
    if not goldens:
        raise SystemExit(f"no goldens in {GOLDEN_DIR}; run validate/make_goldens.py")
    tmp = Path(tempfile.mkdtemp(prefix="torch-crosscheck-"))
    md = [
        "# PyTorch cross-check of the golden traces",
        "",
        f"`python validate/torch_crosscheck.py{' --quick' if args.quick else ''}`, "
        f"PyTorch {torch.__version__}, "
        f"h5py {h5py.__version__}. Each golden is replayed by an independent PyTorch implementation "
        "(autograd, no refdns code) and compared by `refdns verify`; the wrong variants must be caught at "
        "the step the golden's own record predicts.",
        "",
        "| golden | size | variant | verify | diverges at | expected | result |",
        "|---|---:|---|---|---|---|---|",
    ]
    tables, results, ok_all = [], [], True
    try:
        for golden in goldens:
            with h5py.File(golden, "r") as g:
                method = str(g.attrs["method"])
            variants = [None] + (list(WRONG) if method == "dns" else [])
            for wrong in variants:
                cand = tmp / f"{golden.stem}-{wrong or 'torch'}.h5"
                t0 = time.perf_counter()
                replay(golden, cand, wrong)
                code, table = run_verify(golden, cand)
                seconds = time.perf_counter() - t0
                verdict = table.strip().splitlines()[-1]
                div = None
                if code == 1:
                    div = verdict.split("at step ")[1].split(" ")[0] if "at step" in verdict else "init"
                want = None if wrong is None else expected_step(golden, wrong)
                ok = (code == 0) if wrong is None else (code == 1 and div == str(want))
                ok_all &= ok
                results.append(
                    {
                        "golden": golden.name,
                        "bytes": golden.stat().st_size,
                        "variant": wrong or "correct",
                        "verify_exit": code,
                        "diverges_at": div,
                        "expected": want,
                        "ok": ok,
                        "seconds": seconds,
                        "verdict": verdict,
                    }
                )
                md.append(
                    f"| {golden.name} | {golden.stat().st_size / 1e6:.3f} MB | {wrong or 'correct'} | "
                    f"{'PASS' if code == 0 else 'FAIL'} | {div if div is not None else '-'} | "
                    f"{want if wrong else 'pass'} | {'ok' if ok else 'WRONG'} |"
                )
                tables.append(f"## {golden.name}, {wrong or 'correct'} replay\n\n```\n{table.strip()}\n```\n")
                print(f"{golden.name:28s} {wrong or 'correct':12s} verify exit {code}  {verdict}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"torch_crosscheck{suffix}.md").write_text("\n".join(md) + "\n\n" + "\n".join(tables))
    Path(args.json or RESULTS / f"torch_crosscheck{suffix}.json").write_text(
        json.dumps({"torch": torch.__version__, "results": results, "ok": ok_all}, indent=2) + "\n"
    )
    print(
        f"{'all as expected' if ok_all else 'UNEXPECTED RESULTS'}; "
        f"tables in {RESULTS}/torch_crosscheck{suffix}.md"
    )
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
