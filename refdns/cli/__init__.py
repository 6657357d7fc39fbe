"""refdns: train, prune and verify small networks on MNIST, the way the pruning papers' own code did.

Commands: train (dense), dns (surgery on a dense checkpoint), reproduce (dense + a pruning method + the paper's
table), resume (an interrupted run, bit-exactly), run / show / rerun / sweep (run files and grids of them),
eval / infer / report / sensitivity (what a net does, and its figures), golden / verify / diff (step traces and
comparisons for checking another implementation), import / export / compress / decompress (weight files).
`refdns COMMAND --help` for each. Errors exit with status 2 and say what was wrong; --debug shows the
traceback of an unexpected failure.

This package is the only place that reads argv or prints: each module turns its commands' arguments into
library calls (mostly an :class:`refdns.pipeline.Experiment`) and prints what comes back.
"""

from __future__ import annotations

import argparse
import sys

from refdns import __version__
from refdns.cli import analysis, files, runs, training, verification
from refdns.cli.common import _Help, write_json
from refdns.errors import RefdnsError
from refdns.nets import NETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refdns", description=__doc__, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"refdns {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected failure")
    sub = parser.add_subparsers(dest="command", required=True)
    nets = sorted(NETS)

    def command(name, func, help):
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Help)
        p.set_defaults(func=func)
        return p

    for module in (training, runs, analysis, verification, files):
        module.add_commands(command, nets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from refdns.perf import tune_malloc

    tune_malloc()
    try:
        return args.func(args)
    except RefdnsError as e:
        print(f"refdns: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        where = getattr(e, "checkpoint", None)
        if where is not None:
            print(f"refdns: {e}\nrefdns: continue it with: refdns resume {where}", file=sys.stderr)
        else:
            print("refdns: interrupted (nothing written)", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a bad input: say so, and keep the traceback for --debug
        if args.debug:
            raise
        print(f"refdns: internal error: {type(e).__name__}: {e}\n(this is a bug in refdns; rerun with --debug "
              "for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "main", "write_json"]
