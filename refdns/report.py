"""Figures of a run, where people would rather look than read: PNGs and one HTML page (matplotlib, the
``plot`` extra).

From a checkpoint alone: per-layer density over iterations, connections pruned and spliced back per update
interval, the error over iterations (on the set the run measured itself on), and a histogram of |w| per layer
at the end of surgery with DNS's thresholds a and b drawn; given the dense checkpoint the run started from
(recorded in the run's config when it was written by ``reproduce`` / ``run``), the same histogram at the start.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refdns.atomic import write_figure, write_text
from refdns.checkpoint import Checkpoint
from refdns.errors import ConfigError
from refdns.pipeline import PROTOCOL_LABEL, churn_by_interval, layer_table, order_info, order_note
from refdns.run import RunState


@dataclass(frozen=True)
class Figure:
    """One written figure: its file, title and the labels of its axes (what the tests check, not pixels)."""

    name: str
    path: Path
    title: str
    axes: tuple[tuple[str, str], ...]  # (xlabel, ylabel) per axes


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("figures need matplotlib: pip install 'refdns[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, name: str, out_dir: Path, title: str, title_size: str = "large") -> Figure:
    fig.suptitle(title, fontsize=title_size)
    fig.tight_layout()
    path = out_dir / f"{name}.png"
    write_figure(path, fig, dpi=100)
    axes = tuple((ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes if ax.get_visible() and ax.has_data())
    plt.close(fig)
    return Figure(name, path, title, axes)


def density_figure(plt, state: RunState, out_dir: Path) -> Figure | None:
    updates = state.history.mask_updates
    if not updates:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for layer in state.spec.layer_names:
        rows = [(r.iteration, r.density) for r in updates if r.layer == layer]
        if rows:
            it, d = zip(*rows)
            ax.step(it, np.asarray(d) * 100, where="post", label=layer)
    ax.set_xlabel("iteration")
    ax.set_ylabel("kept connections (% of the layer)")
    ax.set_yscale("log")
    ax.legend()
    return _save(plt, fig, "density", out_dir, "per-layer density over iterations")


def churn_figure(plt, state: RunState, out_dir: Path, interval: int) -> Figure | None:
    churn = churn_by_interval(state, interval=interval)
    if not churn:
        return None
    layers = [n for n in state.spec.layer_names if any(c["layer"] == n for c in churn)]
    fig, axes = plt.subplots(len(layers), 1, figsize=(7, 2.2 * len(layers)), sharex=True, squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        rows = [c for c in churn if c["layer"] == layer]
        start = np.array([c["from"] for c in rows])
        ax.bar(start, [c["pruned"] for c in rows], width=interval * 0.45, align="edge", label="pruned")
        ax.bar(start + interval * 0.5, [c["spliced"] for c in rows], width=interval * 0.45, align="edge",
               label="spliced back")
        ax.set_yscale("symlog")  # the first update prunes most; later ones move a few
        ax.set_ylabel(f"{layer}: connections")
        ax.set_xlabel(f"iteration (blocks of {interval})")
        ax.legend(fontsize="small")
    return _save(plt, fig, "churn", out_dir, "connections pruned and spliced back per block of iterations")


def error_figure(plt, state: RunState, out_dir: Path, select_on: str) -> Figure | None:
    hist = state.history.test_error
    if not hist:
        return None
    it, err = zip(*hist)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(it, np.asarray(err) * 100, marker="o")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{select_on} error (%)")
    ax.set_yscale("log")
    return _save(plt, fig, "error", out_dir, f"{select_on} error over iterations ({PROTOCOL_LABEL[select_on]})")


def histogram_figure(plt, state: RunState, out_dir: Path, name: str, when: str,
                     thresholds: dict[str, tuple[float, float]]) -> Figure:
    layers = state.spec.layer_names
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        w = np.abs(state.params[f"{layer}.weight"]).ravel()
        kept = state.masks[f"{layer}.weight"].ravel()
        top = float(w.max()) if w.size else 1.0
        bins = np.linspace(0, top if top > 0 else 1.0, 60)
        ax.hist(w[kept], bins=bins, label="kept", alpha=0.7)
        if (~kept).any():
            ax.hist(w[~kept], bins=bins, label="pruned", alpha=0.7)
        if layer in thresholds:
            a, b = thresholds[layer]
            ax.axvline(a, color="k", linestyle="--", label=f"a = {a:.4f}")
            ax.axvline(b, color="r", linestyle=":", label=f"b = {b:.4f}")
        ax.set_yscale("log")
        ax.set_xlabel(f"|w| of {layer}")
        ax.set_ylabel("weights")
        ax.legend(fontsize="x-small", loc="upper right")
    return _save(plt, fig, name, out_dir, f"|w| per layer, {when}")


def thresholds_of(state: RunState) -> dict[str, tuple[float, float]]:
    """DNS's (a, b) per layer, from the method state (empty for the other methods)."""
    ms = state.method_state
    return {n: (float(ms[f"{n}.a"]), float(ms[f"{n}.b"])) for n in state.spec.layer_names
            if f"{n}.a" in ms and f"{n}.b" in ms}


def write_report(ck: Checkpoint, out_dir: str | Path, *, source: str, dense: RunState | None = None) -> list[Figure]:
    """Write the figures of ``ck`` (and ``dense``, the run's starting point, if given) and ``index.html``."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    st = ck.state
    select_on = ck.config.get("select_on", "test")
    ab = thresholds_of(st)
    interval = max(ck.config.get("train", {}).get("iterations", st.iteration) // 20, 1)
    figs = [density_figure(plt, st, out_dir), churn_figure(plt, st, out_dir, interval),
            error_figure(plt, st, out_dir, select_on)]
    if dense is not None:
        figs.append(histogram_figure(plt, dense, out_dir, "weights_start", "at the start of surgery (dense)", ab))
    figs.append(histogram_figure(plt, st, out_dir, "weights_end", f"at the end (iteration {st.iteration})", ab))
    figs = [f for f in figs if f is not None]
    rows = layer_table(st.spec, st.masks)
    table = "".join(f"<tr><td>{html.escape(r['layer'])}</td><td>{r['params']:,}</td><td>{r['kept']:,}</td>"
                    f"<td>{100 * r['kept_fraction']:.2f}%</td></tr>" for r in rows)
    body = "".join(f'<h2>{html.escape(f.title)}</h2><img src="{f.path.name}" alt="{html.escape(f.title)}">'
                   for f in figs)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>refdns report: {html.escape(source)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} img{{max-width:100%}}
td,th{{padding:2px 10px;text-align:right}}</style></head><body>
<h1>{html.escape(st.spec.name)}, {html.escape(ck.method)}: {html.escape(source)}</h1>
<p>iteration {st.iteration}; errors {html.escape(PROTOCOL_LABEL[select_on])};
{html.escape(order_note(order_info(ck.config)))}</p>
<table><tr><th>layer</th><th>params</th><th>kept</th><th>kept %</th></tr>{table}</table>
{body}
<h2>configuration</h2><pre>{html.escape(json.dumps(ck.config, indent=1, sort_keys=True))}</pre>
</body></html>
"""
    write_text(out_dir / "index.html", page)
    return figs


def report_inputs(config: dict[str, Any]) -> str | None:
    """The dense checkpoint a run started from, as its config records it (None if it does not)."""
    return config.get("dense_from") or config.get("dense_checkpoint")


def sweep_figure(table: dict[str, Any], out_dir: str | Path) -> Figure:
    """Error against kept fraction, one point per grid point, error bars = sd over its seeds."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8.5, 5))
    kinds = [("test_error", "test error")]
    if table["select_on"] == "validation":
        kinds.insert(0, ("validation_error", "validation error"))
    for key, label in kinds:
        xs, xe, ys, ye = [], [], [], []
        for p in table["points"]:
            st = p["statistics"]
            xs.append(100 * st["kept_fraction"]["mean"])
            xe.append(100 * (st["kept_fraction"]["sd"] or 0.0))
            ys.append(100 * st[key]["mean"])
            ye.append(100 * (st[key]["sd"] or 0.0))
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt="o", capsize=3, label=label)
    if len(table["points"]) <= 12:
        for p in table["points"]:
            st = p["statistics"]
            text = ", ".join(f"{'.'.join(k.split('.')[-2:])}={v}" for k, v in p["values"].items())
            ax.annotate(text, (100 * st["kept_fraction"]["mean"], 100 * st["test_error"]["mean"]),
                        fontsize="x-small", xytext=(4, 4), textcoords="offset points")
    ax.margins(x=0.2)  # room for the point labels at the right edge
    ax.set_xlabel("kept connections (% of the net)")
    ax.set_ylabel("error (%), mean ± sd over seeds")
    ax.legend()
    n = len(table["seeds"])
    order = table.get("order")  # None: it varies over the grid (or a table written before it was recorded)
    data = ""
    if order:
        data = f"; data order {order['data_order']}" + (f", draws {order['draws']}" if "draws" in order else "")
    title = f"sweep of {table['net']} ({table['method']}), {n} seed(s){data}"
    return _save(plt, fig, "sweep", out_dir, f"{title}\n{PROTOCOL_LABEL[table['select_on']]}", title_size="medium")


def write_sweep_report(sweep_dir: str | Path, out_dir: str | Path) -> list[Figure]:
    """The figure and page of a finished sweep (its ``table.json`` and ``table.md``)."""
    sweep_dir = Path(sweep_dir)
    table = json.loads((sweep_dir / "table.json").read_text())
    fig = sweep_figure(table, out_dir)
    md = (sweep_dir / "table.md").read_text() if (sweep_dir / "table.md").exists() else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>refdns sweep: {html.escape(str(sweep_dir))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} img{{max-width:100%}}</style></head><body>
<h1>sweep {html.escape(str(sweep_dir))}</h1>
<img src="{fig.path.name}" alt="{html.escape(fig.title)}">
<pre>{html.escape(md)}</pre>
</body></html>
"""
    write_text(Path(out_dir) / "index.html", page)
    return [fig]
