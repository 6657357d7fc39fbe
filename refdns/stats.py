"""Seed statistics: one experiment over several seeds, as mean, standard deviation, min and max.

A single run cannot tell one setting from another: the same LeNet-300-100 DNS settings gave 2.31%, 2.16% and
2.09% test error on three seeds. :func:`result_row` keeps the figures of one seed's run that the tables use;
:func:`seed_statistics` summarises rows of several seeds; :func:`format_statistics` writes the markdown
table, labelled with the protocol the settings were selected under.
"""

from __future__ import annotations

import json
import math
from typing import Any

from refdns.pipeline import PROTOCOL_LABEL, Result, experiment_order, layer_table, order_note


def result_row(result: Result) -> dict[str, Any]:
    """One seed's figures: test (and validation) error, dense errors, kept fraction in total and per layer."""
    final = result.final
    rows = layer_table(final.state.spec, final.state.masks)
    return {
        "seed": result.experiment.seed,
        "select_on": result.experiment.select_on,
        "order": experiment_order(result.experiment),
        "test_error": final.test_error,
        "validation_error": final.validation_error,
        "dense_test_error": result.dense.test_error,
        "kept_fraction": rows[-1]["kept_fraction"],
        "layers": {r["layer"]: r["kept_fraction"] for r in rows[:-1]},
        "iterations": result.iterations,
        "seconds": result.seconds,
    }


def describe(values: list[float]) -> dict[str, Any]:
    """n, mean, sample standard deviation (n - 1; None for one value), min and max."""
    n = len(values)
    if n == 0:
        raise ValueError("describe needs at least one value")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def seed_statistics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The statistics over seeds of :func:`result_row` rows (all of one experiment and one protocol)."""
    if not rows:
        raise ValueError("seed_statistics needs at least one row")
    protocols = {r["select_on"] for r in rows}
    if len(protocols) != 1:
        raise ValueError(f"rows mix selection protocols {sorted(protocols)}")
    # rows of one experiment share its data order (rows written before it was recorded carry none)
    orders = {json.dumps(r["order"], sort_keys=True) for r in rows if r.get("order") is not None}
    if len(orders) > 1:
        raise ValueError(f"rows mix data orders or draws {sorted(orders)}")
    out = {
        "seeds": [r["seed"] for r in rows],
        "select_on": rows[0]["select_on"],
        "order": json.loads(orders.pop()) if orders else None,
        "test_error": describe([r["test_error"] for r in rows]),
        "validation_error": None,
        "kept_fraction": describe([r["kept_fraction"] for r in rows]),
        "layers": {layer: describe([r["layers"][layer] for r in rows]) for layer in rows[0]["layers"]},
    }
    if all(r["validation_error"] is not None for r in rows):
        out["validation_error"] = describe([r["validation_error"] for r in rows])
    return out


def pm(d: dict[str, Any] | None, *, percent: bool = True, digits: int = 2) -> str:
    """``mean ± sd`` (``mean`` alone for one seed), in percent by default."""
    if d is None:
        return "-"
    scale, unit = (100, "%") if percent else (1, "")
    text = f"{scale * d['mean']:.{digits}f}"
    if d["sd"] is not None:
        text += f" ± {scale * d['sd']:.{digits}f}"
    return text + unit


def _range(d: dict[str, Any], digits: int = 2) -> str:
    return f"{100 * d['min']:.{digits}f}-{100 * d['max']:.{digits}f}%"


def format_statistics(stats: dict[str, Any], title: str) -> str:
    """The markdown table of :func:`seed_statistics`: error and kept fraction per layer over the seeds."""
    n = len(stats["seeds"])
    lines = [f"{title}: {n} seed(s) {stats['seeds']}, {PROTOCOL_LABEL[stats['select_on']]}", "",
             "| figure | mean ± sd | min-max |", "|---|---:|---:|",
             f"| test error | {pm(stats['test_error'])} | {_range(stats['test_error'])} |"]
    if stats["validation_error"] is not None:
        lines.append(f"| validation error | {pm(stats['validation_error'])} | {_range(stats['validation_error'])} |")
    for layer, d in stats["layers"].items():
        lines.append(f"| kept {layer} | {pm(d, digits=3)} | {_range(d, 3)} |")
    lines.append(f"| kept total | {pm(stats['kept_fraction'], digits=3)} | {_range(stats['kept_fraction'], 3)} |")
    if stats.get("order") is not None:
        lines += ["", order_note(stats["order"])]
    return "\n".join(lines)
