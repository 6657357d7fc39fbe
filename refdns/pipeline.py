"""Whole experiments: dense pre-training, then a pruning method, then the paper-form summary.

An :class:`Experiment` says what to run (net, dataset, seed, the dense phase or a dense checkpoint to start
from, a pruning method with its config, the pruning phase's solver); :func:`reproduce` runs it and returns a
:class:`Result`. The command line (:mod:`refdns.cli`) only turns argv into an Experiment and prints; the
scripts in validate/ call :func:`reproduce` directly. Nothing here prints: progress goes to the callbacks.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from refdns import checkpoint
from refdns.config import check_number, from_dict, to_dict
from refdns.datasets import DATASETS, load_mnist
from refdns.errors import ConfigError
from refdns.nets import get_spec
from refdns.nets.sequential import NetSpec
from refdns.optim import SGDConfig
from refdns.perf import limit_threads
from refdns.prune.base import PruningMethod, methods, reproducible_methods
from refdns.prune.dsd import DSDConfig, release, sparse_phase_method
from refdns.run import RunState, TrainConfig, new_run
from refdns.train import evaluate, train

# Caffe's MNIST LeNet solver: the dense phase of every experiment unless it says otherwise.
CAFFE_DENSE = TrainConfig()

# Where settings are chosen. "test": the paper's protocol (every error measured on the test set, the one the
# settings were tuned on). "validation": the last VALIDATION_SIZE training images are held out; training never
# sees them, every error during the run is measured on them, and the test set is read once, at the end.
SELECT_ON = ("test", "validation")
VALIDATION_SIZE = 10_000
PROTOCOL_LABEL = {
    "test": "selected on the test set (the paper's protocol)",
    "validation": f"selected on the validation split (last {VALIDATION_SIZE:,} training images); "
                  "test set read once, at the end",
}

# Data order alone moves DNS's result about as much as a seed (issue 16): every results table says which.
DATA_ORDER_LABEL = {
    "shuffled": "shuffled (a fresh permutation of the training set each epoch, from the seed)",
    "caffe": "caffe (the training set in file order, as Caffe reads it)",
}


def order_info(config: dict[str, Any]) -> dict[str, Any]:
    """What a results table says about a run's batches and draws, from its configuration (a checkpoint's
    ``config``, :func:`run_config` ``|`` :func:`experiment_config`, or a resolved run file dict).

    ``data_order`` of the phase that made the result (``train``; a dense-only run file's ``dense``; configs
    written before the setting existed were shuffled), ``dense_data_order`` when a dense phase run with it
    used another order, and ``draws``/``srand_seed`` when DNS's draws are not the default NumPy stream.
    """
    train = config.get("train") or config.get("dense") or {}
    out: dict[str, Any] = {"data_order": train.get("data_order", "shuffled")}
    dense = config.get("dense") or {}
    trained_here = not config.get("dense_from") and "from" not in dense  # checkpoint config / run file
    if dense and trained_here and dense.get("data_order", "shuffled") != out["data_order"]:
        out["dense_data_order"] = dense.get("data_order", "shuffled")
    method = config.get("method") or {}
    if method.get("draws", "numpy") != "numpy":
        out |= {"draws": method["draws"], "srand_seed": method.get("srand_seed", 1)}
    return out


def order_note(info: dict[str, Any]) -> str:
    """The line of :func:`order_info` a table prints: ``data order shuffled (...)`` and what differs."""
    text = f"data order {DATA_ORDER_LABEL.get(info['data_order'], info['data_order'])}"
    if "dense_data_order" in info:
        text += f"; the dense phase's: {info['dense_data_order']}"
    if "draws" in info:
        how = f"glibc rand() after srand({info['srand_seed']})" if info["draws"] == "caffe" else info["draws"]
        text += f"; DNS draws {info['draws']} ({how})"
    return text


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def selection_data(data: Data, select_on: str) -> Data:
    """The data a run trains and measures itself on: ``data`` itself for ``select_on="test"``; for
    ``"validation"``, the first ``n - VALIDATION_SIZE`` training images to train on and the last
    ``VALIDATION_SIZE`` (a fixed split, no shuffling) in the place of the test set."""
    if select_on not in SELECT_ON:
        raise ConfigError(f"select_on={select_on!r} must be one of {SELECT_ON}")
    if select_on == "test":
        return data
    n = len(data.x_train) - VALIDATION_SIZE
    if n < 1:
        raise ConfigError(f"select_on='validation' needs more than {VALIDATION_SIZE:,} training images")
    return Data(data.x_train[:n], data.y_train[:n], data.x_train[n:], data.y_train[n:])


def load_data(dataset: str = "mnist", *, data_dir: str | None = None, download: bool = True) -> Data:
    """The training and test sets of ``dataset`` (see :func:`refdns.datasets.load_mnist`)."""
    kw = dict(dataset=dataset, data_dir=data_dir, download=download)
    return Data(*load_mnist("train", **kw), *load_mnist("test", **kw))


@dataclass(frozen=True)
class Experiment:
    """One experiment, fully resolved: what :func:`reproduce` runs.

    ``method=None`` is dense training only. ``dense_from`` names a dense checkpoint to start from instead of
    running the dense phase ``dense``. ``train`` is the pruning phase's solver (length, lr, batch).
    ``select_on`` says where settings are chosen (:data:`SELECT_ON`: "test", the paper's protocol, or
    "validation", the last :data:`VALIDATION_SIZE` training images); ``threads`` is the BLAS and Numba thread
    count the run uses (its bits depend on it). Build one from a method's recipe with :func:`experiment`, or
    from a run file with :mod:`refdns.runfile`.
    """

    net: str
    method: PruningMethod | None = None
    train: TrainConfig = CAFFE_DENSE
    dense: TrainConfig = CAFFE_DENSE
    dense_from: str | None = None
    dataset: str = "mnist"
    seed: int = 0
    select_on: str = "test"
    threads: int = 1

    def __post_init__(self):
        get_spec(self.net)
        if self.select_on not in SELECT_ON:
            raise ConfigError(f"select_on={self.select_on!r} must be one of {SELECT_ON}")
        check_number("threads", self.threads, lo=1, integer=True)
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset={self.dataset!r} must be one of {sorted(DATASETS)}")
        check_number("seed", self.seed, lo=0, integer=True)
        if self.method is not None and not isinstance(self.method, PruningMethod):
            raise ConfigError(f"method must be a PruningMethod, got {type(self.method).__name__}")
        if self.dense.iterations < 1 and self.dense_from is None:
            raise ConfigError("the dense phase needs at least 1 iteration (or start from a dense checkpoint)")

    @property
    def spec(self) -> NetSpec:
        return get_spec(self.net)

    @property
    def method_name(self) -> str:
        return "dense" if self.method is None else self.method.name


def experiment(
    net: str,
    method: str | None = "dns",
    *,
    recipe: str = "refdns",
    overrides: dict[str, Any] | None = None,
    iterations: int | None = None,
    sgd: dict[str, Any] | None = None,
    batch_size: int = 64,
    test_interval: int = 1_000,
    dense_iterations: int = 10_000,
    dense_from: str | None = None,
    dataset: str = "mnist",
    seed: int = 0,
    select_on: str = "test",
    threads: int = 1,
    data_order: str = "shuffled",
) -> Experiment:
    """An :class:`Experiment` from a method's recipe for ``net`` with the given settings changed.

    ``overrides`` change fields of the method's config; ``iterations`` the pruning phase's length (default:
    the recipe's, or the method's own schedule); ``sgd`` fields of the pruning phase's solver (``base_lr``
    defaults to the recipe's); ``data_order`` both phases' batch order ("caffe": file order, as Caffe
    reads). The dense phase always follows Caffe's recipe (lr 0.01), with the same batch
    size, test interval, momentum, weight decay and lr policy.
    """
    sgd = dict(sgd or {})
    dense_sgd = {k: v for k, v in sgd.items() if k != "base_lr"}
    dense = TrainConfig(iterations=dense_iterations, batch_size=batch_size, test_interval=test_interval,
                        sgd=SGDConfig(**dense_sgd), data_order=data_order)
    if method in (None, "dense"):
        if overrides or recipe != "refdns":
            raise ConfigError("method settings and --recipe need a pruning method")
        return Experiment(net, None, dense, dense, dense_from, dataset, seed, select_on, threads)
    known = methods()
    if method not in known:
        raise ConfigError(f"method={method!r} is not one of {sorted(known)}")
    if method not in reproducible_methods():
        raise ConfigError(f"method {method!r} has no recipe (it needs Hessian data; see validate/obd_obs_study.py)")
    cls = known[method]
    rec = cls.recipe(net, recipe)
    pruner = cls(rec.config).with_overrides(**(overrides or {}))
    if iterations is None:
        scheduled = pruner.schedule_iterations()
        iterations = scheduled if scheduled is not None else rec.iterations
    if iterations is None:
        raise ConfigError(f"method {method!r} needs the pruning phase's length (iterations)")
    sgd.setdefault("base_lr", rec.base_lr)
    cfg = TrainConfig(iterations=iterations, batch_size=batch_size, test_interval=test_interval,
                      sgd=SGDConfig(**sgd), data_order=data_order)
    return Experiment(net, pruner, cfg, dense, dense_from, dataset, seed, select_on, threads)


def run_config(spec: NetSpec, dataset: str, seed: int, cfg: TrainConfig, method: PruningMethod | None) -> dict:
    """The full configuration of a run, as stored in its checkpoint and JSON."""
    out: dict[str, Any] = {"net": spec.name, "dataset": dataset, "seed": seed, "train": to_dict(cfg)}
    if method is not None:
        out["method"] = method.config_dict()
    return out


def experiment_config(exp: Experiment) -> dict[str, Any]:
    """What a checkpoint records of its experiment beyond :func:`run_config`: enough to write the run file
    that recreates it (``refdns show``)."""
    return {"select_on": exp.select_on, "threads": exp.threads, "dense": to_dict(exp.dense),
            "dense_from": exp.dense_from}


def experiment_order(exp: Experiment) -> dict[str, Any]:
    """:func:`order_info` of an experiment: the data order of its last phase, and DNS's draws."""
    cfg = exp.dense if exp.method is None else exp.train
    return order_info(run_config(exp.spec, exp.dataset, exp.seed, cfg, exp.method) | experiment_config(exp))


def prune_without_training(state: RunState, method: PruningMethod) -> None:
    """Apply a method's iteration-0 masks with no training step (one-shot pruning without retraining).

    A method that holds pruned weights at zero (``grad_through_mask`` False) gets them zeroed here, as a
    training step would have done.
    """
    state.method_state = method.init_state(state.spec, state.params)
    records = method.update_masks(0, state.params, state.masks, state.method_state, state.mask_rng)
    state.history.mask_updates.extend(records)
    if not method.grad_through_mask:
        for k, m in state.masks.items():
            state.params[k] *= m
            state.velocity[k] *= m


def run_training(
    spec: NetSpec,
    data: Data,
    cfg: TrainConfig,
    *,
    seed: int,
    method: PruningMethod | None = None,
    params: dict[str, np.ndarray] | None = None,
    masks: dict[str, np.ndarray] | None = None,
    on_step: Callable | None = None,
    on_test: Callable | None = None,
    interrupted: Callable[[RunState], None] | None = None,
) -> tuple[RunState, float]:
    """Train from ``params`` (or xavier init) and return the state and the wall time in seconds.

    ``interrupted(state)`` is called when Ctrl-C stops the run, with the state of the last whole iteration
    (see :func:`continue_training`).

    Zero iterations change nothing, except that a one-shot method (``method.one_shot``: magnitude, random,
    OBD, OBS) applies its masks: pruning without retraining.
    """
    state = new_run(spec, len(data.x_train), cfg, seed=seed, params=params, masks=masks)
    t0 = time.perf_counter()
    if method is not None and cfg.iterations == 0 and method.one_shot:
        prune_without_training(state, method)
    continue_training(state, data, cfg, method, on_step=on_step, on_test=on_test, interrupted=interrupted)
    return state, time.perf_counter() - t0


def continue_training(state: RunState, data: Data, cfg: TrainConfig, method: PruningMethod | None, *,
                      on_step=None, on_test=None, interrupted=None) -> RunState:
    """Train ``state`` on until ``cfg.iterations``.

    With ``interrupted`` given (and in the main thread), Ctrl-C does not tear an iteration in half: the
    iteration under way finishes, ``interrupted(state)`` is called (it saves a checkpoint and raises
    :class:`RunInterrupted`), and a second Ctrl-C aborts at once.
    """
    hit = []
    handler = None
    if interrupted is not None and threading.current_thread() is threading.main_thread():
        def on_sigint(signum, frame):
            hit.append(signum)
            signal.signal(signal.SIGINT, handler)  # a second Ctrl-C aborts at once
        handler = signal.signal(signal.SIGINT, on_sigint)
    try:
        train(state, data.x_train, data.y_train, cfg, method=method, x_test=data.x_test, y_test=data.y_test,
              on_step=on_step, on_test=on_test, should_stop=lambda: bool(hit))
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
    if hit and state.iteration < cfg.iterations:
        interrupted(state)
    return state


def final_test_error(state: RunState, data: Data) -> float:
    """The test error of the state as it is (the last one the run measured, if it was measured now)."""
    hist = state.history.test_error
    if hist and hist[-1][0] == state.iteration:
        return hist[-1][1]
    return evaluate(state, data.x_test, data.y_test)


@dataclass
class Phase:
    """One training phase of an experiment: ``dense`` or the pruning method's."""

    name: str
    state: RunState
    config: dict[str, Any]
    test_error: float
    seconds: float | None  # None: reused from a checkpoint, not measured here
    checkpoint: Path | None = None
    validation_error: float | None = None  # select_on="validation" only

    @property
    def iterations(self) -> int:
        return self.state.iteration


@dataclass
class Result:
    """What :func:`reproduce` returns: the phases, the paper-form summary and the wall time."""

    experiment: Experiment
    dense: Phase
    pruned: Phase | None = None
    seconds: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> Phase:
        return self.pruned or self.dense

    @property
    def iterations(self) -> int:
        """Every training iteration the result cost, dense included."""
        return self.dense.iterations + (self.pruned.iterations if self.pruned else 0)


def reproduce(
    exp: Experiment,
    data: Data,
    *,
    dense_out: str | Path | None = None,
    out: str | Path | None = None,
    dense_state: RunState | None = None,
    on_phase: Callable[[str, Experiment, TrainConfig], None] | None = None,
    on_step: Callable | None = None,
    on_test: Callable | None = None,
) -> Result:
    """Run an experiment: the dense phase (or its checkpoint, or ``dense_state``), then the pruning method.

    Checkpoints go to ``dense_out`` (the dense phase, when it runs) and ``out`` (the final net), written
    atomically at the end of each phase. ``on_phase(name, exp, cfg)`` is called as each phase starts;
    ``on_step`` and ``on_test`` as in :func:`refdns.train.train` (their errors are on the validation split
    when ``exp.select_on == "validation"``). Runs with ``exp.threads`` BLAS and Numba threads.
    """
    with limit_threads(exp.threads):
        return _reproduce(exp, data, dense_out, out, dense_state, on_phase, on_step, on_test)


def load_dense_from(exp: Experiment) -> RunState:
    """The dense state of ``exp.dense_from``, refused (ConfigError) if it holds another net, or was trained on
    the validation split that ``exp`` holds out."""
    ck = checkpoint.load(exp.dense_from)
    if ck.state.spec.name != exp.net:
        raise ConfigError(f"{exp.dense_from} holds a {ck.state.spec.name}, not a {exp.net}")
    if exp.select_on == "validation" and ck.config.get("select_on", "test") != "validation":
        raise ConfigError(f"{exp.dense_from} was trained on all training images, the validation split "
                          "included: with select_on='validation' start from a dense run that held it out")
    return ck.state


def _reproduce(exp, data, dense_out, out, dense_state, on_phase, on_step, on_test) -> Result:
    spec = exp.spec
    t0 = time.perf_counter()
    sel = selection_data(data, exp.select_on)
    extra = experiment_config(exp)
    if dense_state is None and exp.dense_from is not None:
        dense_state = load_dense_from(exp)
    if dense_state is not None:
        dense = Phase("dense", dense_state, {}, evaluate(dense_state, sel.x_test, sel.y_test), None,
                      Path(exp.dense_from) if exp.dense_from else None)
    else:
        if on_phase is not None:
            on_phase("dense", exp, exp.dense)
        config = run_config(spec, exp.dataset, exp.seed, exp.dense, None) | extra
        path = dense_out if exp.method is not None else out
        state, seconds = run_training(spec, sel, exp.dense, seed=exp.seed, on_step=on_step, on_test=on_test,
                                      interrupted=_saver(path, "dense", config))
        if path is not None:
            checkpoint.save(path, state, method="dense", config=config)
        dense = Phase("dense", state, config, final_test_error(state, sel), seconds,
                      Path(path) if path is not None else None)
    result = Result(exp, dense)
    if exp.method is not None:
        if on_phase is not None:
            on_phase(exp.method.name, exp, exp.train)
        key = "dense_validation_error" if exp.select_on == "validation" else "dense_test_error"
        config = run_config(spec, exp.dataset, exp.seed, exp.train, exp.method) | extra | {key: dense.test_error}
        if dense.checkpoint is not None:  # where the run started (refdns report draws its weights)
            config["dense_checkpoint"] = str(dense.checkpoint)
        state, seconds = run_training(spec, sel, exp.train, seed=exp.seed, method=exp.method,
                                      params=dense.state.params, masks=dense.state.masks, on_step=on_step,
                                      on_test=on_test, interrupted=_saver(out, exp.method.name, config))
        result.pruned = Phase(exp.method.name, state, config, final_test_error(state, sel), seconds,
                              Path(out) if out is not None else None)
    _close_selection(result, data)
    if result.pruned is not None:
        pruned = result.pruned
        pruned.config["dense_test_error"] = dense.test_error
        if out is not None:
            checkpoint.save(out, pruned.state, method=pruned.name, config=pruned.config)
        result.summary = pruning_summary(spec, pruned.state.masks, dense.test_error, pruned.test_error)
        result.summary |= {"select_on": exp.select_on, "validation_error": pruned.validation_error,
                           "dense_validation_error": dense.validation_error,
                           "order": experiment_order(exp)}
    result.seconds = time.perf_counter() - t0
    return result


def _close_selection(result: Result, data: Data) -> None:
    """With a validation split, the errors measured so far are validation errors: keep them as such and read
    the test set now, once, at the end of the whole experiment (the dense checkpoint, written before, records
    only its validation error)."""
    if result.experiment.select_on != "validation":
        return
    for phase in (result.dense, result.pruned):
        if phase is None:
            continue
        phase.validation_error = phase.test_error
        phase.test_error = evaluate(phase.state, data.x_test, data.y_test)
        if phase is result.pruned:
            phase.config["validation_error"] = phase.validation_error


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; ``checkpoint`` holds its state, which ``refdns resume`` continues bit-exactly."""

    def __init__(self, checkpoint: Path, iteration: int):
        super().__init__(f"interrupted at iteration {iteration}; resumable checkpoint {checkpoint}")
        self.checkpoint, self.iteration = checkpoint, iteration


def partial_path(target: str | Path) -> Path:
    """Where an interrupted run that was to write ``target`` leaves its resumable checkpoint."""
    target = Path(target)
    return target.with_name(target.stem + ".partial" + target.suffix)


def _saver(target: str | Path | None, method: str, config: dict[str, Any]) -> Callable[[RunState], None] | None:
    if target is None:
        return None

    def save(state: RunState) -> None:
        path = partial_path(target)
        checkpoint.save(path, state, method=method, config=config | {"resume_target": str(target)})
        raise RunInterrupted(path, state.iteration)

    return save


def resume(path: str | Path, data: Data, *, out: str | Path | None = None, on_step=None, on_test=None) -> Phase:
    """Continue an interrupted (or any) run from its checkpoint to the length its config asks for.

    The checkpoint holds everything that determines the future of a run (parameters, momentum, masks,
    method state, every random stream, the batch order), so the result equals an uninterrupted run bit for
    bit. Writes ``out`` (default: the target the run was going to write) and removes a ``.partial`` file.
    """
    ck = checkpoint.load(path)
    cfg_dict = ck.config
    if "train" not in cfg_dict:
        raise ConfigError(f"{path} records no training settings (an imported net?): nothing to resume")
    cfg = TrainConfig(**cfg_dict["train"])
    method = method_from_config(cfg_dict.get("method"))
    target = Path(out if out is not None else cfg_dict.get("resume_target", path))
    state = ck.state
    t0 = time.perf_counter()
    config = {k: v for k, v in cfg_dict.items() if k != "resume_target"}
    select_on = config.get("select_on", "test")
    sel = selection_data(data, select_on)
    with limit_threads(config.get("threads", 1)):
        continue_training(state, sel, cfg, method, on_step=on_step, on_test=on_test,
                          interrupted=_saver(target, ck.method, config))
        error = final_test_error(state, sel)
        validation_error = None
        if select_on == "validation":
            validation_error, error = error, evaluate(state, data.x_test, data.y_test)
            if method is not None:
                config["validation_error"] = validation_error
    checkpoint.save(target, state, method=ck.method, config=config)
    partial = partial_path(target)
    if Path(path).resolve() == partial.resolve() and partial.exists():
        partial.unlink()
    return Phase(ck.method, state, config, error, time.perf_counter() - t0, target,
                 validation_error=validation_error)


def method_from_config(d: dict[str, Any] | None) -> PruningMethod | None:
    """The pruning method a checkpoint's config describes (``None`` for dense training)."""
    if not d:
        return None
    d = dict(d)
    name = d.pop("method", None)
    known = reproducible_methods()
    if name not in known:
        raise ConfigError(f"method {name!r} in the checkpoint's config cannot be rebuilt (known: {sorted(known)})")
    cls = known[name]
    return cls(from_dict(cls.config_type, d))


def layer_table(spec: NetSpec, masks: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per layer: parameters (weights + biases), kept, kept fraction, plus a ``total`` row."""
    rows = []
    for name in spec.layer_names:
        w, b = masks[f"{name}.weight"], masks[f"{name}.bias"]
        params = w.size + b.size
        kept = int(np.count_nonzero(w) + np.count_nonzero(b))
        rows.append({"layer": name, "params": params, "kept": kept, "kept_fraction": kept / params,
                     "kept_weights": int(np.count_nonzero(w)), "kept_biases": int(np.count_nonzero(b))})
    total = sum(r["params"] for r in rows)
    kept = sum(r["kept"] for r in rows)
    rows.append({"layer": "total", "params": total, "kept": kept, "kept_fraction": kept / total,
                 "kept_weights": sum(r["kept_weights"] for r in rows),
                 "kept_biases": sum(r["kept_biases"] for r in rows)})
    return rows


def pruning_summary(spec: NetSpec, masks: dict[str, np.ndarray], dense_error: float,
                    test_error: float) -> dict[str, Any]:
    """The figures of the paper's Table 1 for one pruned run, machine-readable."""
    rows = layer_table(spec, masks)
    total = rows[-1]
    return {
        "net": spec.name,
        "dense_test_error": dense_error,
        "test_error": test_error,
        "kept_fraction": total["kept_fraction"],
        "kept": total["kept"],
        "params": total["params"],
        "compression": total["params"] / max(total["kept"], 1),
        "layers": {r["layer"]: {k: v for k, v in r.items() if k != "layer"} for r in rows[:-1]},
    }


def format_table(summary: dict[str, Any]) -> str:
    """The paper's Table 1 layout: per-layer params and kept %, total, compression, error dense -> pruned."""
    lines = [
        f"| {summary['net']} | params | kept | kept % |",
        "|---|---:|---:|---:|",
    ]
    for name, r in summary["layers"].items():
        lines.append(f"| {name} | {r['params']:,} | {r['kept']:,} | {100 * r['kept_fraction']:.2f}% |")
    lines.append(f"| total | {summary['params']:,} | {summary['kept']:,} | {100 * summary['kept_fraction']:.2f}% |")
    lines.append("")
    lines.append(f"compression {summary['compression']:.1f}x; test error {100 * summary['dense_test_error']:.2f}% "
                 f"(dense) -> {100 * summary['test_error']:.2f}% (pruned)")
    if summary.get("validation_error") is not None:
        lines.append(f"validation error {100 * summary['dense_validation_error']:.2f}% (dense) -> "
                     f"{100 * summary['validation_error']:.2f}% (pruned)")
    lines.append(f"settings {PROTOCOL_LABEL[summary.get('select_on', 'test')]}")
    if summary.get("order") is not None:
        lines.append(order_note(summary["order"]))
    return "\n".join(lines)


def churn_by_interval(state: RunState, interval: int = 1000) -> list[dict[str, Any]]:
    """Per layer and per ``interval`` iterations: updates, connections pruned and spliced, density at the end."""
    buckets: dict[tuple[int, str], dict[str, Any]] = {}
    for r in state.history.mask_updates:
        start = (r.iteration // interval) * interval
        b = buckets.setdefault((start, r.layer), {"from": start, "to": start + interval, "layer": r.layer,
                                                  "updates": 0, "pruned": 0, "spliced": 0})
        b["updates"] += 1
        b["pruned"] += r.pruned
        b["spliced"] += r.spliced
        b["density"] = r.density
    return [buckets[k] for k in sorted(buckets)]


def phase_json(phase: Phase, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON figures of one phase (what ``refdns train`` / ``refdns dns`` write with ``--json``)."""
    st = phase.state
    out = (summary or {}) | {
        "test_error": phase.test_error,
        "iterations": st.iteration,
        "seconds": phase.seconds,
        "checkpoint": None if phase.checkpoint is None else str(phase.checkpoint),
        "config": phase.config,
        "test_error_history": st.history.test_error,
    }
    if phase.name == "dense":
        return out | {"net": st.spec.name, "dataset": phase.config.get("dataset"), "seed": phase.config.get("seed")}
    cfg = phase.config["train"]
    out |= {"method_state": {k: np.asarray(v).tolist() for k, v in st.method_state.items()},
            "mask_updates": [r.to_dict() for r in st.history.mask_updates],
            "churn": churn_by_interval(st, interval=max(cfg["iterations"] // 10, 1))}
    if phase.name == "dns":
        out["thresholds"] = {k: float(v) for k, v in st.method_state.items()}
    return out


def result_json(result: Result) -> dict[str, Any]:
    """The JSON figures of a whole experiment (``refdns reproduce --json``): the pruned phase's, plus the
    dense phase's and the totals (``iterations`` counts every training iteration, dense included)."""
    if result.pruned is None:
        return phase_json(result.dense)
    return phase_json(result.pruned, result.summary) | {
        "method": result.pruned.name,
        "seconds": result.seconds,
        "dense_seconds": result.dense.seconds,
        "pruning_seconds": result.pruned.seconds,
        "pruning_iterations": result.pruned.iterations,
        "dense_iterations": result.dense.iterations,
        "iterations": result.iterations,
        "dense_checkpoint": None if result.dense.checkpoint is None else str(result.dense.checkpoint),
    }


def with_train(exp: Experiment, **changes: Any) -> Experiment:
    """``exp`` with its pruning phase's TrainConfig changed (e.g. ``iterations=500``)."""
    return replace(exp, train=replace(exp.train, **changes))


# ---- Dense-Sparse-Dense -----------------------------------------------------------------------------------


@dataclass
class DSDResult:
    """The two phases after the dense one: S (sparse, mask fixed) and the final D (every connection back)."""

    sparse: RunState
    sparse_error: float
    final: RunState
    final_error: float


def _dsd_phases(cfg: DSDConfig, sgd: SGDConfig, batch_size: int, test_interval: int
                ) -> tuple[TrainConfig, TrainConfig]:
    s = TrainConfig(iterations=cfg.sparse_iterations, batch_size=batch_size, test_interval=test_interval,
                    sgd=sgd)
    d_sgd = replace(sgd, base_lr=sgd.base_lr * cfg.redense_lr_factor)
    d = TrainConfig(iterations=cfg.redense_iterations, batch_size=batch_size, test_interval=test_interval,
                    sgd=d_sgd)
    return s, d


def run_dsd(spec: NetSpec, data: Data, dense: RunState, cfg: DSDConfig, sgd: SGDConfig, *, seed: int,
            batch_size: int = 64, test_interval: int = 0, masked: bool = True) -> DSDResult:
    """DSD's S and final D phases from a trained dense net (:mod:`refdns.prune.dsd`).

    S: per-layer magnitude pruning to ``cfg.sparsity``, ``cfg.sparse_iterations`` of training with the mask
    fixed at ``sgd``. D: the mask removed, pruned weights restarting at 0, ``cfg.redense_iterations`` at
    ``sgd.base_lr * cfg.redense_lr_factor``. Each phase is a fresh solver run (zero momentum, the lr policy
    from its start) whose batch order comes from ``seed``.

    ``masked=False`` is the fair baseline: the very same two phases, lengths, rates and batches, with no
    mask (the dense net simply trains on).
    """
    s_cfg, d_cfg = _dsd_phases(cfg, sgd, batch_size, test_interval)
    method = sparse_phase_method(spec, cfg) if masked else None
    sparse, _ = run_training(spec, data, s_cfg, seed=seed, method=method, params=dense.params,
                             masks=dense.masks)
    sparse_error = final_test_error(sparse, data)
    params, masks = release(sparse.params, sparse.masks)
    final, _ = run_training(spec, data, d_cfg, seed=seed + 1, params=params, masks=masks)
    return DSDResult(sparse, sparse_error, final, final_test_error(final, data))
