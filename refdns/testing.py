"""Replay a golden trace through another implementation and check it: the harness other projects import.

The protocol
------------
A *candidate* is any Python callable ``candidate(start) -> step``. The harness calls it once with a
:class:`Start` (the golden's initial weights, masks and velocity, the net and method names, the layer and op
names, the golden's full ``config``), and then calls ``step(inp)`` once per golden step with a
:class:`StepInput`:

* ``inputs`` (N, 1, 28, 28) float32 and ``labels`` (N,) int64: the batch;
* ``iteration`` and ``lr`` (the learning rate the golden's solver used at this iteration);
* ``fired`` (L,) bool or None: DNS's Bernoulli outcome per layer (its random draw, which a replay takes as
  given instead of reproducing NumPy's stream); None for methods without draws;
* ``thresholds`` dict ``a``/``b``/``mu``/``std``/``t`` of (L,) float64, or None: DNS's thresholds as the
  golden computed them, for a candidate that wants to start from them (one that computes its own returns
  those, and they are compared);
* ``given_masks``: for ``random`` only, the masks the golden drew (the draw is an input, like ``fired``);
* ``hessian``: for OBD's and OBS's prune step, the curvature batch ``(x, y)``.

``step`` does one training step (mask update, forward on ``W * T``, loss, backward, solver update) and
returns a small dict:

=================  =====================================================================================
key                value
=================  =====================================================================================
``masks``          ``{"<layer>.weight": bool array, ...}``: the masks the forward pass used (after the update)
``activations``    every op's output, a list in op order or a dict by the golden's op names (optional)
``loss``           the mean cross-entropy, float
``grads``          ``{"<layer>.weight": dL/d(W*T), ...}`` before any masking
``params``         ``{"<layer>.weight": W, ...}`` after the update
``thresholds``     ``{"a": (L,), ...}`` (DNS)
anything with /    e.g. ``"han/round"``, ``"obd/saliency/ip1"``: written at that path as is
=================  =====================================================================================

Arrays may be NumPy arrays or anything ``np.asarray`` takes (a CPU torch tensor, a JAX array). The harness
writes a candidate trace (the golden's schema, ``data/SCHEMA.md``): the inputs it gave, what ``step``
returned cast to the golden's dtypes, and ``surgery/pruned`` / ``spliced`` (and, for methods without draws,
``surgery/fired``) derived from consecutive masks unless ``step`` returned ``surgery`` itself. Then
``refdns verify golden candidate`` compares the two. A tensor the candidate does not return is reported
missing; restrict the comparison with ``only`` (``refdns verify --only``) to check part of a method.

Example (pytest)::

    from refdns.testing import assert_matches_golden

    def test_my_lenet(tmp_path):
        assert_matches_golden("data/golden/lenet-300-100-dense.h5", my_candidate, tmp_path=tmp_path)

On failure the assertion message names the first diverging step and tensor, then gives verify's table.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from refdns import __version__
from refdns.atomic import atomic_path
from refdns.errors import TraceError
from refdns.golden import FORMAT, SCHEMA_VERSION, Tolerance, VerifyReport, _open_trace, format_report, verify

# Methods whose masks come from a random draw: the replay is handed the golden's masks.
DRAWN_MASKS = ("random",)
# Methods whose surgery/fired is a random draw (an input), not derived from the masks.
DRAWN_FIRED = ("dns",)


@dataclass(frozen=True)
class Start:
    """What a candidate starts from (copies; keys ``<layer>.weight`` / ``<layer>.bias``, Caffe layouts)."""

    net: str
    method: str
    steps: int
    layers: tuple[str, ...]
    activations: tuple[str, ...]
    config: dict[str, Any]
    params: dict[str, np.ndarray]  # float32
    masks: dict[str, np.ndarray]  # bool
    velocity: dict[str, np.ndarray]  # float32


@dataclass(frozen=True)
class StepInput:
    """One golden step's inputs to a candidate (see the module docstring)."""

    step: int
    iteration: int
    inputs: np.ndarray
    labels: np.ndarray
    lr: float
    fired: np.ndarray | None = None
    thresholds: dict[str, np.ndarray] | None = None
    given_masks: dict[str, np.ndarray] | None = None
    hessian: tuple[np.ndarray, np.ndarray] | None = None


Candidate = Callable[[Start], Callable[[StepInput], dict[str, Any]]]


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _group_tensors(group: h5py.Group, cast=None) -> dict[str, np.ndarray]:
    return {
        f"{layer}.{kind}": (group[layer][kind][()] if cast is None else group[layer][kind][()].astype(cast))
        for layer in group
        for kind in group[layer]
    }


def read_start(golden: str | os.PathLike) -> Start:
    """The :class:`Start` of a golden trace (its seal checked first)."""
    with _open_trace(golden, "golden") as g:
        return Start(
            net=_s(g.attrs["net"]),
            method=_s(g.attrs["method"]),
            steps=int(g.attrs["steps"]),
            layers=tuple(_s(n) for n in g.attrs["layers"]),
            activations=tuple(_s(n) for n in g.attrs["activations"]),
            config=json.loads(_s(g.attrs["config"])),
            params=_group_tensors(g["init/params"], np.float32),
            masks=_group_tensors(g["init/masks"], bool),
            velocity=_group_tensors(g["init/velocity"], np.float32),
        )


def _step_input(g: h5py.Group, t: int, method: str, layers: Sequence[str]) -> StepInput:
    s = g[f"steps/{t:04d}"]
    fired = s["surgery/fired"][()].astype(bool) if "surgery/fired" in s and method in DRAWN_FIRED else None
    thresholds = {k: s[f"thresholds/{k}"][()] for k in s["thresholds"]} if "thresholds" in s else None
    given = _group_tensors(s["masks"], bool) if method in DRAWN_MASKS else None
    hessian = (s["hessian/inputs"][()], s["hessian/labels"][()]) if "hessian" in s else None
    return StepInput(
        step=t,
        iteration=int(s.attrs["iteration"]),
        inputs=s["inputs"][()],
        labels=s["labels"][()],
        lr=float(s["lr"][()]),
        fired=fired,
        thresholds=thresholds,
        given_masks=given,
        hessian=hessian,
    )


def _write(c: h5py.Group, path: str, value, g: h5py.File, gpath: str) -> None:
    arr = np.asarray(value)
    if gpath in g and isinstance(g[gpath], h5py.Dataset):
        arr = arr.astype(g[gpath].dtype)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    c.create_dataset(path, data=arr)


def _params_group(c: h5py.Group, prefix: str, tensors: dict[str, Any], g: h5py.File, gprefix: str) -> None:
    for key, arr in tensors.items():
        sub = key.replace(".", "/")
        _write(c, f"{prefix}/{sub}", arr, g, f"{gprefix}/{sub}")


def replay(
    golden: str | os.PathLike,
    candidate: Candidate,
    out: str | os.PathLike,
    *,
    producer: str = "a refdns.testing candidate",
) -> Path:
    """Feed ``candidate`` the golden step by step and write what it returns as a candidate trace at ``out``
    (atomically). Returns ``out``. Exceptions raised by the candidate propagate, with the step added."""
    start = read_start(golden)
    layers = list(start.layers)
    step_fn = candidate(start)
    out = Path(out)
    with _open_trace(golden, "golden") as g, atomic_path(out) as tmp, h5py.File(tmp, "w") as c:
        c.attrs.update(
            {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "net": start.net,
                "method": start.method,
                "steps": start.steps,
                "seed": g.attrs["seed"],
                "producer": f"{producer} (refdns.testing {__version__})",
            }
        )
        c.attrs["layers"] = np.array(layers, dtype=h5py.string_dtype())
        c.attrs["activations"] = np.array(list(start.activations), dtype=h5py.string_dtype())
        for grp in ("params", "masks", "velocity"):
            g.copy(g[f"init/{grp}"], c.require_group("init"), name=grp)
        prev = {k: m.copy() for k, m in start.masks.items()}
        for t in range(start.steps):
            inp = _step_input(g, t, start.method, layers)
            try:
                res = dict(step_fn(inp))
            except Exception as e:
                if hasattr(e, "add_note"):  # Python >= 3.11
                    e.add_note(f"(raised by the candidate at step {t} of {golden})")
                raise
            base = f"steps/{t:04d}"
            s = c.create_group(base)
            s.attrs["iteration"] = inp.iteration
            s["inputs"], s["labels"] = inp.inputs, inp.labels
            s["lr"] = np.float64(res.pop("lr", inp.lr))
            if inp.hessian is not None:
                s["hessian/inputs"], s["hessian/labels"] = inp.hessian
            masks = res.pop("masks", None)
            if masks is not None:
                masks = {k: np.asarray(v).astype(bool) for k, v in masks.items()}
                _params_group(s, "masks", masks, g, f"{base}/masks")
            surgery = res.pop("surgery", None)
            if surgery is None and masks is not None and "surgery" in g[base]:
                surgery = _derived_surgery(layers, prev, masks, inp.fired)
            for k, v in (surgery or {}).items():
                _write(s, f"surgery/{k}", v, g, f"{base}/surgery/{k}")
            acts = res.pop("activations", None)
            if acts is not None:
                items = acts.items() if isinstance(acts, dict) else zip(start.activations, acts, strict=True)
                for name, v in items:
                    _write(s, f"activations/{name}", v, g, f"{base}/activations/{name}")
            if "loss" in res:
                _write(s, "loss", np.float32(float(res.pop("loss"))), g, f"{base}/loss")
            for grp in ("grads", "params"):
                if grp in res:
                    _params_group(s, grp, res.pop(grp), g, f"{base}/{grp}")
            for k, v in (res.pop("thresholds", None) or {}).items():
                _write(s, f"thresholds/{k}", np.asarray(v, dtype=np.float64), g, f"{base}/thresholds/{k}")
            for k, v in res.items():
                if "/" not in k:
                    raise TraceError(
                        f"candidate returned {k!r} at step {t}: not a known key (masks, "
                        "activations, loss, grads, params, thresholds, surgery, lr) nor a path"
                    )
                _write(s, k, v, g, f"{base}/{k}")
            if masks is not None:
                prev = masks
    return out


def _derived_surgery(layers, prev, masks, fired) -> dict[str, np.ndarray]:
    """surgery/pruned and spliced per layer from two consecutive masks (weights + biases); ``fired`` is the
    draw when given, else whether the layer's masks changed (as refdns's non-random methods record it)."""
    pruned, spliced = [], []
    for n in layers:
        keys = [k for k in masks if k.split(".")[0] == n]
        pruned.append(sum(int(np.count_nonzero(prev[k] & ~masks[k])) for k in keys))
        spliced.append(sum(int(np.count_nonzero(~prev[k] & masks[k])) for k in keys))
    out = {"pruned": np.array(pruned, dtype=np.int64), "spliced": np.array(spliced, dtype=np.int64)}
    changed = np.array([p + s > 0 for p, s in zip(pruned, spliced, strict=True)])
    out["fired"] = (changed if fired is None else np.asarray(fired, dtype=bool)).astype(np.uint8)
    return out


def check_candidate(
    golden: str | os.PathLike,
    candidate: Candidate,
    out: str | os.PathLike | None = None,
    *,
    tolerances: dict[str, Tolerance] | None = None,
    only: Sequence[str] | None = None,
    producer: str = "a refdns.testing candidate",
) -> VerifyReport:
    """:func:`replay` then :func:`refdns.golden.verify`; the candidate trace goes to ``out`` (a temporary
    file, removed afterwards, when None)."""
    if out is not None:
        replay(golden, candidate, out, producer=producer)
        return verify(golden, out, tolerances, only=only)
    with tempfile.TemporaryDirectory(prefix="refdns-replay-") as d:
        path = Path(d) / "candidate.h5"
        replay(golden, candidate, path, producer=producer)
        return verify(golden, path, tolerances, only=only)


def assert_matches_golden(
    golden: str | os.PathLike,
    candidate: Candidate,
    *,
    tmp_path=None,
    tolerances: dict[str, Tolerance] | None = None,
    only: Sequence[str] | None = None,
) -> VerifyReport:
    """One assertion for a test: the candidate replays ``golden`` within the tolerances.

    Raises AssertionError whose first line names the first diverging step and tensor (and the element and
    values there), followed by verify's per-tensor table. ``tmp_path`` (pytest's fixture) keeps the candidate
    trace for inspection. Returns the report when it passes.
    """
    out = None if tmp_path is None else Path(tmp_path) / f"candidate-{Path(golden).stem}.h5"
    report = check_candidate(golden, candidate, out, tolerances=tolerances, only=only)
    if not report.ok:
        step, name = report.divergence
        row = next(r for r in report.tensors if r.name == name)
        where = "the initial state" if step == -1 else f"step {step}"
        index = "" if row.first_bad_index is None else f" at index {row.first_bad_index}"
        raise AssertionError(
            f"candidate diverges from {golden} first at {where}, tensor {name}{index}: "
            f"{row.note}\n{format_report(report)}"
        )
    return report
