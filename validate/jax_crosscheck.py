"""Cross-check refdns against an independent JAX implementation, through the golden traces.

The second framework: :func:`candidate` is a :mod:`refdns.testing` candidate written in JAX (``jax.grad`` for
the gradients, ``lax.conv_general_dilated`` and ``lax.reduce_window`` for LeNet-5, Caffe's SGD, DNS's surgery
in the Caffe reading and Han's rounds in ``jax.numpy``), no refdns code and no PyTorch. It replays the dense,
DNS and Han goldens of both LeNets, and the deliberately wrong variants of
``validate/torch_crosscheck.py`` (``masked-grad``, ``no-splice``, ``ddof1``, ``han-momentum``) must be caught
at the same steps. Then it writes ``validate/results/replay_table.md``: method x framework x variant.

Usage::

    python validate/jax_crosscheck.py            # both LeNets, JAX; plus PyTorch's rows when torch is there
    python validate/jax_crosscheck.py --quick      # only lenet-300-100

JAX is optional (``pip install "jax[cpu]"``); without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_crosscheck as tc  # noqa: E402  (the shared driver: run, expected_step, results; torch optional)

try:
    import jax
    import jax.numpy as jnp
    from jax import lax

    jax.config.update("jax_enable_x64", True)  # float64 thresholds; every array below is typed explicitly
except ImportError:
    jax = None


def forward(net, w, x):
    """Logits and every op's output (Caffe layouts: dense W (out, in), conv (F, C, K, K), NCHW)."""
    outs, h = [], x
    for kind, name in tc.NETS[net]:
        if kind == "dense":
            h = h @ w[name + ".weight"].T + w[name + ".bias"]
        elif kind == "conv":
            h = (
                lax.conv_general_dilated(
                    h,
                    w[name + ".weight"],
                    (1, 1),
                    "VALID",
                    dimension_numbers=("NCHW", "OIHW", "NCHW"),
                    precision=lax.Precision.HIGHEST,
                )
                + w[name + ".bias"][None, :, None, None]
            )
        elif kind == "pool":
            h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        elif kind == "relu":
            h = jnp.maximum(h, 0)
        else:
            h = h.reshape(h.shape[0], -1)
        outs.append(h)
    return h, outs


def _loss(w_eff, net, x, y):
    logits, outs = forward(net, w_eff, x)
    logp = jax.nn.log_softmax(logits, axis=1)
    return -jnp.mean(logp[jnp.arange(len(y)), y]), outs


def candidate(wrong=None):
    """A refdns.testing candidate for the dense, DNS (Caffe reading) and Han goldens, in JAX."""

    def start_fn(start):
        net, method, layers = start.net, start.method, list(start.layers)
        mcfg, sgd = start.config["method"], start.config["train"]["sgd"]
        if method not in tc.METHODS or (method == "dns" and mcfg["reading"] != "caffe"):
            raise SystemExit(f"jax_crosscheck replays dense, DNS (Caffe reading) and Han, not {method!r}")
        w = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in start.params.items()}
        m = {k: jnp.asarray(v, dtype=bool) for k, v in start.masks.items()}
        vel = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in start.velocity.items()}
        grad_fn = jax.jit(jax.value_and_grad(_loss, has_aux=True), static_argnums=1)
        th, han = {}, {"round": 0, "std": {}, "threshold": {}}
        hold_at_zero = method == "han"

        def dns_surgery(inp):
            if not th:
                for n in layers:
                    v = jnp.concatenate(
                        [
                            (w[n + ".weight"] * m[n + ".weight"]).ravel(),
                            (w[n + ".bias"] * m[n + ".bias"]).ravel(),
                        ]
                    ).astype(jnp.float64)
                    v = jnp.abs(v[v != 0])
                    mu = float(jnp.mean(v))
                    if wrong == "ddof1":
                        std = float(jnp.std(v, ddof=1))
                    else:  # the authors' code: sqrt(E[v^2] - mu^2), the population std
                        std = math.sqrt(max(float(jnp.mean(v * v)) - mu * mu, 0.0))
                    t = max(mu + mcfg["layers"][n]["c_rate"] * std, 0.0)
                    th[n] = {"mu": mu, "std": std, "t": t, "a": mcfg["band"][0] * t, "b": mcfg["band"][1] * t}
            for i, n in enumerate(layers):
                if inp.fired[i]:
                    for k in (n + ".weight", n + ".bias"):
                        aw = jnp.abs(w[k]).astype(jnp.float64)
                        # DNS eq. (3): h(w) = 0 if |w| <= a; T if a < |w| <= b; 1 if |w| > b
                        grow = jnp.zeros_like(m[k]) if wrong == "no-splice" else aw > th[n]["b"]
                        m[k] = jnp.where(m[k], aw > th[n]["a"], grow)
            return {"thresholds": {q: [th[n][q] for n in layers] for q in ("a", "b", "mu", "std", "t")}}

        def han_rounds(inp):
            rounds, every = mcfg["rounds"], mcfg["round_iterations"]
            while han["round"] < rounds and inp.iteration >= han["round"] * every:
                r = han["round"] + 1
                for n in layers:
                    k = n + ".weight"
                    if n not in han["std"]:
                        han["std"][n] = float(jnp.std(w[k].astype(jnp.float64)))
                    han["threshold"][n] = mcfg["quality"][n] * r / rounds * han["std"][n]
                    # Han et al. Sec. 3: prune w where |w| < q r / R std
                    m[k] = m[k] & (jnp.abs(w[k]) >= jnp.float32(han["threshold"][n]))
                    if wrong == "han-momentum":
                        w[k] = w[k] * m[k]
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
            w_eff = {k: w[k] * m[k] for k in w}
            (loss, outs), grads = grad_fn(w_eff, net, jnp.asarray(inp.inputs), jnp.asarray(inp.labels))
            lr = tc.caffe_lr(sgd, inp.iteration)
            for k in w:
                g = grads[k]
                if wrong == "masked-grad" or hold_at_zero:
                    g = g * m[k]
                bias = k.endswith(".bias")
                lr_k = jnp.float32(lr * (sgd["bias_lr_mult"] if bias else 1.0))
                decay = jnp.float32(sgd["weight_decay"] * (sgd["bias_decay_mult"] if bias else 1.0))
                # Caffe SGD: v = momentum v + lr lr_mult (g + wd w); w -= v
                vel[k] = jnp.float32(sgd["momentum"]) * vel[k] + lr_k * (g + decay * w[k])
                w[k] = w[k] - vel[k]
                if hold_at_zero and wrong != "han-momentum":
                    vel[k] = vel[k] * m[k]
                    w[k] = w[k] * m[k]
            return out | {
                "lr": lr,
                "masks": {k: np.asarray(v) for k, v in m.items()},
                "activations": [np.asarray(o) for o in outs],
                "loss": float(loss),
                "grads": {k: np.asarray(g) for k, g in grads.items()},
                "params": {k: np.asarray(v) for k, v in w.items()},
            }

        return step

    return start_fn


def replay_table(rows, quick):
    """validate/results/replay_table.md: method x framework x variant, pass or the step it diverges at."""
    lines = [
        "# Replays of the goldens by independent implementations",
        "",
        f"`python validate/jax_crosscheck.py{' --quick' if quick else ''}` (PyTorch rows from "
        "validate/torch_crosscheck.py's candidate, run by the same driver). Each cell: the verdict of "
        "`refdns verify` on the candidate trace, and whether it is the expected one (correct replays must "
        "pass; each wrong variant must diverge at the step the golden's own record predicts).",
        "",
        "| golden | method | framework | variant | result | expected | first diverging tensor "
        "| as expected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        got = "pass" if r["diverges_at"] is None else f"diverges at step {r['diverges_at']}"
        want = "pass" if r["variant"] == "correct" else f"step {r['expected']}"
        method = r["golden"].removesuffix(".h5").split("-")[-1]
        lines.append(
            f"| {r['golden']} | {method} | {r['framework']} | {r['variant']} | {got} | {want} | "
            f"{r['tensor'] or ''} | {'yes' if r['ok'] else 'NO'} |"
        )
    tc.RESULTS.mkdir(parents=True, exist_ok=True)
    (tc.RESULTS / f"replay_table{'-quick' if quick else ''}.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only lenet-300-100")
    ap.add_argument("--no-torch", action="store_true", help="JAX rows only")
    args = ap.parse_args(argv)
    if jax is None:
        print('jax_crosscheck: SKIPPED: JAX is not installed. It is optional: pip install "jax[cpu]"')
        return 0
    rows = tc.run_all(args.quick, "jax", candidate)
    tc.write_results(
        rows,
        "jax_crosscheck" + ("-quick" if args.quick else ""),
        f"# JAX replay of the goldens\n\n`python validate/jax_crosscheck.py"
        f"{' --quick' if args.quick else ''}`, JAX {jax.__version__}, through refdns.testing.",
    )
    if tc.torch is not None and not args.no_torch:
        tc.torch.set_num_threads(1)
        rows += tc.run_all(args.quick, "pytorch", tc.candidate)
    replay_table(rows, args.quick)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
