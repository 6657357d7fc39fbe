"""run, show, rerun, sweep: experiments described by run files (refdns.runfile) and grids of them."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from refdns import __version__, checkpoint
from refdns.atomic import check_inputs, check_outputs, write_text
from refdns.cli.common import DEFAULT_DIR, POSITIVE, _data_args
from refdns.cli.training import _run_seeds, _seed_run_args
from refdns.errors import ConfigError


def _experiment_overrides(args, exp):
    changes = {k: getattr(args, k) for k in ("threads", "select_on") if getattr(args, k, None) is not None}
    return dataclasses.replace(exp, **changes) if changes else exp


def cmd_run(args) -> int:
    from refdns import runfile

    exp, seeds = runfile.read(args.runfile)
    if args.seeds is not None:
        seeds = runfile.parse_seeds(args.seeds, "--seeds")
    exp = _experiment_overrides(args, exp)
    name = Path(args.runfile).stem
    out_dir = Path(args.out_dir) if args.out_dir is not None else DEFAULT_DIR / name
    resolved = out_dir / "run.toml"
    check_outputs({"run.toml": resolved}, force=args.force)
    _run_seeds(args, exp, seeds, out_dir, label=f"{name} ({exp.net}, {exp.method_name})")
    runfile.write(resolved, exp, seeds, header=f"the run file {args.runfile} as run, every setting spelled out")
    print(f"\nrun file as run: {resolved}")
    return 0


def cmd_show(args) -> int:
    from refdns import runfile

    check_inputs({"checkpoint": args.checkpoint})
    ck = checkpoint.load(args.checkpoint)
    exp, seeds = runfile.from_dict(runfile.from_checkpoint_config(ck.config, source=str(args.checkpoint)))
    text = runfile.dumps(runfile.to_dict(exp, seeds), header=(
        f"recreates {args.checkpoint} ({ck.state.spec.name}, {ck.method}, iteration {ck.state.iteration}):\n"
        f"refdns run THIS_FILE, or refdns rerun {args.checkpoint}"))
    if args.out is not None:
        check_outputs({"--out": args.out}, inputs={"checkpoint": args.checkpoint}, force=args.force)
        write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def cmd_rerun(args) -> int:
    from refdns import runfile

    check_inputs({"checkpoint": args.checkpoint})
    ck = checkpoint.load(args.checkpoint)
    exp, _ = runfile.from_dict(runfile.from_checkpoint_config(ck.config, source=str(args.checkpoint)))
    exp = _experiment_overrides(args, exp)
    out_dir = Path(args.out_dir) if args.out_dir is not None else DEFAULT_DIR / f"{Path(args.checkpoint).stem}-rerun"
    _run_seeds(args, exp, (exp.seed,), out_dir, label=f"rerun of {args.checkpoint}")
    again = checkpoint.load(out_dir / f"seed{exp.seed}-{exp.method_name}.h5").state
    old = ck.state
    differ = [k for k in old.params if not (np.array_equal(old.params[k], again.params[k])
                                            and np.array_equal(old.masks[k], again.masks[k]))]
    if not differ and again.iteration == old.iteration:
        print(f"\nthe rerun equals {args.checkpoint} bit for bit (weights and masks)")
    else:
        print(f"\nthe rerun differs from {args.checkpoint} in {len(differ)} of {len(old.params)} tensors "
              f"(iteration {again.iteration} vs {old.iteration}); bits repeat only with the same threads and "
              "library builds (README)")
    return 0


def cmd_sweep(args) -> int:
    from refdns import sweep as sw

    sweep = sw.read(args.sweepfile)
    out_dir = Path(args.out_dir) if args.out_dir is not None else DEFAULT_DIR / Path(args.sweepfile).stem
    own = out_dir / "sweep.json"
    described = json.dumps({"base": sweep.base, "grid": sweep.grid, "seeds": list(sweep.seeds)}, sort_keys=True,
                           indent=1) + "\n"
    if own.exists() and own.read_text() != described and not args.force:
        raise ConfigError(f"{out_dir} holds the results of another sweep ({own}); give another --out-dir, or "
                          "--force to add this sweep's points beside them")
    if args.data_dir is None and args.scheduler is None:
        from refdns.datasets import load_mnist

        load_mnist("train", dataset=sweep.base["dataset"], download=not args.no_download)  # once, here
    engine = sw.DaskEngine(args.scheduler) if args.scheduler else sw.LocalPool(args.workers)
    n = len(sweep.points()) * len(sweep.seeds)
    where = f"Dask scheduler {args.scheduler}" if args.scheduler else f"{args.workers} local process(es)"
    print(f"refdns {__version__}: sweep {args.sweepfile}: {len(sweep.points())} point(s) x {len(sweep.seeds)} "
          f"seed(s) = {n} runs on {where}, one thread each; results in {out_dir}", file=sys.stderr)
    write_text(own, described)
    done = []

    def on_done(point, seed, row, reused):
        done.append(1)
        note = " (finished before)" if reused else ""
        print(f"[{len(done)}/{n}] {point} seed {seed}: test error {100 * row['test_error']:.2f}%, kept "
              f"{100 * row['kept_fraction']:.3f}%{note}", file=sys.stderr)

    t0 = time.perf_counter()
    try:
        result = sw.run_sweep(sweep, out_dir, engine, data_dir=args.data_dir, on_done=on_done)
    except KeyboardInterrupt:
        print(f"refdns: sweep interrupted; {len(done)} finished point(s) are kept in {out_dir / 'points'}\n"
              f"refdns: resume it with the same command: refdns sweep {args.sweepfile} --out-dir {out_dir}",
              file=sys.stderr)
        return 130
    finally:
        engine.close()
    print(sw.format_table(result))
    print(f"\nsweep wall time {time.perf_counter() - t0:.1f} s; tables {out_dir / 'table.md'} and "
          f"{out_dir / 'table.json'}")
    return 0


def add_commands(command, nets) -> None:
    """Register this module's subcommands (``command(name, func, help)`` makes a subparser)."""
    p = command("run", cmd_run, "run the experiment a run file (TOML) describes, once per seed, with statistics")
    p.add_argument("runfile", help="run file (TOML; see refdns/runfile.py), or a built-in recipe name such as "
                   "lenet-5-dns (refdns/recipes/)")
    p.add_argument("--seeds", help="seeds to run instead of the file's: 0-4 or 0,3")
    p.add_argument("--out-dir", help=f"where checkpoints and run.toml go (default {DEFAULT_DIR}/<file stem>)")
    _seed_run_args(p)
    p = command("show", cmd_show, "print the run file (TOML) that recreates a checkpoint's run")
    p.add_argument("checkpoint", help="HDF5 checkpoint written by train, dns, reproduce or run")
    p.add_argument("-o", "--out", metavar="FILE", help="write the run file here instead of printing it")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p = command("rerun", cmd_rerun, "rerun a checkpoint's experiment from its recorded settings and say "
                "whether the result repeats bit for bit")
    p.add_argument("checkpoint", help="HDF5 checkpoint written by train, dns, reproduce or run")
    p.add_argument("--out-dir", help=f"where the new checkpoints go (default {DEFAULT_DIR}/<stem>-rerun)")
    _seed_run_args(p)
    p = command("sweep", cmd_sweep, "run a grid of settings x seeds in parallel (process pool or Dask) into one "
                "table; finished points are not rerun")
    p.add_argument("sweepfile", help="sweep file: a run file plus [grid] (see refdns/sweep.py)")
    p.add_argument("--out-dir", help=f"results folder (default {DEFAULT_DIR}/<file stem>); rerun to resume")
    p.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler (tcp://host:8786) instead of the "
                   "local process pool (pip install 'refdns[sweep]')")
    p.add_argument("--workers", type=POSITIVE, default=os.cpu_count() or 1, help="local processes")
    p.add_argument("--force", action="store_true", help="use an --out-dir that holds another sweep's results")
    _data_args(p)

