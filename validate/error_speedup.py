"""Error against measured speed-up: DNS on the CSR kernels beside structured pruning, at matched test error.

Issue 14's second table. For each LeNet, from one dense net:

- ``dense``: given (``--dense NET=PATH``, any checkpoint or ``.rdc`` refdns reads) or trained here with
  Caffe's recipe (``--dense-iterations``, default 10,000, seed 0);
- ``DNS (CSR)``: given (``--dns NET=PATH``) or run here from that dense net with refdns's DNS recipe
  (:func:`refdns.pipeline.experiment` / :func:`refdns.pipeline.reproduce`, the code ``refdns reproduce``
  runs; ``--dns-iterations`` default the recipe's), run as ``refdns infer --sparse`` runs it:
  :class:`refdns.sparse.SparseNet` on ``w * mask``, serial kernels;
- one structured net per FLOP budget of the ladder ``--budgets`` (fractions of the dense net's FLOPs):
  :class:`refdns.prune.structured.StructuredPruning` with ``StructuredConfig(criterion, flops=budget,
  steps=--steps, step_iterations=--finetune // --steps)`` from the dense net (seed 0, Caffe's solver,
  lr 0.01), then :func:`refdns.thin.thin`: a smaller dense net run by the ordinary dense forward.

Every net's test error is measured on the first ``--n-test`` MNIST test images (default all 10,000), DNS's
with the CSR kernels. Each net is timed at ``--batches`` (default 1, 64, 10,000) by validate/thin_speed.py's
timing code (median over ``--reps`` repetitions, after warm-up, one BLAS and one Numba thread; speed-up =
dense median / the net's median, dense measured in the same run, runners interleaved per batch).

Matched error: among the structured nets whose test error is at most DNS's + ``--tolerance`` percentage
points, the one with the largest speed-up (``--choose-by``: the geometric mean of its speed-ups over the
batches, default, or the speed-up at one batch); if none qualifies, the structured net of lowest test error
(ties: the larger speed-up), said so. Then DNS's speed-up divided by that net's, per batch.

    python validate/error_speedup.py [--dense lenet-5=D.h5 --dns lenet-5=S.h5 ...] [--criterion l1]

Writes validate/results/error_speedup.{md,json} (``--out``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import thin_speed as ts  # noqa: E402, I001  (first: sets one BLAS/Numba thread before numpy loads)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from refdns.atomic import write_text  # noqa: E402
from refdns.datasets import load_mnist  # noqa: E402
from refdns.errors import RefdnsError  # noqa: E402
from refdns.netfiles import load_net  # noqa: E402
from refdns.nets import NETS, get_spec  # noqa: E402
from refdns.nets.flops import net_flops  # noqa: E402
from refdns.nets.sequential import forward, predict  # noqa: E402
from refdns.pipeline import Data, experiment, reproduce, run_training  # noqa: E402
from refdns.prune.criteria import ACTIVATION_CRITERIA  # noqa: E402
from refdns.prune.structured import StructuredConfig, StructuredPruning, removal_targets  # noqa: E402
from refdns.prune.units import effective_params  # noqa: E402
from refdns.run import TrainConfig  # noqa: E402
from refdns.sparse import SparseNet  # noqa: E402
from refdns.thin import thin  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FINETUNE = {"lenet-300-100": 3_000, "lenet-5": 2_000}
BUDGETS = (0.6, 0.4, 0.25, 0.15, 0.1)
NO_TEST = 10**6  # test_interval: no evaluation during training (errors are measured afterwards)
SEED = 0


class UsageError(RefdnsError, ValueError):
    """A bad flag value, found before any work starts."""


# --- flags -------------------------------------------------------------------------------------------------


def net_paths(pairs: list[str], flag: str) -> dict[str, Path]:
    """``["lenet-5=PATH", ...]`` -> {net: path}, each net known and each file present."""
    out = {}
    for item in pairs:
        net, sep, path = item.partition("=")
        if not sep or not path:
            raise UsageError(f"{flag} {item!r} must be NET=PATH")
        if net not in NETS:
            raise UsageError(f"{flag} {item!r}: unknown net {net!r} (known: {sorted(NETS)})")
        if net in out:
            raise UsageError(f"{flag} names {net!r} twice")
        if not Path(path).is_file():
            raise UsageError(f"{flag} {item!r}: no file {path}")
        out[net] = Path(path)
    return out


def per_net_ints(text: str | None, nets: list[str], default: dict[str, int] | None, flag: str) -> dict:
    """``"3000"`` (every net) or ``"lenet-5=2000,lenet-300-100=3000"`` -> {net: int}."""
    if text is None:
        return {n: (default or {}).get(n) for n in nets}
    out: dict[str, int | None] = {n: (default or {}).get(n) for n in nets}
    for item in text.split(","):
        net, sep, value = item.rpartition("=")
        try:
            v = int(value)
        except ValueError:
            raise UsageError(f"{flag} {item!r}: {value!r} is not an integer") from None
        if v < 0:
            raise UsageError(f"{flag} {item!r} must be >= 0")
        if sep and net not in nets:
            raise UsageError(f"{flag} {item!r}: {net!r} is not one of --nets {nets}")
        for n in [net] if sep else nets:
            out[n] = v
    return out


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default="lenet-300-100,lenet-5")
    p.add_argument("--dense", action="append", default=[], metavar="NET=PATH",
                   help="the dense net to start from (default: trained here); repeat per net")
    p.add_argument("--dns", action="append", default=[], metavar="NET=PATH",
                   help="the DNS net (default: refdns's DNS recipe run here from the dense net); "
                        "repeat per net")
    p.add_argument("--dense-iterations", type=int, default=10_000, help="dense training when not given")
    p.add_argument("--dns-iterations", default=None,
                   help="DNS iterations when not given: N or NET=N,... (default: the recipe's, 40K / 20K)")
    p.add_argument("--criterion", default="l1", choices=("l1", "taylor"), help="structured criterion")
    p.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS),
                   help="FLOP budgets of the structured ladder, fractions of the dense net's FLOPs")
    p.add_argument("--steps", type=int, default=4, help="prune/fine-tune rounds per structured net")
    p.add_argument("--finetune", default=None,
                   help="fine-tuning iterations per structured net (all steps): N or NET=N,... "
                        f"(default {', '.join(f'{k} {v:,}' for k, v in FINETUNE.items())})")
    p.add_argument("--tolerance", type=float, default=0.1,
                   help="percentage points of test error above DNS's that still count as matched")
    p.add_argument("--choose-by", default="geomean",
                   help="speed-up that picks the matched net: 'geomean' over the batches, or a batch size")
    p.add_argument("--batches", default="1,64,10000", help="batch sizes timed")
    p.add_argument("--n-test", type=int, default=10_000, help="test images (errors and timing inputs)")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per figure (median reported)")
    p.add_argument("--quick-timing", action="store_true", help="fewer calls per repetition (a smoke run)")
    p.add_argument("--out", default=str(RESULTS / "error_speedup"), help="results path without suffix")
    args = p.parse_args(argv)
    return check_args(args)


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Every flag checked (UsageError) and resolved, and every budget checked against its net, before work."""
    args.nets = [n for n in args.nets.split(",") if n]
    for n in args.nets:
        if n not in NETS:
            raise UsageError(f"--nets: unknown net {n!r} (known: {sorted(NETS)})")
    args.dense = net_paths(args.dense, "--dense")
    args.dns = net_paths(args.dns, "--dns")
    for flag, given in (("--dense", args.dense), ("--dns", args.dns)):
        extra = sorted(set(given) - set(args.nets))
        if extra:
            raise UsageError(f"{flag} names {extra}, which are not in --nets {args.nets}")
    try:
        args.budgets = tuple(float(b) for b in args.budgets.split(","))
        args.batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError as e:
        raise UsageError(f"--budgets / --batches: {e}") from None
    if not all(0.0 < b < 1.0 for b in args.budgets) or len(set(args.budgets)) != len(args.budgets):
        raise UsageError(f"--budgets {args.budgets} must be distinct fractions in (0, 1)")
    if not args.batches or min(args.batches) < 1:
        raise UsageError(f"--batches {args.batches} must be positive")
    if not 1 <= args.n_test <= 10_000:
        raise UsageError(f"--n-test {args.n_test} must be in [1, 10000]")
    if max(args.batches) > args.n_test:
        raise UsageError(f"--batches {args.batches}: batch {max(args.batches)} is more than "
                         f"--n-test {args.n_test}")
    if args.reps < 1 or args.steps < 1 or args.dense_iterations < 1:
        raise UsageError("--reps, --steps and --dense-iterations must be >= 1")
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UsageError(f"--tolerance {args.tolerance} must be a finite number >= 0 (percentage points)")
    if args.choose_by != "geomean":
        try:
            args.choose_by = int(args.choose_by)
        except ValueError:
            raise UsageError(f"--choose-by {args.choose_by!r} must be 'geomean' or a batch size") from None
        if args.choose_by not in args.batches:
            raise UsageError(f"--choose-by {args.choose_by} is not one of --batches {args.batches}")
    args.finetune = per_net_ints(args.finetune, args.nets, FINETUNE, "--finetune")
    args.dns_iterations = per_net_ints(args.dns_iterations, args.nets, None, "--dns-iterations")
    for net in args.nets:
        if args.finetune[net] is None:
            raise UsageError(f"--finetune: no default for {net!r}; give {net}=N")
        if args.finetune[net] < args.steps:
            raise UsageError(f"--finetune {args.finetune[net]} for {net} is fewer than --steps {args.steps}")
        spec = get_spec(net)
        for b in args.budgets:
            removal_targets(spec, structured_config(args, net, b))  # ConfigError if the budget cannot be met
    return args


def structured_config(args, net: str, budget: float) -> StructuredConfig:
    return StructuredConfig(criterion=args.criterion, flops=int(budget * net_flops(get_spec(net))),
                            steps=args.steps, step_iterations=args.finetune[net] // args.steps)


# --- nets --------------------------------------------------------------------------------------------------


def loaded(path: Path, net: str, flag: str):
    """(spec, params, masks) of a file refdns reads, refused unless it holds ``net``."""
    st = load_net(path)
    if st.spec.name != net:
        raise UsageError(f"{flag} {net}={path} holds a {st.spec.name}, not a {net}")
    return st.spec, st.params, st.masks


def make_nets(net: str, data: Data, args) -> tuple[dict, dict]:
    """{name: (spec, params, masks)} for dense, DNS and each structured net (masked and thinned), and
    where each came from."""
    spec = get_spec(net)
    info: dict = {"walls": {}, "source": {}}
    nets = {}
    t0 = time.perf_counter()
    if net in args.dense:
        nets["dense"] = loaded(args.dense[net], net, "--dense")
        info["source"]["dense"] = f"given: {args.dense[net]}"
    else:
        st, _ = run_training(spec, data, TrainConfig(iterations=args.dense_iterations, test_interval=NO_TEST),
                             seed=SEED)
        nets["dense"] = (spec, st.params, st.masks)
        info["source"]["dense"] = (f"trained here: Caffe's recipe, {args.dense_iterations:,} iterations, "
                                   f"seed {SEED}")
    info["walls"]["dense"] = time.perf_counter() - t0
    _, dense_params, dense_masks = nets["dense"]

    t0 = time.perf_counter()
    if net in args.dns:
        nets["dns"] = loaded(args.dns[net], net, "--dns")
        info["source"]["dns"] = f"given: {args.dns[net]}"
    else:
        exp = experiment(net, "dns", iterations=args.dns_iterations[net], test_interval=NO_TEST, seed=SEED)
        dense_state = dense_run_state(spec, data, dense_params, dense_masks)
        res = reproduce(exp, data, dense_state=dense_state)
        nets["dns"] = (spec, res.pruned.state.params, res.pruned.state.masks)
        info["source"]["dns"] = (f"run here from the dense net: refdns's DNS recipe, "
                                 f"{exp.train.iterations:,} iterations, base lr {exp.train.sgd.base_lr}, "
                                 f"seed {SEED}")
    info["walls"]["dns"] = time.perf_counter() - t0

    for b in args.budgets:
        t0 = time.perf_counter()
        cfg = structured_config(args, net, b)
        method = StructuredPruning(cfg)
        if cfg.criterion in ACTIVATION_CRITERIA:
            method = method.with_data(data.x_train, data.y_train)
        st, _ = run_training(spec, data, TrainConfig(iterations=cfg.steps * cfg.step_iterations,
                                                     test_interval=NO_TEST),
                             seed=SEED, method=method, params=dense_params, masks=dense_masks)
        small_spec, small_params, report = thin(spec, st.params, st.masks)
        key = f"{args.criterion} {100 * b:g}%"
        nets[f"masked {key}"] = (spec, st.params, st.masks)
        nets[key] = (small_spec, small_params, {k: np.ones(v.shape, bool) for k, v in small_params.items()})
        info["walls"][key] = time.perf_counter() - t0
        info["source"][key] = {"flop_budget": cfg.flops, "budget_fraction": b, "thin": report.message,
                               "iterations": cfg.steps * cfg.step_iterations}
    return nets, info


def dense_run_state(spec, data: Data, params, masks):
    """The dense net as a zero-iteration run state, for :func:`reproduce`'s ``dense_state``."""
    st, _ = run_training(spec, data, TrainConfig(iterations=0, test_interval=NO_TEST), seed=SEED,
                         params=params, masks=masks)
    return st


# --- the table ---------------------------------------------------------------------------------------------


def geomean(values) -> float:
    values = list(values)
    return float(np.exp(np.mean(np.log(values))))


def choose_matched(rows: list[dict], dns_error: float, tolerance_pp: float, choose_by, batches) -> dict:
    """The matched-error rule (module docstring) over the structured ``rows``; returns the choice and why."""

    def speed(r):
        return r["speedup_geomean"] if choose_by == "geomean" else r[f"batch{choose_by}_speedup"]

    limit = dns_error + tolerance_pp / 100.0
    within = [r for r in rows if r["test_error"] <= limit + 1e-12]
    if within:
        best = max(within, key=speed)
        by = "geomean" if choose_by == "geomean" else f"batch {choose_by}"
        why = (f"largest speed-up ({by}) among the {len(within)} structured nets with test error <= DNS's "
               f"{100 * dns_error:.2f}% + "
               f"{tolerance_pp:g} pp = {100 * limit:.2f}%")
    else:
        best = min(rows, key=lambda r: (r["test_error"], -speed(r)))
        why = (f"NO structured net reaches DNS's {100 * dns_error:.2f}% + {tolerance_pp:g} pp = "
               f"{100 * limit:.2f}%: the one of lowest test error is shown instead")
    return {"net": best["net"], "within_tolerance": bool(within), "why": why, "limit": limit,
            "dns_over_structured": {str(b): None for b in batches}}


def bench_net(net: str, data: Data, x_test, y_test, args) -> dict:
    nets, info = make_nets(net, data, args)
    names = ["dense", "dns"] + [k for k in nets if k not in ("dense", "dns") and not k.startswith("masked ")]
    eff = {k: effective_params(p, m) for k, (s, p, m) in nets.items()}
    dns_net = SparseNet.from_params(*nets["dns"])  # what `refdns infer --sparse` builds
    preds = {k: predict(nets[k][0], eff[k], x_test) for k in names if k != "dns"}
    preds["dns"] = dns_net.predict(x_test)
    dns_dense_pred = predict(nets["dns"][0], eff["dns"], x_test)
    same_argmax = {}  # the thinned net against the masked net it was cut from
    for k in names[2:]:
        masked = predict(nets[f"masked {k}"][0], eff[f"masked {k}"], x_test)
        same_argmax[k] = bool(np.array_equal(preds[k], masked))

    def dense_runner(k):
        return lambda x: forward(nets[k][0], eff[k], x)[0]

    runners = {k: (dns_net.forward if k == "dns" else dense_runner(k)) for k in names}
    times = ts.time_runners(runners, x_test, reps=args.reps, quick=args.quick_timing, batches=args.batches)
    d_params, d_flops = nets["dense"][0].n_params(), net_flops(nets["dense"][0])
    rows = []
    for k in names:
        spec, _, masks = nets[k]
        if k == "dns":
            params = sum(int(np.count_nonzero(m)) for m in masks.values())
            flops = ts.sparse_flops(spec, masks)
        else:
            params, flops = spec.n_params(), net_flops(spec)
        row = {"net": "DNS (CSR)" if k == "dns" else k, "arch": spec.name, "params": params, "flops": flops,
               "test_error": float(np.mean(preds[k] != y_test)),
               "params_ratio": d_params / params if params else None,  # None: every weight pruned
               "flops_ratio": d_flops / flops if flops else None}
        row |= ts.speed_columns(times, k, batches=args.batches)
        row["speedup_geomean"] = geomean(row[f"batch{b}_speedup"] for b in args.batches)
        if k != "dense" and k != "dns":
            row |= info["source"][k] | {"same_argmax_as_masked": same_argmax[k]}
        rows.append(row)
    dns_row = rows[1]
    matched = choose_matched(rows[2:], dns_row["test_error"], args.tolerance, args.choose_by, args.batches)
    chosen = next(r for r in rows if r["net"] == matched["net"])
    matched["dns_over_structured"] = {
        str(b): dns_row[f"batch{b}_speedup"] / chosen[f"batch{b}_speedup"] for b in args.batches}
    return {"net": net, "rows": rows, "matched": matched, "source": info["source"],
            "train_seconds": info["walls"],
            "dns_csr_agrees_with_dense_forward": bool(np.array_equal(preds["dns"], dns_dense_pred))}


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def to_markdown(res: dict) -> str:
    b = res["batches"]
    lines = [
        "# Error against measured speed-up: DNS (CSR kernels) and structured pruning at matched error",
        "",
        f"Produced by `{res['command']}` on {res['machine']}, one BLAS and one Numba thread; load average "
        f"{res['load_before']} before, {res['load_after']} after. Median of {res['reps']} repetitions "
        f"(batches over 64: max(3, reps // 2)); speed-ups against the dense net timed in the same run; wall "
        f"{res['seconds']:.0f} s in all. Test errors on the first {res['n_test']:,} MNIST test images.",
        "",
        f"Structured nets: {res['criterion']} criterion, a FLOP budget per row (of the dense net's FLOPs), "
        f"{res['steps']} prune/fine-tune steps, fine-tuning iterations (all steps) "
        + ", ".join(f"{k} {v:,}" for k, v in res["finetune"].items())
        + f", seed {SEED}, Caffe's solver (lr 0.01), from the same dense net; then `thin`. Matched error: "
        f"the structured net of largest speed-up ({res['choose_by']}) whose test error is at most DNS's + "
        f"{res['tolerance_pp']:g} percentage points; if none is, the one of lowest error. The choice reads "
        "test errors, as the issue's table compares test errors (nothing is tuned on them: the ladder is "
        "fixed).",
        "",
    ]
    for r in res["nets"]:
        m = r["matched"]
        lines += [f"## {r['net']}", "", f"Dense: {r['source']['dense']}. DNS: {r['source']['dns']}. "
                  f"DNS's CSR predictions equal its dense forward's: "
                  f"{'yes' if r['dns_csr_agrees_with_dense_forward'] else 'NO'}.", "",
                  "| net | parameters | x fewer | FLOPs/image | x fewer | test error | "
                  + " | ".join(f"batch {x:,} | speed-up" for x in b) + " | geomean speed-up |",
                  "|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(b) + "---:|"]
        for row in r["rows"]:
            mark = " **(matched)**" if row["net"] == m["net"] else ""
            cells = []
            for x in b:
                s = row[f"batch{x}_median_s"]
                cells.append(f"{1e6 * s:.0f} us" if s < 1e-3 else f"{1e3 * s:.2f} ms")
                cells.append(f"{row[f'batch{x}_speedup']:.2f}")
            lines.append(f"| {row['net']}{mark} | {row['params']:,} | {ratio(row['params_ratio'])} | "
                         f"{row['flops']:,} | {ratio(row['flops_ratio'])} | {100 * row['test_error']:.2f}% | "
                         + " | ".join(cells) + f" | {row['speedup_geomean']:.2f} |")
        lines += ["", f"**Matched error: {m['net']}** - {m['why']}. DNS's speed-up / its speed-up: "
                  + ", ".join(f"batch {int(x):,} {v:.2f}" for x, v in m["dns_over_structured"].items()) + ".",
                  "", "Structured nets: " + "; ".join(
                      f"{row['net']} = `{row['arch']}` (budget {row['flop_budget']:,} FLOPs, "
                      f"{row['iterations']:,} iterations, same argmax as masked: "
                      f"{'yes' if row['same_argmax_as_masked'] else 'NO'})" for row in r["rows"][2:]),
                  "", "Wall times of making the nets (s): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r["train_seconds"].items()), ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except RefdnsError as e:
        print(f"error_speedup.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    x_test, y_test = x_test[: args.n_test], y_test[: args.n_test]
    data = Data(x_train, y_train, x_test[:500], y_test[:500])  # test set unused while training (NO_TEST)
    t0 = time.perf_counter()
    load_before = [round(v, 2) for v in os.getloadavg()]
    nets = [bench_net(n, data, x_test, y_test, args) for n in args.nets]
    res = {
        "command": "python validate/error_speedup.py " + " ".join(argv),
        "reps": args.reps, "batches": list(args.batches), "n_test": args.n_test, "criterion": args.criterion,
        "budgets": list(args.budgets), "steps": args.steps, "finetune": args.finetune,
        "dense_iterations": args.dense_iterations, "dns_iterations": args.dns_iterations,
        "tolerance_pp": args.tolerance, "choose_by": args.choose_by,
        "quick_timing": args.quick_timing, "seed": SEED, "nets": nets,
        "machine": " ".join(f"{platform.machine()} {platform.processor()} {os.cpu_count()} cores".split()),
        "load_before": load_before, "load_after": [round(v, 2) for v in os.getloadavg()],
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
