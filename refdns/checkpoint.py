"""HDF5 checkpoints: everything that determines a run's future, as plain datasets and attributes.

Readable from any HDF5 tool (h5dump, h5py, HDF5.jl, the C API): no pickled objects anywhere. The schema is
documented in ``data/SCHEMA.md``; its version is :data:`SCHEMA_VERSION`.

Layout (schema 3; schema 2 is the same without ``spec``, schema 1 also without the seal and ``manifest``)::

    /                      attrs: format, schema_version, refdns_version, net, method, seed, iteration,
                                  config (JSON text),
                                  spec (JSON: family, name, every layer's weight and bias shape; a thinned
                                  net has fewer units than its family, refdns.nets.spec_record)
    /params/<layer>/weight, bias             float32, Caffe layouts
    /masks/<layer>/weight, bias              uint8, 0 or 1
    /optimizer/velocity/<layer>/weight, bias float32 (Caffe momentum history)
    /method_state/<name>                     method arrays (DNS thresholds a, b, ...)
    /rng/data   attrs: bit_generator (JSON), pos, batch_size, order ("shuffled" if absent);
                dataset perm (int64)                                              -- the batch order
    /rng/mask   attrs: bit_generator (JSON)                               -- DNS's Bernoulli draws
    /history/loss, lr, test_error            (n, 2) float64: iteration, value
    /history/mask_updates/<column>           one row per (update, layer): iteration, layer, pruned, ...
    bytes 0-511 (HDF5 user block): the seal, "refdns-checkpoint-seal 1\nsha256 <hex>\nbytes <n>\n", the SHA-256
                                  of every byte after the user block, checked before HDF5 parses anything
                                  (libhdf5 can loop forever or crash on damaged metadata)
    / attr manifest (JSON): {"datasets": {path: sha256}, "attributes": sha256}
                                             -- every dataset's bytes and every attribute, so a flipped bit
                                                in the numbers, a deleted dataset or an edited attribute is
                                                refused instead of silently loaded

Writes are atomic: a temporary file in the same folder, flushed and fsynced, then ``os.replace``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from refdns import __version__
from refdns.atomic import atomic_path
from refdns.errors import CheckpointError
from refdns.nets import get_spec, spec_from_record, spec_record
from refdns.nets.sequential import NetSpec
from refdns.prune.base import MaskUpdate
from refdns.run import BatchStream, History, RunState, generator_from_state

FORMAT = "refdns-checkpoint"
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
SPEC_ATTR = "spec"
MANIFEST_ATTR = "manifest"
USERBLOCK = 512
SEAL_MAGIC = b"refdns-checkpoint-seal 1\n"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _hash_after_userblock(fh) -> tuple[str, int]:
    fh.seek(USERBLOCK)
    h = hashlib.sha256()
    n = 0
    while chunk := fh.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def seal(path: str | os.PathLike) -> None:
    """Write the seal (SHA-256 of the HDF5 data) into a checkpoint's user block.

    :func:`save` does this; call it yourself only after deliberately editing a checkpoint with an HDF5 tool
    (h5py ``r+``, h5edit), or :func:`load` refuses the edited file as damaged.
    """
    with open(path, "rb+") as fh:
        head = fh.read(USERBLOCK)
        if len(head) < USERBLOCK or not (head.startswith(SEAL_MAGIC) or head == bytes(USERBLOCK)):
            raise CheckpointError(f"{path}: no {USERBLOCK}-byte user block to seal (not a schema-2 checkpoint)")
        digest, n = _hash_after_userblock(fh)
        block = SEAL_MAGIC + f"sha256 {digest}\nbytes {n}\n".encode()
        fh.seek(0)
        fh.write(block.ljust(USERBLOCK, b"\0"))
        fh.flush()
        os.fsync(fh.fileno())


def _check_seal(path: Path) -> bool:
    """True if the file is sealed and intact, False for an unsealed (schema 1) HDF5 file; raises otherwise."""
    with open(path, "rb") as fh:
        head = fh.read(USERBLOCK)
        if head.startswith(HDF5_SIGNATURE):
            return False
        if not head.startswith(SEAL_MAGIC):
            raise CheckpointError(f"{path}: not a refdns checkpoint (neither a seal nor an HDF5 signature at the "
                                  "start; truncated, corrupt or another kind of file)")
        lines = head[len(SEAL_MAGIC):].split(b"\0", 1)[0].decode("ascii", "replace").split("\n")
        try:
            want = lines[0].removeprefix("sha256 ")
            want_n = int(lines[1].removeprefix("bytes "))
        except (IndexError, ValueError):
            raise CheckpointError(f"{path}: damaged seal in the first {USERBLOCK} bytes") from None
        digest, n = _hash_after_userblock(fh)
    if n != want_n:
        raise CheckpointError(f"{path}: {n} bytes of HDF5 data, the seal says {want_n} (truncated or extended "
                              "after it was written)")
    if digest != want:
        raise CheckpointError(f"{path}: the data does not match its SHA-256 seal: damaged, or edited after it "
                              "was written (after a deliberate edit, call refdns.checkpoint.seal)")
    return True


# /history/mask_updates: one column per MaskUpdate field (the on-disk schema, so spelled out here)
MASK_UPDATE_COLUMNS = ("iteration", "layer", "pruned", "spliced", "kept", "total")
assert MASK_UPDATE_COLUMNS == tuple(f.name for f in fields(MaskUpdate))


def _write_tensors(group: h5py.Group, tensors: dict[str, np.ndarray], dtype) -> None:
    for key, arr in tensors.items():
        layer, kind = key.split(".")
        group.require_group(layer).create_dataset(kind, data=np.asarray(arr, dtype=dtype))


def _pairs(rows: list[tuple[int, float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def dataset_digest(arr: np.ndarray) -> str:
    """SHA-256 of a dataset's dtype, shape and little-endian C-order bytes (strings: UTF-8, NUL-separated)."""
    arr = np.asarray(arr)
    h = hashlib.sha256()
    if arr.dtype.kind in "OSU":
        h.update(f"str|{arr.shape}|".encode())
        h.update(b"\0".join(v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel()))
    else:
        le = arr.dtype.newbyteorder("<")
        h.update(f"{le.str}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr, dtype=le).tobytes())
    return h.hexdigest()


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return [_attr_value(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _manifest(f: h5py.File) -> dict[str, Any]:
    """Digests of every dataset and of all attributes (except the manifest itself), in a canonical order."""
    datasets: dict[str, str] = {}
    attrs: list[Any] = []
    objects: list[tuple[str, Any]] = [("/", f)]
    f.visititems(lambda name, obj: objects.append(("/" + name, obj)))
    for name, obj in sorted(objects, key=lambda t: t[0]):
        if isinstance(obj, h5py.Dataset):
            datasets[name] = dataset_digest(obj[()])
        for key in sorted(obj.attrs):
            if name == "/" and key == MANIFEST_ATTR:
                continue
            attrs.append([name, key, _attr_value(obj.attrs[key])])
    text = json.dumps(attrs, sort_keys=True, allow_nan=True)
    return {"datasets": datasets, "attributes": hashlib.sha256(text.encode()).hexdigest()}


def save(path: str | os.PathLike, state: RunState, *, method: str = "dense", config: dict[str, Any] | None = None) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + rename) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK) as f:
            f.attrs["format"] = FORMAT
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["refdns_version"] = __version__
            f.attrs["net"] = state.spec.name
            f.attrs["method"] = method
            f.attrs["seed"] = -1 if state.seed is None else int(state.seed)
            f.attrs["iteration"] = int(state.iteration)
            f.attrs["config"] = json.dumps(config or {}, sort_keys=True)
            f.attrs[SPEC_ATTR] = json.dumps(spec_record(state.spec), sort_keys=True)
            _write_tensors(f.create_group("params"), state.params, np.float32)
            _write_tensors(f.create_group("masks"), state.masks, np.uint8)
            _write_tensors(f.create_group("optimizer").create_group("velocity"), state.velocity, np.float32)
            ms = f.create_group("method_state")
            for k, v in state.method_state.items():
                ms.create_dataset(k, data=np.asarray(v))
            rng = f.create_group("rng")
            g = rng.create_group("data")
            stream = state.data.state_dict()  # n is len(perm) on disk
            g.attrs["bit_generator"] = json.dumps(stream["bit_generator"])
            g.attrs["pos"] = stream["pos"]
            g.attrs["batch_size"] = stream["batch_size"]
            g.attrs["order"] = stream["order"]
            g.create_dataset("perm", data=stream["perm"])
            rng.create_group("mask").attrs["bit_generator"] = json.dumps(state.mask_rng.bit_generator.state)
            h = f.create_group("history")
            h.create_dataset("loss", data=_pairs(state.history.loss))
            h.create_dataset("lr", data=_pairs(state.history.lr))
            h.create_dataset("test_error", data=_pairs(state.history.test_error))
            mu = h.create_group("mask_updates")
            recs = state.history.mask_updates
            for col in MASK_UPDATE_COLUMNS:
                values = [getattr(r, col) for r in recs]
                if col == "layer":
                    mu.create_dataset(col, data=np.array(values, dtype=h5py.string_dtype()))
                else:
                    mu.create_dataset(col, data=np.array(values, dtype=np.int64))
            f.attrs[MANIFEST_ATTR] = json.dumps(_manifest(f), sort_keys=True)
            f.flush()
        seal(tmp)
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
    """Read and validate a checkpoint; any schema, shape, dtype, value or digest problem: CheckpointError.

    Schema 2 files are checked against their manifest (a SHA-256 per dataset and one over all attributes),
    so damage to the numbers themselves is refused too; schema 1 files (no manifest) get every structural
    and value check but no digest check.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    sealed = _check_seal(path)  # before HDF5 sees a byte: libhdf5 can hang on damaged metadata
    try:
        f = h5py.File(path, "r")
    except Exception as e:  # h5py raises OSError for most damage, but not for all of it
        raise CheckpointError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {e}") from None
    try:
        with f:
            return _load_open(f, path, sealed)
    except CheckpointError:
        raise
    except Exception as e:  # a damaged file can make h5py/json fail in many ways; all of them mean "damaged"
        raise CheckpointError(f"{path}: damaged checkpoint: {type(e).__name__}: {e}") from None


def _check_manifest(f: h5py.File, path: Path) -> None:
    text = _attr(f, MANIFEST_ATTR, path)
    try:
        want = json.loads(text)
        want_ds, want_attrs = dict(want["datasets"]), str(want["attributes"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: root attribute {MANIFEST_ATTR!r} is not a valid manifest") from None
    have = _manifest(f)
    missing = sorted(set(want_ds) - set(have["datasets"]))
    extra = sorted(set(have["datasets"]) - set(want_ds))
    if missing:
        raise CheckpointError(f"{path}: dataset(s) {missing} listed in the manifest are missing")
    if extra:
        raise CheckpointError(f"{path}: unexpected dataset(s) {extra} not listed in the manifest")
    for name, digest in want_ds.items():
        if have["datasets"][name] != digest:
            raise CheckpointError(f"{path}: {name} does not match its SHA-256 in the manifest (corrupt data)")
    if have["attributes"] != want_attrs:
        raise CheckpointError(f"{path}: the attributes do not match their SHA-256 in the manifest "
                              "(an attribute was changed or removed)")


def _dataset(f: h5py.File, name: str, path: Path) -> h5py.Dataset:
    if name not in f:
        raise CheckpointError(f"{path}: missing dataset {name}")
    ds = f[name]
    if not isinstance(ds, h5py.Dataset):
        raise CheckpointError(f"{path}: {name} is not a dataset")
    return ds


def _pairs_dataset(f: h5py.File, name: str, path: Path) -> np.ndarray:
    arr = _dataset(f, name, path)[()]
    if arr.dtype != np.float64 or arr.ndim != 2 or arr.shape[1] != 2:
        raise CheckpointError(f"{path}: {name} is {arr.shape} {arr.dtype}, expected (n, 2) float64")
    return arr


def _read_spec(f: h5py.File, path: Path) -> NetSpec:
    """Schema 3: the net from the ``spec`` attribute (its family and every layer's shapes)."""
    text = _attr(f, SPEC_ATTR, path)
    try:
        record = json.loads(text)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: root attribute {SPEC_ATTR!r} is not JSON") from None
    return spec_from_record(record)


def _load_open(f: h5py.File, path: Path, sealed: bool) -> Checkpoint:
    fmt = _attr(f, "format", path)
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: format {fmt!r} is not {FORMAT!r}")
    schema = _attr(f, "schema_version", path)
    if not isinstance(schema, (int, np.integer)):
        raise CheckpointError(f"{path}: schema_version {schema!r} is not an integer")
    schema = int(schema)
    if schema > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: schema_version {schema} is newer than this refdns ({__version__}) reads "
            f"(<= {SCHEMA_VERSION}); upgrade refdns"
        )
    if schema not in READABLE_SCHEMAS:
        raise CheckpointError(f"{path}: schema_version {schema} is not valid (readable: {READABLE_SCHEMAS})")
    if schema >= 2 and not sealed:
        raise CheckpointError(f"{path}: a schema {schema} checkpoint without its seal (user block) is damaged")
    for group in ("params", "masks", "optimizer/velocity", "method_state", "rng/data", "rng/mask",
                  "history", "history/mask_updates"):
        if group not in f or not isinstance(f[group], h5py.Group):
            raise CheckpointError(f"{path}: missing group /{group}")
    net = str(_attr(f, "net", path))
    try:
        spec = get_spec(net) if schema < 3 else _read_spec(f, path)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if spec.name != net:
        raise CheckpointError(f"{path}: root attribute net {net!r} is not the net its spec describes "
                              f"({spec.name!r})")
    params = _read_tensors(f, "params", spec, path, kind="param")
    masks = _read_tensors(f, "masks", spec, path, kind="mask")
    velocity = _read_tensors(f, "optimizer/velocity", spec, path, kind="param")
    method_state = {}
    for k, ds in f["method_state"].items():
        arr = ds[()] if isinstance(ds, h5py.Dataset) else None
        if arr is None or arr.dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: /method_state/{k} must be a numeric dataset")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise CheckpointError(f"{path}: /method_state/{k} holds NaN or Inf")
        method_state[k] = arr
    perm = _dataset(f, "/rng/data/perm", path)[()]
    data = f["rng/data"].attrs
    try:
        stream = BatchStream.from_state({"perm": perm, "pos": int(data["pos"]), "n": len(perm),
                                         "batch_size": int(data["batch_size"]),
                                         "bit_generator": json.loads(data["bit_generator"]),
                                         # files written before data orders existed were shuffled
                                         "order": str(data.get("order", "shuffled"))})
    except ValueError as e:
        raise CheckpointError(f"{path}: /rng/data: {e}") from None
    try:
        mask_rng = generator_from_state(json.loads(f["rng/mask"].attrs["bit_generator"]))
    except ValueError as e:
        raise CheckpointError(f"{path}: /rng/mask: {e}") from None
    h = f["history"]
    mu = h["mask_updates"]
    cols = {c: _dataset(f, f"/history/mask_updates/{c}", path)[()] for c in MASK_UPDATE_COLUMNS}
    lengths = {c: v.shape for c, v in cols.items()}
    n_rec = len(cols["iteration"])
    if any(v.ndim != 1 or len(v) != n_rec for v in cols.values()):
        raise CheckpointError(f"{path}: /history/mask_updates columns have shapes {lengths}, not (n,) each")
    for c, v in cols.items():
        if c != "layer" and v.dtype != np.int64:
            raise CheckpointError(f"{path}: /history/mask_updates/{c} has dtype {v.dtype}, expected int64")
    del mu
    layers = [v.decode() if isinstance(v, bytes) else str(v) for v in cols["layer"]]
    try:
        records = [
            MaskUpdate(**{c: layers[i] if c == "layer" else int(cols[c][i]) for c in MASK_UPDATE_COLUMNS})
            for i in range(n_rec)
        ]
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: /history/mask_updates holds an invalid record: {e}") from None
    history = History(
        loss=[(int(a), float(b)) for a, b in _pairs_dataset(f, "/history/loss", path)],
        lr=[(int(a), float(b)) for a, b in _pairs_dataset(f, "/history/lr", path)],
        test_error=[(int(a), float(b)) for a, b in _pairs_dataset(f, "/history/test_error", path)],
        mask_updates=records,
    )
    if schema >= 2:
        _check_manifest(f, path)
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
