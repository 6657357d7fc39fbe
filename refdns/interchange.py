"""Weight files exchanged with other frameworks: NumPy ``.npz``, safetensors and Caffe ``.caffemodel``.

Keys are ``<layer>.weight`` and ``<layer>.bias`` in Caffe layouts: dense (out, in), conv (F, C, K, K), the
same keys and layouts as refdns's parameter dicts (and PyTorch's ``nn.Linear`` / ``nn.Conv2d`` state_dict).

* ``.npz``: read with ``allow_pickle=False``: an object array is refused, never unpickled.
* safetensors (what PyTorch, JAX and Hugging Face users save; read with the ``safetensors`` package's NumPy
  API, no torch): either plain ``<layer>.weight``/``.bias``, or ``torch.nn.utils.prune``'s layout, where a
  pruned parameter is stored as ``<layer>.weight_orig`` plus ``<layer>.weight_mask`` (0/1, any dtype) and the
  module computes ``weight = weight_orig * weight_mask``. refdns reads the orig as W and the mask as T.
* ``.caffemodel``: through :mod:`refdns.caffe.proto`; the authors' DNS layers carry their masks as blobs.

:func:`read_weights` picks the reader from the file's first bytes, never from its suffix (a ``.bin`` or a
misnamed file is read for what it is).
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refdns.atomic import atomic_path
from refdns.errors import CaffeFormatError, InterchangeError
from refdns.nets.sequential import NetSpec

FORMATS = ("npz", "safetensors", "caffemodel")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def read_npz(path: str | os.PathLike, spec: NetSpec) -> dict[str, np.ndarray]:
    """Read and validate a weight file for ``spec``; float32 copies keyed like ``spec.param_shapes()``.

    Raises
    ------
    InterchangeError
        Unreadable file, object (pickled) arrays, missing or unexpected keys, wrong shapes, non-float dtypes,
        values that are NaN or Inf (or overflow float32).
    """
    path = Path(path)
    if not path.exists():
        raise InterchangeError(f"{path}: no such weight file")
    if not zipfile.is_zipfile(path):  # np.load would otherwise take any other file for a pickle
        raise InterchangeError(
            f"{path}: not a readable .npz file (not a zip archive); write it with numpy.savez"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except ValueError as e:
        raise InterchangeError(
            f"{path}: holds pickled object arrays, which refdns never loads ({e})"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise InterchangeError(f"{path}: not a readable .npz file: {e}") from None
    return _check_params(path, raw, spec)


def _check_params(path: Path, raw: dict[str, np.ndarray], spec: NetSpec) -> dict[str, np.ndarray]:
    """Exactly the net's keys, its shapes, floating and finite; float32 copies."""
    shapes = spec.param_shapes()
    missing = [k for k in shapes if k not in raw]
    extra = sorted(k for k in raw if k not in shapes)
    if missing or extra:
        raise InterchangeError(
            f"{path}: keys for {spec.name}: missing {missing}, unexpected {extra}; expected "
            f"exactly {list(shapes)}"
        )
    out = {}
    for key, shape in shapes.items():
        arr = raw[key]
        if arr.shape != shape:
            raise InterchangeError(
                f"{path}: {key} has shape {arr.shape}, expected {shape} (Caffe layout: dense "
                "(out, in), conv (F, C, K, K))"
            )
        if arr.dtype.kind != "f":
            raise InterchangeError(f"{path}: {key} has dtype {arr.dtype}, expected a floating dtype")
        with np.errstate(over="ignore"):
            w = arr.astype(np.float32)
        if not np.isfinite(w).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(w))[0])
            raise InterchangeError(
                f"{path}: {key} holds NaN or Inf (or a value beyond float32) at index {bad}"
            )
        out[key] = w
    return out


def write_npz(path: str | os.PathLike, params: dict[str, np.ndarray]) -> Path:
    """Write ``params`` (float32) to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v, dtype=np.float32) for k, v in params.items()})
    return path


# ---------------------------------------------------------------------------------------------- safetensors


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: u64 little-endian header length n, then n bytes of JSON starting with ``{``."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def detect_format(path: str | os.PathLike) -> str:
    """``"npz"``, ``"safetensors"``, ``"caffemodel"`` or ``"hdf5"`` (a refdns checkpoint or trace), from the
    file's first bytes; InterchangeError for anything else. A protobuf has no magic number: a file that is
    none of the others is taken for a ``.caffemodel`` when its first byte is a NetParameter field key."""
    path = Path(path)
    if not path.is_file():
        raise InterchangeError(f"{path}: no such weight file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(32)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "npz"
    if head.startswith(HDF5_MAGIC) or head.startswith(b"refdns-checkpoint-seal"):
        return "hdf5"
    if _looks_like_safetensors(head, size):
        return "safetensors"
    # NetParameter: name (1), layers (2, V1), input (3), ..., layer (100: key bytes a2 06)
    if head[:1] in (b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x2a") or head[:2] == b"\xa2\x06":
        return "caffemodel"
    raise InterchangeError(f"{path}: not a weight file refdns reads (neither .npz, safetensors nor "
                           f".caffemodel by its first bytes {head[:8]!r})")


def _safetensors_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise InterchangeError(f"{path}: not a readable safetensors file: {e}") from None


@dataclass(frozen=True)
class Weights:
    """What a weight file holds for a net: W (float32) and, when the file carries them, masks (bool)."""

    params: dict[str, np.ndarray]
    masks: dict[str, np.ndarray] | None
    format: str
    layout: str  # "plain", "torch-prune" (weight_orig + weight_mask), "caffe-dns" (mask blobs), "caffe"


def _mask_array(path: Path, key: str, arr: np.ndarray, shape) -> np.ndarray:
    if arr.shape != shape:
        raise InterchangeError(f"{path}: {key} has shape {arr.shape}, its parameter {shape}")
    if arr.dtype.kind not in "biuf":
        raise InterchangeError(f"{path}: {key} has dtype {arr.dtype}, expected 0/1 numbers")
    a = arr.astype(np.float64)
    bad = ~((a == 0) | (a == 1))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InterchangeError(f"{path}: {key} holds {arr[idx]!r} at {idx}; a mask holds only 0 and 1")
    return a == 1


def read_safetensors(path: str | os.PathLike, spec: NetSpec) -> Weights:
    """Read a safetensors file for ``spec``, plain or in torch.nn.utils.prune's layout (per parameter:
    ``<key>`` alone, or ``<key>_orig`` with ``<key>_mask``; a parameter without a mask gets all ones)."""
    path = Path(path)
    raw, _ = _safetensors_tensors(path)
    shapes = spec.param_shapes()
    params, masks, pruned_layout = {}, {}, False
    for key in shapes:
        orig, mask = raw.pop(key + "_orig", None), raw.pop(key + "_mask", None)
        if (orig is None) != (mask is None):
            have = key + ("_orig" if orig is not None else "_mask")
            raise InterchangeError(f"{path}: {have} without its pair: torch.nn.utils.prune's layout stores "
                                   f"{key}_orig and {key}_mask together")
        if orig is not None:
            if key in raw:
                raise InterchangeError(f"{path}: both {key} and {key}_orig/{key}_mask; keep one layout")
            pruned_layout = True
            params[key] = orig
            masks[key] = _mask_array(path, key + "_mask", mask, orig.shape)
        elif key in raw:
            params[key] = raw.pop(key)
    if raw:
        # unknown keys: refuse them by name, like the .npz reader
        params.update(raw)
    checked = _check_params(path, params, spec)
    if not pruned_layout:
        return Weights(checked, None, "safetensors", "plain")
    full = {k: masks.get(k, np.ones(shapes[k], dtype=bool)) for k in shapes}
    return Weights(checked, full, "safetensors", "torch-prune")


def write_safetensors(
    path: str | os.PathLike,
    params: dict[str, np.ndarray],
    masks: dict[str, np.ndarray] | None = None,
    *,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``params`` (float32) atomically; with ``masks``, in torch.nn.utils.prune's layout
    (``<key>_orig`` = W, ``<key>_mask`` = T as float32, which ``prune.custom_from_mask`` and a module's
    ``load_state_dict`` after ``prune.identity`` accept)."""
    from safetensors.numpy import save

    tensors = {}
    for k, w in params.items():
        w = np.ascontiguousarray(w, dtype=np.float32)
        if masks is None:
            tensors[k] = w
        else:
            tensors[k + "_orig"] = w
            tensors[k + "_mask"] = np.ascontiguousarray(masks[k], dtype=np.float32)
    data = save(tensors, metadata={k: str(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------------ dispatch


def read_weights(path: str | os.PathLike, spec: NetSpec) -> Weights:
    """Read any weight file refdns knows (by content: :func:`detect_format`) for ``spec``.

    ``masks`` is None when the file has none (a plain ``.npz``, safetensors or Caffe model); the caller
    decides (all ones, or ``--mask-from-zeros``).
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "npz":
        return Weights(read_npz(path, spec), None, "npz", "plain")
    if fmt == "safetensors":
        return read_safetensors(path, spec)
    if fmt == "caffemodel":
        from refdns.caffe.proto import caffemodel_to_params, read_caffemodel

        try:
            params, masks = caffemodel_to_params(read_caffemodel(path), spec.layer_names, spec.param_shapes())
        except CaffeFormatError as e:
            raise InterchangeError(f"{path}: read as a .caffemodel (by its first bytes): {e}") from None
        params = _check_params(path, params, spec)
        return Weights(params, masks, "caffemodel", "caffe" if masks is None else "caffe-dns")
    raise InterchangeError(f"{path}: an HDF5 file (a refdns checkpoint or trace), not a weight file; "
                           "checkpoints are read by `refdns eval`/`diff`, not imported")


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (refdns writes net, layout and producer there)."""
    return _safetensors_tensors(Path(path))[1]


# ---------------------------------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class ParamDiff:
    """How two pruned versions of one parameter differ (``refdns diff``).

    ``agreement``: fraction of entries whose mask bits are equal; ``jaccard``: |A and B| / |A or B| of the
    kept sets (1.0 when both keep nothing); ``max_abs`` / ``rel_l2``: of the effective weights ``W * T``
    (``rel_l2 = ||a - b|| / max(||a||, ||b||)``, 0 when both are 0).
    """

    key: str
    size: int
    kept_a: int
    kept_b: int
    both: int
    agreement: float
    jaccard: float
    max_abs: float
    rel_l2: float


def diff_weights(a_params, a_masks, b_params, b_masks) -> list[ParamDiff]:
    """Per-parameter mask agreement, Jaccard index and effective-weight differences, in ``a_params`` order.

    The two must have the same keys and shapes (InterchangeError otherwise).
    """
    if list(a_params) != list(b_params) and set(a_params) != set(b_params):
        raise InterchangeError(f"the two hold different parameters: {sorted(a_params)} vs {sorted(b_params)}")
    rows = []
    for k in a_params:
        wa, wb = np.asarray(a_params[k]), np.asarray(b_params[k])
        ma, mb = np.asarray(a_masks[k], dtype=bool), np.asarray(b_masks[k], dtype=bool)
        if wa.shape != wb.shape:
            raise InterchangeError(f"{k}: shapes {wa.shape} and {wb.shape} differ")
        ea, eb = (wa * ma).astype(np.float64), (wb * mb).astype(np.float64)
        both, either = int(np.count_nonzero(ma & mb)), int(np.count_nonzero(ma | mb))
        d = ea - eb
        scale = max(float(np.linalg.norm(ea)), float(np.linalg.norm(eb)))
        rows.append(ParamDiff(key=k, size=int(wa.size), kept_a=int(ma.sum()), kept_b=int(mb.sum()), both=both,
                              agreement=float(np.mean(ma == mb)),
                              jaccard=1.0 if either == 0 else both / either,
                              max_abs=float(np.abs(d).max()) if d.size else 0.0,
                              rel_l2=0.0 if scale == 0 else float(np.linalg.norm(d)) / scale))
    return rows
