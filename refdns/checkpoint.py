"""HDF5 checkpoints: everything that determines a run's future, as plain datasets and attributes.

Readable from any HDF5 tool (h5dump, h5py, HDF5.jl, the C API): no pickled objects anywhere. The schema is
documented in ``data/SCHEMA.md``; its version is :data:`SCHEMA_VERSION`.

Layout (schema 1)::

    /                      attrs: format, schema_version, refdns_version, net, method, seed, iteration,
                                  config (JSON text)
    /params/<layer>/weight, bias             float32, Caffe layouts
    /masks/<layer>/weight, bias              uint8, 0 or 1
    /optimizer/velocity/<layer>/weight, bias float32 (Caffe momentum history)
    /method_state/<name>                     method arrays (DNS thresholds a, b, ...)
    /rng/data   attrs: bit_generator (JSON), pos, batch_size; dataset perm (int64)   -- the batch order
    /rng/mask   attrs: bit_generator (JSON)                               -- DNS's Bernoulli draws
    /history/loss, lr, test_error            (n, 2) float64: iteration, value
    /history/mask_updates/<column>           one row per (update, layer): iteration, layer, pruned, ...

Writes are atomic: a temporary file in the same folder, flushed and fsynced, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from refdns import __version__
from refdns.errors import CheckpointError
from refdns.nets import get_spec
from refdns.nets.sequential import NetSpec
from refdns.train import BatchStream, History, RunState

FORMAT = "refdns-checkpoint"
SCHEMA_VERSION = 1
MASK_UPDATE_COLUMNS = ("iteration", "layer", "pruned", "spliced", "kept", "total")


def _generator_from_state(state: dict[str, Any]) -> np.random.Generator:
    name = state.get("bit_generator")
    bitgen_cls = getattr(np.random, str(name), None)
    if bitgen_cls is None or not isinstance(bitgen_cls, type) or not issubclass(bitgen_cls, np.random.BitGenerator):
        raise CheckpointError(f"unknown bit generator {name!r} in checkpoint rng state")
    bg = bitgen_cls()
    bg.state = state
    return np.random.Generator(bg)


def _write_tensors(group: h5py.Group, tensors: dict[str, np.ndarray], dtype) -> None:
    for key, arr in tensors.items():
        layer, kind = key.split(".")
        group.require_group(layer).create_dataset(kind, data=np.asarray(arr, dtype=dtype))


def _pairs(rows: list[tuple[int, float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def save(path: str | os.PathLike, state: RunState, *, method: str = "dense", config: dict[str, Any] | None = None) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["refdns_version"] = __version__
            f.attrs["net"] = state.spec.name
            f.attrs["method"] = method
            f.attrs["seed"] = -1 if state.seed is None else int(state.seed)
            f.attrs["iteration"] = int(state.iteration)
            f.attrs["config"] = json.dumps(config or {}, sort_keys=True)
            _write_tensors(f.create_group("params"), state.params, np.float32)
            _write_tensors(f.create_group("masks"), state.masks, np.uint8)
            _write_tensors(f.create_group("optimizer").create_group("velocity"), state.velocity, np.float32)
            ms = f.create_group("method_state")
            for k, v in state.method_state.items():
                ms.create_dataset(k, data=np.asarray(v))
            rng = f.create_group("rng")
            g = rng.create_group("data")
            g.attrs["bit_generator"] = json.dumps(state.data.rng.bit_generator.state)
            g.attrs["pos"] = int(state.data.pos)
            g.attrs["batch_size"] = int(state.data.batch_size)
            g.create_dataset("perm", data=np.asarray(state.data.perm, dtype=np.int64))
            rng.create_group("mask").attrs["bit_generator"] = json.dumps(state.mask_rng.bit_generator.state)
            h = f.create_group("history")
            h.create_dataset("loss", data=_pairs(state.history.loss))
            h.create_dataset("lr", data=_pairs(state.history.lr))
            h.create_dataset("test_error", data=_pairs(state.history.test_error))
            mu = h.create_group("mask_updates")
            recs = state.history.mask_updates
            for col in MASK_UPDATE_COLUMNS:
                if col == "layer":
                    mu.create_dataset(col, data=np.array([r[col] for r in recs], dtype=h5py.string_dtype()))
                else:
                    mu.create_dataset(col, data=np.array([r[col] for r in recs], dtype=np.int64))
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@dataclass
class Checkpoint:
    """A loaded checkpoint: the run state plus the metadata written beside it."""

    state: RunState
    method: str
    config: dict[str, Any]
    refdns_version: str
    schema_version: int


def _read_tensors(f: h5py.File, group: str, spec: NetSpec, path: Path, *, kind: str) -> dict[str, np.ndarray]:
    if group not in f:
        raise CheckpointError(f"{path}: missing group /{group}")
    out = {}
    for key, shape in spec.param_shapes().items():
        layer, part = key.split(".")
        name = f"/{group}/{layer}/{part}"
        if name not in f:
            raise CheckpointError(f"{path}: missing dataset {name} (net {spec.name})")
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            raise CheckpointError(f"{path}: {name} is not a dataset")
        if ds.shape != shape:
            raise CheckpointError(f"{path}: {name} has shape {ds.shape}, expected {shape}")
        want = np.uint8 if kind == "mask" else np.float32
        if ds.dtype != want:
            raise CheckpointError(f"{path}: {name} has dtype {ds.dtype}, expected {np.dtype(want)}")
        arr = ds[()]
        if kind == "mask":
            if not np.isin(arr, (0, 1)).all():
                raise CheckpointError(f"{path}: {name} holds values other than 0 and 1")
            arr = arr.astype(bool)
        elif not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0]
            raise CheckpointError(f"{path}: {name} holds NaN or Inf (first at index {tuple(bad)})")
        out[key] = arr
    return out


def _attr(f: h5py.File, name: str, path: Path):
    if name not in f.attrs:
        raise CheckpointError(f"{path}: missing root attribute {name!r}")
    v = f.attrs[name]
    return v.decode() if isinstance(v, bytes) else v


def load(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint; any schema, shape, dtype or value problem raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {e}") from None
    try:
        with f:
            return _load_open(f, path)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint: {type(e).__name__}: {e}") from None


def _load_open(f: h5py.File, path: Path) -> Checkpoint:
    fmt = _attr(f, "format", path)
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: format {fmt!r} is not {FORMAT!r}")
    schema = int(_attr(f, "schema_version", path))
    if schema > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: schema_version {schema} is newer than this refdns ({__version__}) reads "
            f"(<= {SCHEMA_VERSION}); upgrade refdns"
        )
    if schema < 1:
        raise CheckpointError(f"{path}: schema_version {schema} is not valid")
    net = str(_attr(f, "net", path))
    try:
        spec = get_spec(net)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    params = _read_tensors(f, "params", spec, path, kind="param")
    masks = _read_tensors(f, "masks", spec, path, kind="mask")
    velocity = _read_tensors(f, "optimizer/velocity", spec, path, kind="param")
    method_state = {k: ds[()] for k, ds in f["method_state"].items()} if "method_state" in f else {}
    for group in ("rng/data", "rng/mask", "history"):
        if group not in f:
            raise CheckpointError(f"{path}: missing group /{group}")
    data_rng = _generator_from_state(json.loads(f["rng/data"].attrs["bit_generator"]))
    perm = f["rng/data/perm"][()]
    stream = BatchStream.__new__(BatchStream)
    stream.n, stream.rng, stream.perm, stream.pos = len(perm), data_rng, perm, int(f["rng/data"].attrs["pos"])
    stream.batch_size = int(f["rng/data"].attrs["batch_size"])
    if stream.pos < 0 or stream.pos > stream.n:
        raise CheckpointError(f"{path}: /rng/data pos={stream.pos} outside [0, {stream.n}]")
    mask_rng = _generator_from_state(json.loads(f["rng/mask"].attrs["bit_generator"]))
    h = f["history"]
    mu = h["mask_updates"]
    cols = {c: mu[c][()] for c in MASK_UPDATE_COLUMNS}
    records = [
        {c: (cols[c][i].decode() if isinstance(cols[c][i], bytes) else int(cols[c][i])) for c in MASK_UPDATE_COLUMNS}
        for i in range(len(cols["iteration"]))
    ]
    history = History(
        loss=[(int(a), float(b)) for a, b in h["loss"][()]],
        lr=[(int(a), float(b)) for a, b in h["lr"][()]],
        test_error=[(int(a), float(b)) for a, b in h["test_error"][()]],
        mask_updates=records,
    )
    config = json.loads(_attr(f, "config", path))
    seed = int(_attr(f, "seed", path))
    state = RunState(
        spec=spec,
        params=params,
        velocity=velocity,
        masks=masks,
        iteration=int(_attr(f, "iteration", path)),
        data=stream,
        mask_rng=mask_rng,
        method_state=method_state,
        history=history,
        seed=None if seed < 0 else seed,
    )
    return Checkpoint(
        state=state,
        method=str(_attr(f, "method", path)),
        config=config,
        refdns_version=str(_attr(f, "refdns_version", path)),
        schema_version=schema,
    )
