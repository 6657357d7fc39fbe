"""Plain NumPy ``.npz`` weight files, the interchange format with other frameworks.

Keys are ``<layer>.weight`` and ``<layer>.bias`` in Caffe layouts: dense (out, in), conv (F, C, K, K), the
same keys and layouts as refdns's parameter dicts (and PyTorch's ``nn.Linear`` / ``nn.Conv2d`` state_dict).
Files are read with ``allow_pickle=False``: an object array is refused, never unpickled.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from refdns.atomic import atomic_path
from refdns.errors import InterchangeError
from refdns.nets.sequential import NetSpec


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
