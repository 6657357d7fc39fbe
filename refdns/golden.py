"""Golden step traces for other implementations, and the comparison behind ``refdns verify``.

A trace is an HDF5 file (format ``refdns-trace``, schema in ``data/SCHEMA.md``) holding a short run from a
fixed start on a fixed batch sequence: the initial parameters and masks, then for each step the inputs,
labels, the masks used by the forward pass, every op's output, the loss, dL/dW_eff, the weights after the
update, and whatever the pruning method's :meth:`~refdns.prune.base.PruningMethod.trace_state` adds
(DNS: its thresholds and whether each layer's Bernoulli draw fired). Another implementation (PyTorch, JAX,
C++) replays the steps from the stored inputs and draws, writes the same tensors into a candidate file, and
``verify`` compares the two tensor by tensor with named tolerances, naming the first step where they part.

The trace is written from :func:`refdns.train.train_step` itself (its ``trace`` hook), so it records what
the training loop does, not a re-implementation of it.

Per-step tensors larger than ``max_elements`` are stored as a strided sample ``full.reshape(-1)[::stride]``
(attributes ``full_shape``, ``sample_stride``), which keeps the committed goldens under 1 MB; the inputs,
labels, masks and the initial state are always stored whole, since a replay needs them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from refdns import __version__
from refdns.atomic import atomic_path
from refdns.checkpoint import HDF5_SIGNATURE, SEAL_MAGIC, USERBLOCK, _check_seal, seal
from refdns.config import to_dict
from refdns.errors import CheckpointError, TraceError
from refdns.nets import get_spec
from refdns.nets.sequential import NetSpec
from refdns.optim import SGDConfig
from refdns.perf import limit_threads
from refdns.pipeline import Data, Experiment, experiment_config, load_dense_from, selection_data
from refdns.prune.base import PruningMethod
from refdns.prune.dns import DNS, DNSConfig, DNSLayerConfig
from refdns.prune.han import Han, HanConfig
from refdns.prune.magnitude import Magnitude, MagnitudeConfig
from refdns.prune.obd import OBD, OBDConfig
from refdns.prune.obs import OBS, OBSConfig
from refdns.prune.random import RandomConfig, RandomPruning
from refdns.run import TrainConfig, new_run
from refdns.runfile import to_dict as run_file_dict
from refdns.train import train, train_step

FORMAT = "refdns-trace"
SCHEMA_VERSION = 1
INIT_GRID = 2.0**-10  # initial weights are rounded to this grid: exact in float32, and they compress ~4x
DEFAULT_MAX_ELEMENTS = 1024
DEFAULT_BATCH_SIZE = 8
DEFAULT_SEED = 0

# The DNS golden: gamma 0.25 makes sigma(t) = 1 / (1 + t / 4), so the draws both fire and skip within a few
# steps; c_rate -0.5 puts the band low in the |w| distribution (t ~ 0.36 * max|w|), where many weights sit
# near it, and base_lr 0.1 moves them across it: pruning and splicing both happen within 5 steps.
GOLDEN_DNS_LAYER = DNSLayerConfig(c_rate=-1.5, gamma=0.25, power=1.0, iter_stop=1_000_000)
GOLDEN_SGD = SGDConfig(base_lr=0.05)
# Distiller's reading: no clamp and std over all |W|, so c_rate -0.5 gives t ~ 0.36 max|w| on the xavier
# start; deterministic updates every 2 steps show both an update and a skipped step.
GOLDEN_DISTILLER_LAYER = DNSLayerConfig(c_rate=-0.5, gamma=0.0, power=1.0, iter_stop=1_000_000)
# Han: three rounds two steps apart, so a 6-step golden crosses two round boundaries where the masks shrink.
GOLDEN_HAN = {"quality": 1.2, "rounds": 3, "round_iterations": 2}
GOLDEN_DENSITY = 0.5  # magnitude (per layer) and random
GOLDEN_GLOBAL_DENSITY = 0.3  # magnitude, one threshold for the net
GOLDEN_HESSIAN_SAMPLES = 16  # OBD's curvature batch: the first training images, stored in the trace
GOLDEN_OBD = {"kept_fraction": 0.5, "at_iteration": 1}  # one dense step first, then the one-shot prune
# OBS: the layer-wise (OBC) surgeon, the only one that fits these nets, on one image: every layer's
# H = 2 X^T X then has rank <= the layer's input rows (1 for dense layers), and the surgeon's paths run on
# that factor (LeNet-5's ip1, 500 rows of 800 inputs: seconds, not the minutes of 800 x 800 downdates).
GOLDEN_OBS = {"kept_fraction": 0.5, "at_iteration": 1, "hessian": "layerwise", "damping": 0.01}
GOLDEN_OBS_SAMPLES = 1

RUN_STEPS = 20  # write_run_golden's default cap on the steps traced of a run file's experiment

GOLDEN_METHODS = (
    "dense", "dns", "dns-distiller", "han", "magnitude", "magnitude-global", "random", "obd", "obs",
)
# Per-step tensors every replay needs whole (never sampled): its inputs, and what it takes from the golden.
WHOLE = ("hessian/", "surgery/")

STEP_ORDER = (
    "inputs",
    "labels",
    "lr",
    "masks",
    "thresholds",
    "surgery",
    "activations",
    "loss",
    "grads",
    "params",
)


@dataclass(frozen=True)
class Tolerance:
    """``|c - g| <= atol * max(1, max|g|) + rtol * |g|`` element-wise (g golden, c candidate)."""

    rtol: float
    atol: float

    def __post_init__(self):
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}={v!r} must be a finite number >= 0")

    def widened(self, rtol: float | None = None, atol: float | None = None) -> Tolerance:
        """This tolerance with ``rtol`` and/or ``atol`` replaced (None keeps the current value)."""
        return Tolerance(self.rtol if rtol is None else rtol, self.atol if atol is None else atol)


# Different summation orders (BLAS, im2col vs direct conv) differ by rounding that grows over the steps;
# float32 allows ~1000 ulp of the tensor's scale, float64 (thresholds, lr) ~1e5 ulp. Integers are exact.
TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(rtol=1e-4, atol=1e-5),
    "float64": Tolerance(rtol=1e-9, atol=1e-12),
}


def golden_method(
    net: str, method: str, x_train: np.ndarray | None = None, y_train: np.ndarray | None = None
) -> PruningMethod:
    """The pruning method a golden of ``method`` (one of :data:`GOLDEN_METHODS`) runs, with golden settings.

    ``x_train``, ``y_train`` are needed by OBD only: its Hessian batch is their first
    :data:`GOLDEN_HESSIAN_SAMPLES` images.
    """
    spec = get_spec(net)
    layers = list(spec.layer_names)
    if method == "dense":
        return PruningMethod()
    if method == "dns":
        return DNS(DNSConfig(layers={n: GOLDEN_DNS_LAYER for n in layers}))
    if method == "dns-distiller":
        return DNS(DNSConfig(layers={n: GOLDEN_DISTILLER_LAYER for n in layers}, reading="distiller",
                             update_every=2))
    if method == "han":
        return Han(HanConfig(quality={n: GOLDEN_HAN["quality"] for n in layers}, rounds=GOLDEN_HAN["rounds"],
                             round_iterations=GOLDEN_HAN["round_iterations"]))
    if method == "magnitude":
        return Magnitude(MagnitudeConfig(densities={n: GOLDEN_DENSITY for n in layers}, retrain_iterations=0))
    if method == "magnitude-global":
        return Magnitude(MagnitudeConfig(scope="global", density=GOLDEN_GLOBAL_DENSITY, retrain_iterations=0))
    if method == "random":
        densities = {n: GOLDEN_DENSITY for n in layers}
        return RandomPruning(RandomConfig(densities=densities, retrain_iterations=0))
    if method in ("obd", "obs"):  # one-shot on a Hessian batch: the first n training images
        cls, config, n = ((OBD, OBDConfig(**GOLDEN_OBD), GOLDEN_HESSIAN_SAMPLES) if method == "obd"
                          else (OBS, OBSConfig(**GOLDEN_OBS), GOLDEN_OBS_SAMPLES))
        if x_train is None or y_train is None:
            raise TraceError(f"method={method!r} needs x_train and y_train (its Hessian batch)")
        return cls(config, np.asarray(x_train[:n], dtype=np.float32), np.asarray(y_train[:n], dtype=np.int64))
    raise TraceError(f"method={method!r}: goldens exist for {', '.join(GOLDEN_METHODS)}")


def step_context(params: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the golden writer adds to the method state it hands :meth:`PruningMethod.trace_state`: the step's
    starting weights and masks, as ``before.params.<key>`` and ``before.masks.<key>`` (copies), so that a
    one-shot method can trace its saliencies and the weights it chose from (OBD) without keeping them itself.
    Never part of the run's state or its checkpoints."""
    ctx = {f"before.params.{k}": np.array(v, copy=True) for k, v in params.items()}
    return ctx | {f"before.masks.{k}": np.array(m, copy=True) for k, m in masks.items()}


def _activation_names(spec: NetSpec) -> list[str]:
    return [f"{i:02d}_{op.kind}" + (f"_{op.name}" if op.name else "") for i, op in enumerate(spec.ops)]


def _put(group: h5py.Group, name: str, arr: np.ndarray, *, max_elements: int | None = None,
         tolerance: str | None = None) -> None:
    """Write one tensor (gzip + shuffle when large); a strided sample when it has more than max_elements.

    ``tolerance`` names the tolerance ``verify`` compares it with when that is not its dtype's (a float64
    tensor computed from float32 weights is only as exact as its inputs: ``"float32"``).
    """
    arr = np.asarray(arr)
    attrs = {} if tolerance is None else {"tolerance": tolerance}
    if max_elements is not None and arr.size > max_elements:
        stride = math.ceil(arr.size / max_elements)
        attrs |= {"full_shape": np.asarray(arr.shape, dtype=np.int64), "sample_stride": stride}
        arr = np.ascontiguousarray(arr.reshape(-1)[::stride])
    # one chunk per tensor: per-chunk index entries would cost more than the data of the small ones. zlib's
    # level 9 takes seconds on a random-looking 0/1 mask for 5% less than level 6: masks get 6.
    level = 9 if arr.dtype.kind == "f" else 6
    kw = {}
    if arr.size > 64:
        kw = dict(compression="gzip", compression_opts=level, shuffle=True, chunks=arr.shape)
    ds = group.create_dataset(name, data=arr, **kw)
    for k, v in attrs.items():
        ds.attrs[k] = v


def _put_params(group: h5py.Group, tensors: dict[str, np.ndarray], dtype, max_elements=None) -> None:
    for key, arr in tensors.items():
        layer, kind = key.split(".")
        _put(group.require_group(layer), kind, np.asarray(arr, dtype=dtype), max_elements=max_elements)


def _put_masks(group: h5py.Group, masks: dict[str, np.ndarray], previous: dict[str, tuple[np.ndarray, Any]]):
    """Write a step's masks; one equal to the previous step's becomes an HDF5 hard link to that dataset, so
    a mask held for many steps costs its bytes once (readers see an ordinary dataset under each name)."""
    for key, m in masks.items():
        layer, kind = key.split(".")
        sub = group.require_group(layer)
        prev = previous.get(key)
        if prev is not None and np.array_equal(prev[0], m):
            sub[kind] = prev[1]
        else:
            _put(sub, kind, np.asarray(m, dtype=np.uint8))
            previous[key] = (np.array(m, copy=True), sub[kind])


def write_golden(
    path: str | os.PathLike,
    spec: NetSpec,
    method_name: str,
    steps: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    seed: int = DEFAULT_SEED,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    dataset: str = "mnist",
) -> dict[str, Any]:
    """Run ``steps`` training steps from a fixed start and write the trace to ``path`` atomically.

    Parameters
    ----------
    spec : NetSpec
    method_name : one of :data:`GOLDEN_METHODS`
    steps : int, >= 1
    x_train : ndarray, shape (N, 1, 28, 28), float32
    y_train : ndarray, shape (N,), int64
    seed : int
        Fixes the initial weights (Caffe xavier, rounded to :data:`INIT_GRID`), the batch order and the
        DNS draws, through :func:`refdns.run.new_run`.

    Returns
    -------
    summary : dict
        Per-step loss, and for a method that traces its surgery (DNS) the fired flags and pruned/spliced
        counts per layer.
    """
    if steps < 1:
        raise TraceError(f"steps={steps} must be >= 1")
    method = golden_method(spec.name, method_name, x_train, y_train)
    cfg = TrainConfig(iterations=steps, batch_size=batch_size, test_interval=0, sgd=GOLDEN_SGD)
    golden = {
        "steps": steps,
        "batch_size": batch_size,
        "init_grid": INIT_GRID,
        "max_elements": max_elements,
        "start": "Caffe xavier from new_run(seed), rounded to init_grid; zero velocity",
        "batches": f"{dataset} train set, BatchStream order of new_run(seed)",
    }
    return write_trace(path, spec, method, method_name, cfg, steps, x_train, y_train, seed=seed,
                       round_init=True, max_elements=max_elements, dataset=dataset, golden=golden)


def write_trace(
    path: str | os.PathLike,
    spec: NetSpec,
    method: PruningMethod,
    method_name: str,
    cfg: TrainConfig,
    steps: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    seed: int,
    params: dict[str, np.ndarray] | None = None,
    masks: dict[str, np.ndarray] | None = None,
    round_init: bool = False,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    dataset: str = "mnist",
    golden: dict[str, Any],
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trace the first ``steps`` steps of ``method`` trained by ``cfg`` from ``new_run(seed)`` (its xavier
    start, or ``params``/``masks``), and write them to ``path`` atomically: the steps
    :func:`refdns.train.train` takes for this run, step for step. ``round_init`` rounds the start to
    :data:`INIT_GRID` (the committed goldens' start); ``golden`` describes the trace (the ``config``
    attribute's ``golden`` entry), ``extra_config`` is added to that attribute."""
    if not 1 <= steps <= max(cfg.iterations, 1):
        raise TraceError(f"steps={steps} must be between 1 and the run's {cfg.iterations} iterations")
    state = new_run(spec, len(x_train), cfg, seed=seed, params=params, masks=masks)
    if round_init:
        state.params = {
            k: (np.round(w / INIT_GRID) * INIT_GRID).astype(np.float32) for k, w in state.params.items()
        }
    state.method_state = method.init_state(spec, state.params)  # as refdns.train.train does at iteration 0
    layers = list(spec.layer_names)
    config = {
        "net": spec.name,
        "dataset": dataset,
        "seed": seed,
        "train": to_dict(cfg),
        "method": method.config_dict() | {"method": method_name},
        "golden": golden,
    } | (extra_config or {})
    summary: dict[str, Any] = {"loss": [], "pruned": [], "spliced": [], "fired": []}
    path = Path(path)
    with atomic_path(path) as tmp:
        # libver v110 (HDF5 >= 1.10): compact groups and single-chunk indexes, a fraction of the metadata
        with h5py.File(tmp, "w", libver=("v110", "latest"), userblock_size=USERBLOCK) as f:
            f.attrs.update(
                {
                    "format": FORMAT,
                    "schema_version": SCHEMA_VERSION,
                    "refdns_version": __version__,
                    "net": spec.name,
                    "method": method_name,
                    "seed": seed,
                    "steps": steps,
                    "batch_size": cfg.batch_size,
                    "producer": f"refdns {__version__}",
                    "config": json.dumps(config, sort_keys=True),
                }
            )
            f.attrs["layers"] = np.array(layers, dtype=h5py.string_dtype())
            f.attrs["activations"] = np.array(_activation_names(spec), dtype=h5py.string_dtype())
            init = f.create_group("init")
            _put_params(init.create_group("params"), state.params, np.float32)
            _put_params(init.create_group("masks"), state.masks, np.uint8)
            last_masks = {k: (np.array(m, copy=True), init[f"masks/{k.replace('.', '/')}"])
                          for k, m in state.masks.items()}
            _put_params(init.create_group("velocity"), state.velocity, np.float32)
            for t in range(steps):
                idx = state.data.next_indices()
                x, y = x_train[idx], y_train[idx]
                rec: dict[str, Any] = {}
                before = step_context(state.params, state.masks)
                loss, lr = train_step(state, x, y, cfg, method, trace=rec)
                g = f.create_group(f"steps/{t:04d}")
                g.attrs["iteration"] = t
                _put(g, "inputs", np.asarray(x, dtype=np.float32))
                _put(g, "labels", np.asarray(y, dtype=np.int64))
                _put(g, "lr", np.float64(lr))
                _put_masks(g.create_group("masks"), rec["masks"], last_masks)
                act = g.create_group("activations")
                for name, out in zip(_activation_names(spec), rec["activations"], strict=True):
                    _put(act, name, out, max_elements=max_elements)
                _put(g, "loss", np.float32(rec["loss"]))
                _put_params(g.create_group("grads"), rec["grads"], np.float32, max_elements)
                _put_params(g.create_group("params"), state.params, np.float32, max_elements)
                summary["loss"].append(loss)
                traced = method.trace_state(spec, state.method_state | before, rec["records"])
                for name, arr in traced.items():
                    # float64 statistics of float32 weights that training has moved (OBD's diagonal after a
                    # step) carry the weights' float32 rounding: compare them at float32's tolerance.
                    derived = np.asarray(arr).dtype == np.float64 and t > 0
                    _put(g, name, arr, max_elements=None if name.startswith(WHOLE) else max_elements,
                         tolerance="float32" if derived else None)
                for k in ("fired", "pruned", "spliced"):
                    if f"surgery/{k}" in traced:
                        summary[k].append(traced[f"surgery/{k}"].tolist())
            f.flush()
        seal(tmp)  # the checkpoints' seal: verify refuses a damaged trace before libhdf5 parses it
    return summary


def write_run_golden(
    path: str | os.PathLike,
    exp: Experiment,
    data: Data,
    *,
    steps: int | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    source: str | None = None,
) -> dict[str, Any]:
    """Trace an experiment with its own settings (``refdns golden --run EXPERIMENT.toml``).

    The traced steps are the first ``steps`` (default: all, at most :data:`RUN_STEPS`: every step stores its
    whole batch, so a full run would take gigabytes) of the phase that carries the experiment's
    method: its pruning phase, started as :func:`refdns.pipeline.reproduce` starts it (from the dense
    checkpoint ``exp.dense_from``, or from the dense phase ``exp.dense`` run here untraced), with the
    method's config, the pruning solver ``exp.train`` (batch size, lr policy, momentum, weight decay, data
    order), ``exp.seed``, dataset, protocol (with ``select_on="validation"`` the held-out images are left out
    of the batches) and thread count; a run without a method traces its dense phase from the xavier start.
    The weights are not rounded to :data:`INIT_GRID`: step ``k`` of the trace is iteration ``k`` of
    ``refdns run`` on the same run file. The resolved run file is stored in the ``config`` attribute
    (``run``), ``source`` names where it came from.

    Returns the per-step summary of :func:`write_trace`.
    """
    spec = exp.spec
    cfg = exp.dense if exp.method is None else exp.train
    phase = "dense" if exp.method is None else "train"
    steps = min(cfg.iterations, RUN_STEPS) if steps is None else steps
    if cfg.iterations < 1:
        raise TraceError(f"{phase}.iterations = 0: the run's {exp.method_name} phase takes no step to trace")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= cfg.iterations:
        raise TraceError(f"steps={steps!r} must be between 1 and the run's {cfg.iterations} "
                         f"{exp.method_name} iterations ({phase}.iterations)")
    sel = selection_data(data, exp.select_on)
    with limit_threads(exp.threads):
        params = masks = None
        if exp.method is None:
            start = "Caffe xavier from new_run(seed), the run's dense phase; zero velocity"
        elif exp.dense_from is not None:
            dense = load_dense_from(exp)
            params, masks = dense.params, dense.masks
            start = f"the dense checkpoint {exp.dense_from} (dense.from); zero velocity"
        else:  # the run's dense phase, as refdns.pipeline.reproduce runs it (its tests change nothing)
            dense = new_run(spec, len(sel.x_train), exp.dense, seed=exp.seed)
            train(dense, sel.x_train, sel.y_train, exp.dense)
            params, masks = dense.params, dense.masks
            start = (f"the run's dense phase ({exp.dense.iterations} iterations from seed {exp.seed}, "
                     "not traced); zero velocity")
        held_out = " less the validation split" if exp.select_on == "validation" else ""
        golden = {
            "steps": steps,
            "batch_size": cfg.batch_size,
            "max_elements": max_elements,
            "start": start,
            "batches": f"{exp.dataset} train set{held_out}, BatchStream order ({cfg.data_order}) of "
                       "new_run(seed)",
            "run_file": source,
        }
        extra = experiment_config(exp) | {"run": run_file_dict(exp)}
        return write_trace(path, spec, exp.method or PruningMethod(), exp.method_name, cfg, steps,
                           sel.x_train, sel.y_train, seed=exp.seed, params=params, masks=masks,
                           max_elements=max_elements, dataset=exp.dataset, golden=golden, extra_config=extra)


def seal_trace(path: str | os.PathLike) -> None:
    """(Re)write a trace's seal, the SHA-256 of its HDF5 bytes in the 512-byte user block (as
    :func:`refdns.checkpoint.seal` does for checkpoints). :func:`write_golden` seals what it writes; call this
    after deliberately editing a sealed trace with an HDF5 tool, or ``verify`` refuses it as damaged. A trace
    written without a user block (another implementation's candidate) cannot be sealed and needs not be."""
    try:
        seal(path)
    except CheckpointError as e:
        raise TraceError(str(e).replace("schema-2 checkpoint", "trace written with a user block")) from None


# ----------------------------------------------------------------------------------------------- verify


@dataclass
class TensorResult:
    """One tensor (e.g. ``grads/ip1/weight``) compared over every step that holds it."""

    name: str
    dtype: str
    tolerance: str
    steps: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    first_bad_step: int | None = None  # -1 means the initial state
    first_bad_index: tuple[int, ...] | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.first_bad_step is None


@dataclass
class VerifyReport:
    golden: str
    candidate: str
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(TOLERANCES))
    tensors: list[TensorResult] = field(default_factory=list)
    divergence: tuple[int, str] | None = None  # (step, tensor) of the first mismatch in run order
    only: list[str] | None = None  # the groups compared, None for all

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (``refdns verify --json``): non-finite errors stay floats here."""
        return {
            "ok": self.ok,
            "golden": self.golden,
            "candidate": self.candidate,
            "only": self.only,
            "tolerances": {k: {"rtol": v.rtol, "atol": v.atol} for k, v in self.tolerances.items()},
            "divergence": None if self.ok else {"step": self.divergence[0], "tensor": self.divergence[1]},
            "tensors": [
                {f.name: getattr(r, f.name) for f in fields(TensorResult)} | {"ok": r.ok}
                for r in self.tensors
            ],
        }

    @property
    def ok(self) -> bool:
        return self.divergence is None


def _open_trace(path: str | os.PathLike, role: str) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise TraceError(f"{role} trace {path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(len(SEAL_MAGIC))
    if not (head.startswith(HDF5_SIGNATURE) or head.startswith(SEAL_MAGIC)):
        raise TraceError(f"{role} trace {path}: not an HDF5 trace (neither a seal nor an HDF5 signature "
                         "at the start; truncated, damaged or another kind of file)")
    try:
        # Before HDF5 sees a byte: libhdf5 can hang on damaged metadata. Unsealed traces (older goldens,
        # other implementations' candidates) are read as they are.
        _check_seal(path)
    except CheckpointError as e:
        raise TraceError(f"{role} trace {e} (refused before HDF5 reads it; after a deliberate edit call "
                         "refdns.golden.seal_trace)") from None
    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise TraceError(f"{role} trace {path}: not a readable HDF5 file: {e}") from None
    fmt = f.attrs.get("format")
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    if fmt != FORMAT:
        f.close()
        raise TraceError(f"{role} trace {path}: format {fmt!r} is not {FORMAT!r}")
    schema = int(f.attrs.get("schema_version", -1))
    if not 1 <= schema <= SCHEMA_VERSION:
        f.close()
        raise TraceError(
            f"{role} trace {path}: schema_version {schema} is not one this refdns reads (1..{SCHEMA_VERSION})"
        )
    return f


def _order_key(tensor: str) -> tuple[int, str]:
    head = tensor.split("/")[0]
    return (STEP_ORDER.index(head) if head in STEP_ORDER else len(STEP_ORDER), tensor)


def _datasets(f: h5py.File) -> list[tuple[int, str, str]]:
    """(step, tensor name, HDF5 path) of every dataset, in run order (init first as step -1)."""
    out = []

    def walk(group: h5py.Group, prefix: str) -> None:
        # by link, not visititems: that visits a hard-linked dataset once, under one of its names only
        for key in group:
            name = f"{prefix}{key}"
            obj = group.get(key, getlink=False)
            if isinstance(obj, h5py.Group):
                walk(obj, name + "/")
                continue
            parts = name.split("/")
            if parts[0] == "init":
                out.append((-1, name, name))
            elif parts[0] == "steps" and len(parts) > 2:
                out.append((int(parts[1]), "/".join(parts[2:]), name))

    walk(f, "")
    return sorted(out, key=lambda t: (t[0], _order_key(t[1])))


def _as_golden_layout(g_ds: h5py.Dataset, c_ds: h5py.Dataset) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Golden values, candidate values in the golden's (possibly sampled) layout, and the full shape."""
    g = g_ds[()]
    c = c_ds[()]
    stride = int(g_ds.attrs.get("sample_stride", 1))
    full = tuple(int(s) for s in g_ds.attrs["full_shape"]) if "sample_stride" in g_ds.attrs else g.shape
    c_stride = int(c_ds.attrs.get("sample_stride", 1))
    if c_stride == stride and c.shape == g.shape:
        return g, c, full
    if c_stride == 1 and c.shape == full:
        return g, np.ascontiguousarray(c.reshape(-1)[::stride]), full
    raise TraceError(f"shape {c.shape} (stride {c_stride}) does not match the golden's {full}")


def compare_arrays(g: np.ndarray, c: np.ndarray, tol: Tolerance | None) -> tuple[float, float, int | None]:
    """(max abs error, max rel error, first bad flat index or None); ``tol=None`` means exact."""
    g64 = g.astype(np.float64).reshape(-1)
    c64 = c.astype(np.float64).reshape(-1)
    with np.errstate(invalid="ignore"):
        diff = np.abs(c64 - g64)
    diff[(np.isnan(c64) & np.isnan(g64)) | (c64 == g64)] = 0.0  # equal infinities (OBS's dead inputs) agree
    diff[np.isnan(diff)] = np.inf  # NaN on one side only, or inf - inf
    finite = np.isfinite(g64)
    if tol is None:
        bound = np.zeros_like(g64)
        floor = 1.0
    else:
        # the scale of the finite values; a non-finite golden value must be matched exactly
        scale = max(1.0, float(np.max(np.abs(g64[finite])))) if finite.any() else 1.0
        bound = np.where(finite, tol.atol * scale + tol.rtol * np.abs(np.where(finite, g64, 0.0)), 0.0)
        floor = tol.atol
    bad = np.flatnonzero(~(diff <= bound))
    max_abs = float(diff.max()) if diff.size else 0.0
    with np.errstate(invalid="ignore"):
        rel = diff / np.maximum(np.abs(g64), floor)
    rel[diff == 0] = 0.0
    rel[np.isinf(diff)] = np.inf
    max_rel = float(np.nanmax(rel)) if diff.size else 0.0
    return max_abs, max_rel, (int(bad[0]) if bad.size else None)


def _compare_one(row: TensorResult, step: int, g_ds: h5py.Dataset, c_ds, tol: Tolerance | None) -> None:
    if not isinstance(c_ds, h5py.Dataset):
        if row.ok:
            row.first_bad_step, row.note = step, "missing in candidate"
        return
    try:
        g, c, full = _as_golden_layout(g_ds, c_ds)
    except TraceError as e:
        if row.ok:
            row.first_bad_step, row.note = step, str(e)
        return
    max_abs, max_rel, bad = compare_arrays(g, c, tol)
    row.max_abs = max(row.max_abs, max_abs)
    row.max_rel = max(row.max_rel, max_rel)
    if bad is not None and row.ok:
        stride = int(g_ds.attrs.get("sample_stride", 1))
        row.first_bad_step = step
        row.first_bad_index = tuple(int(i) for i in np.unravel_index(bad * stride, full)) if full else ()
        row.note = f"golden {g.reshape(-1)[bad]:.9g}, candidate {c.reshape(-1)[bad]:.9g}"


def tensor_groups(names) -> list[str]:
    """The groups ``--only`` accepts for these tensor names: each name's first path component (``grads``,
    ``masks``, ``init``, ...) and its first two (``grads/ip1``, ``init/params``, ``thresholds/a``)."""
    out = set()
    for n in names:
        parts = n.split("/")
        out.add(parts[0])
        if len(parts) > 1:
            out.add("/".join(parts[:2]))
    return sorted(out)


def _selected(name: str, only) -> bool:
    return only is None or any(name == g or name.startswith(g + "/") for g in only)


def verify(
    golden: str | os.PathLike,
    candidate: str | os.PathLike,
    tolerances: dict[str, Tolerance] | None = None,
    *,
    only: list[str] | tuple[str, ...] | None = None,
) -> VerifyReport:
    """Compare every tensor of ``golden`` with the same tensor of ``candidate``.

    Floating tensors use ``tolerances[dtype]`` (default :data:`TOLERANCES`), chosen by the golden's dtype;
    integer tensors (masks, labels, fired flags, counts) must match exactly. A tensor missing from the
    candidate, or of another shape, is a mismatch at its step.

    ``only``, when given, restricts the comparison to the tensors in these groups: a group is a tensor name
    or a prefix of it ending at a ``/`` (``masks``, ``grads/ip1``, ``init``, ``thresholds/a``); a group that
    names no tensor of the golden is refused (TraceError listing the groups there are), since a misspelt
    group would otherwise pass by comparing nothing.
    """
    tolerances = TOLERANCES if tolerances is None else tolerances
    report = VerifyReport(str(golden), str(candidate), dict(tolerances))
    rows: dict[str, TensorResult] = {}
    with _open_trace(golden, "golden") as gf, _open_trace(candidate, "candidate") as cf:
        for key in ("net", "method"):
            gv, cv = gf.attrs.get(key), cf.attrs.get(key)
            if gv != cv:
                raise TraceError(
                    f"the traces are of different runs: golden {key}={gv!r}, candidate {key}={cv!r}"
                )
        entries = _datasets(gf)
        if only is not None:
            names = {tensor if step >= 0 else hpath for step, tensor, hpath in entries}
            unknown = [g for g in only if not any(_selected(n, [g]) for n in names)]
            if unknown or not only:
                raise TraceError(
                    f"--only {unknown or only}: no such tensor group in {golden}; groups: "
                    + ", ".join(tensor_groups(names))
                )
            report.only = list(only)
        for step, tensor, hpath in entries:
            name = tensor if step >= 0 else hpath
            if not _selected(name, only):
                continue
            g_ds = gf[hpath]
            kind = str(g_ds.attrs.get("tolerance", g_ds.dtype.name))  # the writer may name a looser one
            tol = tolerances.get(kind) if g_ds.dtype.kind == "f" else None
            if g_ds.dtype.kind == "f" and tol is None:
                raise TraceError(f"no tolerance named for dtype {kind} (tensor {name})")
            row = rows.setdefault(
                name,
                TensorResult(
                    name, kind, "exact" if tol is None else f"{kind}: rtol {tol.rtol:g}, atol {tol.atol:g}"
                ),
            )
            row.steps += 1
            _compare_one(row, step, g_ds, cf[hpath] if hpath in cf else None, tol)
            if not row.ok and report.divergence is None:  # datasets come in run order: the first is earliest
                report.divergence = (row.first_bad_step, name)
    report.tensors = list(rows.values())
    return report


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.2e}"


def format_report(report: VerifyReport) -> str:
    """The per-tensor table (markdown) and a closing verdict line."""
    lines = [
        f"golden    {report.golden}",
        f"candidate {report.candidate}",
        "",
        "| tensor | dtype | steps | max abs err | max rel err | first bad step | first bad index | result |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in report.tensors:
        step = "" if r.ok else ("init" if r.first_bad_step == -1 else str(r.first_bad_step))
        index = "" if r.first_bad_index is None else str(r.first_bad_index)
        result = "ok" if r.ok else f"MISMATCH ({r.note})" if r.note else "MISMATCH"
        lines.append(
            f"| {r.name} | {r.dtype} | {r.steps} | {_fmt(r.max_abs)} | {_fmt(r.max_rel)} | {step} "
            f"| {index} | {result} |"
        )
    lines.append("")
    tol = ", ".join(
        f"{k}: rtol {v.rtol:g} atol {v.atol:g} (x max(1, max|golden|))" for k, v in report.tolerances.items()
    )
    lines.append(f"tolerances: {tol}; integer tensors exact")
    if report.only is not None:
        lines.append(f"compared only: {', '.join(report.only)}")
    if report.ok:
        lines.append(f"PASS: all {len(report.tensors)} tensors agree")
    else:
        step, name = report.divergence
        where = "in the initial state" if step == -1 else f"at step {step}"
        n_bad = sum(not r.ok for r in report.tensors)
        lines.append(
            f"FAIL: {n_bad} of {len(report.tensors)} tensors differ; the runs diverge first {where} ({name})"
        )
    return "\n".join(lines)
