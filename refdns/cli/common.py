"""Shared pieces of the command line: JSON output, the progress bar, argument types and groups."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from refdns import __version__
from refdns.atomic import write_text
from refdns.errors import ConfigError
from refdns.optim import learning_rate

DEFAULT_DIR = Path("runs")  # where outputs go unless a path is given (git-ignored in the repository)


def _clean(obj: Any) -> Any:
    """JSON cannot hold NaN or Inf: they become null (strict JSON, readable by every parser)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path, obj: dict[str, Any]) -> None:
    write_text(path, json.dumps(_clean(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


class Progress:
    """A tqdm bar per phase with ETA plus a log line per test; quiet when not wanted."""

    def __init__(self, *, enabled: bool):
        self.enabled, self.bar, self.last_loss, self.cfg = enabled, None, float("nan"), None
        self.measured_on = "test"

    def phase(self, name: str, exp, cfg) -> None:
        from tqdm import tqdm

        self.close()
        self.measured_on = exp.select_on
        print(f"refdns {__version__}: {name} {exp.net} for {cfg.iterations} iterations, seed {exp.seed}",
              file=sys.stderr)
        if name != "dense":
            print(f"  {json.dumps(exp.method.config_dict(), sort_keys=True)}", file=sys.stderr)
        self.cfg = cfg
        self.bar = tqdm(total=cfg.iterations, desc=f"{name} {exp.net}", unit="it", disable=not self.enabled,
                        dynamic_ncols=True, leave=False, file=sys.stderr)

    def resume(self, total: int, done: int, config: dict) -> None:
        from tqdm import tqdm

        from refdns.run import TrainConfig

        self.cfg = TrainConfig(**config["train"])
        self.bar = tqdm(total=total, initial=done, desc="resume", unit="it", disable=not self.enabled,
                        dynamic_ncols=True, leave=False, file=sys.stderr)

    def step(self, state, loss: float, lr: float) -> None:
        self.last_loss = loss
        self.bar.update(1)
        if state.iteration % 50 == 0:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.5f}", refresh=False)

    def test(self, state, err: float) -> None:
        lr = learning_rate(self.cfg.sgd, state.iteration - 1)
        self.bar.write(f"iter {state.iteration:>6}  loss {self.last_loss:.4f}  lr {lr:.6f}  "
                       f"{self.measured_on} error {100 * err:.2f}%", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} must be >= {lo}")
        return value
    parse.__name__ = f"integer >= {lo}"
    return parse


def _finite_float(*, positive: bool):
    """An argparse type: a finite float, > 0 (``positive``) or >= 0."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"{value} must be a finite number {'>' if positive else '>='} 0")
        return value
    return parse


_positive_float = _finite_float(positive=True)
_tolerance = _finite_float(positive=False)


POSITIVE, NATURAL = _int_at_least(1), _int_at_least(0)


def _per_layer(text: str | None, layers, name: str, cast) -> dict[str, Any]:
    """Parse ``3`` (every layer) or ``conv1=1,ip1=4`` (those layers) into {layer: value}."""
    if text is None:
        return {}
    if "=" not in text:
        try:
            return {layer: cast(text) for layer in layers}
        except ValueError:
            raise ConfigError(f"--{name} {text!r}: expected a number or layer=value pairs") from None
    out = {}
    for part in text.split(","):
        layer, _, value = part.partition("=")
        layer = layer.strip()
        if layer not in layers:
            raise ConfigError(f"--{name}: unknown layer {layer!r}; this net has {list(layers)}")
        try:
            out[layer] = cast(value)
        except ValueError:
            raise ConfigError(f"--{name} {part!r}: {value!r} is not a valid value") from None
    return out


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected numbers separated by commas") from None


def _bits(text: str | None) -> dict[str, int]:
    """``--bits``: ``5`` (every layer) or ``conv=8,fc=5,ip1=4`` (groups or layers); checked by the library."""
    if text is None:
        return {}
    if "=" not in text:
        text = f"all={text}"
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise ConfigError(f"--bits {part!r}: expected name=whole number") from None
    return out


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default (``%(default)s``) and keeps the description's line breaks."""


def _data_args(p) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="folder holding mnist/ (and fashion-mnist/); unset: $REFDNS_DATA, then "
                   "the user cache, then a checked download")
    g.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"], help="which image set")
    g.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")


def _output_args(p, *, json_help: str = "also write the final figures as JSON") -> None:
    p.add_argument("--json", metavar="FILE", help=json_help)
    p.add_argument("--force", action="store_true", help="overwrite output files that exist already")
