"""Sensitivity analysis, as Distiller, SparseML and NNI ship it: prune one layer at a time, by weight magnitude,
to each of a list of densities, with no retraining, and measure the error. The usual first step before
choosing per-layer settings (DNS's c_rate): a layer whose error climbs early wants to keep more.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from refdns.atomic import write_figure
from refdns.errors import ConfigError
from refdns.pipeline import PROTOCOL_LABEL, Data, selection_data
from refdns.prune.magnitude import top_k_mask
from refdns.run import RunState
from refdns.train import evaluate

DEFAULT_DENSITIES = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01)


def check_densities(densities) -> tuple[float, ...]:
    out = []
    for d in densities:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1:
            raise ConfigError(f"density {d!r} must be a number in (0, 1]")
        out.append(float(d))
    if not out:
        raise ConfigError("densities must name at least one density")
    return tuple(out)


def sensitivity(state: RunState, data: Data, densities=DEFAULT_DENSITIES, *, select_on: str = "test",
                layers: list[str] | None = None) -> dict[str, Any]:
    """Per layer and density: the error with only that layer's weights cut to the ``density`` of largest
    |w * mask| (a fraction of all its weights; a layer already sparser stays as it is), every other layer as
    the checkpoint has it. Errors on the test set or the validation split (``select_on``)."""
    densities = check_densities(densities)
    sel = selection_data(data, select_on)
    layers = list(layers) if layers is not None else list(state.spec.layer_names)
    unknown = [x for x in layers if x not in state.spec.layer_names]
    if unknown:
        raise ConfigError(f"unknown layer(s) {unknown}; {state.spec.name} has {list(state.spec.layer_names)}")
    base = evaluate(state, sel.x_test, sel.y_test)
    rows = []
    for layer in layers:
        key = f"{layer}.weight"
        w, mask = state.params[key], state.masks[key]
        alive = int(np.count_nonzero(mask))
        for d in densities:
            k = min(int(round(d * w.size)), alive)
            masks = dict(state.masks)
            masks[key] = top_k_mask(w * mask, k, alive=mask)
            err = evaluate(dataclasses.replace(state, masks=masks, workspace=None), sel.x_test, sel.y_test)
            rows.append({"layer": layer, "density": d, "kept_fraction": k / w.size, "error": err})
    return {"net": state.spec.name, "select_on": select_on, "baseline_error": base, "densities": list(densities),
            "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    """Rows: layers; columns: densities; cells: error in %."""
    dens = result["densities"]
    lines = [f"sensitivity of {result['net']} (magnitude, one layer at a time, no retraining); "
             f"{result['select_on']} error, {PROTOCOL_LABEL[result['select_on']]}; as is: "
             f"{100 * result['baseline_error']:.2f}%", "",
             "| layer | " + " | ".join(f"{100 * d:g}%" for d in dens) + " |", "|---|" + "---:|" * len(dens)]
    layers = list(dict.fromkeys(r["layer"] for r in result["rows"]))
    for layer in layers:
        cells = {r["density"]: r["error"] for r in result["rows"] if r["layer"] == layer}
        lines.append(f"| {layer} | " + " | ".join(f"{100 * cells[d]:.2f}" for d in dens) + " |")
    return "\n".join(lines)


def figure(result: dict[str, Any], path: str | Path):
    """Error against kept fraction, one line per layer (matplotlib, the ``plot`` extra); returns the axes'
    (xlabel, ylabel)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the figure needs matplotlib: pip install 'refdns[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for layer in dict.fromkeys(r["layer"] for r in result["rows"]):
        pts = [(r["kept_fraction"], r["error"]) for r in result["rows"] if r["layer"] == layer]
        x, y = zip(*pts)
        ax.plot(np.asarray(x) * 100, np.asarray(y) * 100, marker="o", label=layer)
    ax.axhline(100 * result["baseline_error"], color="grey", linestyle="--", label="as is")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("weights kept in the layer (%)")
    ax.set_ylabel(f"{result['select_on']} error (%)")
    ax.legend()
    ax.set_title(f"sensitivity of {result['net']}: one layer pruned by magnitude, no retraining")
    fig.tight_layout()
    write_figure(path, fig, dpi=100)
    labels = (ax.get_xlabel(), ax.get_ylabel())
    plt.close(fig)
    return labels
