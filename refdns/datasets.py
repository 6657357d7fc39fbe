"""MNIST and Fashion-MNIST: find, verify, download and read the IDX files.

The IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/, section "The IDX file format"):
two zero bytes, a dtype code byte, a number-of-dimensions byte, then each dimension as a big-endian
uint32, then the payload in row-major order, big-endian. Files may be gzip-compressed.

Where the files come from, in order (first hit wins, see :func:`search_dirs`):

1. the ``data_dir`` argument (the CLI's ``--data-dir``),
2. the ``REFDNS_DATA`` environment variable,
3. the user cache folder, ``$XDG_CACHE_HOME/refdns`` or ``~/.cache/refdns`` (see :func:`cache_dir`).

In each folder the layout is ``<dir>/<dataset>/<file>`` (``$REFDNS_DATA/mnist/train-images-idx3-ubyte.gz``);
a file lying directly in ``<dir>/`` is accepted too. Both the published ``.gz`` name and the uncompressed
name (``train-images-idx3-ubyte``) are accepted. If no copy is found and downloading is allowed, the
``.gz`` file is fetched from the mirrors into the user cache folder.

Every file is checked against the SHA-256 of the published original (or of its decompressed content,
for an uncompressed copy) before use. Nothing is ever overwritten or deleted: a bad file raises a
named error and stays where it is.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path

import numpy as np
from tqdm import tqdm

from refdns import __version__
from refdns.atomic import fsync_dir
from refdns.errors import (
    ChecksumError,
    ConfigError,
    CorruptFileError,
    DataError,
    DatasetNotFoundError,
    DownloadError,
    IDXFormatError,
)

__all__ = [
    "DATASETS",
    "DEFAULT_MIRRORS",
    "KINDS",
    "PIXEL_SCALE",
    "SHA256",
    "SPLITS",
    "cache_dir",
    "clear_cache",
    "fetch",
    "file_name",
    "load_mnist",
    "locate",
    "read_idx",
    "resolve_data_dir",
    "resolve_mirrors",
    "search_dirs",
]

DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")
KINDS = ("images", "labels")

# Caffe's MNIST recipe scales pixels by 1/256 (0.00390625), not 1/255; a power of two, so exact in float32.
PIXEL_SCALE = np.float32(0.00390625)

DEFAULT_MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# SHA-256 of the published files (the ``.gz`` names, as in data/<dataset>/SHA256SUMS) and of their
# decompressed content (the uncompressed names), so that a user's gunzipped copy is verified too.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

# Published sizes of the .gz files: a download that grows past this is abandoned early.
_GZ_SIZES = {
    "mnist": {
        "train-images-idx3-ubyte.gz": 9912422,
        "train-labels-idx1-ubyte.gz": 28881,
        "t10k-images-idx3-ubyte.gz": 1648877,
        "t10k-labels-idx1-ubyte.gz": 4542,
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": 26421880,
        "train-labels-idx1-ubyte.gz": 29515,
        "t10k-images-idx3-ubyte.gz": 4422102,
        "t10k-labels-idx1-ubyte.gz": 5148,
    },
}

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_KIND_PART = {"images": "images-idx3", "labels": "labels-idx1"}

# IDX dtype codes; multi-byte types are big-endian on disk.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16
_HOW_TO_FIX = (
    "pass --data-dir (data_dir=...) or set REFDNS_DATA to a folder holding the files as "
    "<dir>/<dataset>/<file> (e.g. $REFDNS_DATA/mnist/train-images-idx3-ubyte.gz); see data/README.md"
)


# --------------------------------------------------------------------------------------------------------
# Argument checks


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{name}={value!r} is not supported; choose one of {choices}")
    return value


def file_name(split: str, kind: str, *, compressed: bool = True) -> str:
    """Published file name of one part of MNIST / Fashion-MNIST (both use the same names).

    Parameters
    ----------
    split : {"train", "test"}
    kind : {"images", "labels"}
    compressed : bool
        True for the published ``.gz`` name, False for the uncompressed name.

    Returns
    -------
    name : str
        e.g. ``"t10k-labels-idx1-ubyte.gz"`` for ``("test", "labels")``.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("kind", kind, KINDS)
    stem = f"{_SPLIT_PREFIX[split]}-{_KIND_PART[kind]}-ubyte"
    return stem + ".gz" if compressed else stem


# --------------------------------------------------------------------------------------------------------
# IDX decoding


def _decompress(data: bytes, source: str) -> bytes:
    try:
        return gzip.decompress(data)
    except EOFError as e:
        raise CorruptFileError(
            f"{source}: the gzip stream is truncated ({e}); the file is incomplete, replace it with a "
            f"good copy"
        ) from e
    except (OSError, zlib.error) as e:
        raise CorruptFileError(
            f"{source}: the gzip data is damaged ({e}); replace the file with a good copy"
        ) from e


def _decode_idx(data: bytes, source: str) -> np.ndarray:
    """Parse IDX bytes (already decompressed); returns a read-only view on ``data``, file byte order."""
    if len(data) < 4:
        raise IDXFormatError(f"{source}: {len(data)} bytes is too short for an IDX header (4 bytes or more)")
    if data[0] != 0 or data[1] != 0:
        raise IDXFormatError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()}; an IDX file starts with two zero bytes, a "
            f"dtype code and the number of dimensions (e.g. 0x00000803 for MNIST images)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise IDXFormatError(f"{source}: unknown IDX dtype code 0x{code:02X}; the format defines {known}")
    if ndim == 0:
        raise IDXFormatError(f"{source}: the IDX header declares 0 dimensions; at least 1 is required")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(
            f"{source}: the header declares {ndim} dimensions, which needs {header} bytes, but the file "
            f"holds only {len(data)} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow for absurd headers
    expected = count * dtype.itemsize
    got = len(data) - header
    if got != expected:
        raise IDXFormatError(
            f"{source}: the header declares dims {dims} of {dtype.name} ({expected} payload bytes) but the "
            f"payload holds {got} bytes; the file is truncated or not what its header claims"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise DatasetNotFoundError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise DatasetNotFoundError(f"{path}: is a folder, not a file") from e


def _payload(data: bytes, path: Path) -> bytes:
    """Decompress if ``data`` is gzip; a ``.gz`` name that does not hold gzip data is corrupt."""
    if data[:2] == _GZIP_MAGIC:
        return _decompress(data, str(path))
    if path.name.endswith(".gz"):
        raise CorruptFileError(
            f"{path}: named .gz but is not gzip data (starts with 0x{data[:4].hex()}); replace it with a "
            f"good copy, or drop the .gz suffix if it is an uncompressed IDX file"
        )
    return data


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, checking its structure.

    No checksum is checked here, so any well-formed IDX file can be read; :func:`load_mnist`
    verifies checksums before it parses.

    Parameters
    ----------
    path : str or path-like
        The file. Gzip data is recognised by its magic bytes; a name ending in ``.gz`` must hold gzip data.

    Returns
    -------
    array : ndarray, shape as in the header, dtype as in the header
        A fresh, writeable array in native byte order (uint8, int8, int16, int32, float32 or float64).

    Raises
    ------
    DatasetNotFoundError
        ``path`` does not exist.
    CorruptFileError
        The gzip stream is truncated or damaged, or a ``.gz`` file is not gzip.
    IDXFormatError
        Bad magic number, unknown dtype code, or header dimensions that do not match the payload length.
    """
    path = Path(path)
    arr = _decode_idx(_payload(_read_bytes(path), path), str(path))
    return arr.astype(arr.dtype.newbyteorder("="))  # copies: writeable, native order


# --------------------------------------------------------------------------------------------------------
# Where the data lives


def _absolute(p: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(Path(p).expanduser()))


def cache_dir() -> Path:
    """User cache folder for downloads: ``$XDG_CACHE_HOME/refdns``, else ``~/.cache/refdns``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG base-directory spec requires.

    Returns
    -------
    folder : Path
        Absolute; not created here.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return _absolute(base / "refdns")


def _labelled_dirs(data_dir: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ConfigError(f"data_dir={data_dir!r} must be a path (str or os.PathLike) or None")
    out: list[tuple[str, Path]] = []
    if data_dir is not None and os.fspath(data_dir) != "":
        out.append(("data_dir argument / --data-dir", _absolute(data_dir)))
    env = os.environ.get("REFDNS_DATA", "")
    if env:
        out.append(("REFDNS_DATA", _absolute(env)))
    out.append(("user cache", cache_dir()))
    seen: set[Path] = set()
    unique = []
    for label, d in out:
        if d not in seen:
            seen.add(d)
            unique.append((label, d))
    return unique


def search_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders searched for dataset files, in order, without duplicates.

    Parameters
    ----------
    data_dir : str or path-like, optional
        The ``data_dir`` argument (CLI ``--data-dir``); searched first when given.

    Returns
    -------
    folders : list of Path
        ``data_dir``, then ``$REFDNS_DATA`` (when set and non-empty), then :func:`cache_dir`.
    """
    return [d for _, d in _labelled_dirs(data_dir)]


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data folder that takes precedence: ``data_dir``, else ``$REFDNS_DATA``, else :func:`cache_dir`.

    Files are looked up in every folder of :func:`search_dirs`; this is the first of them.

    Parameters
    ----------
    data_dir : str or path-like, optional
        The ``data_dir`` argument (CLI ``--data-dir``).

    Returns
    -------
    folder : Path
        Absolute, with ``~`` expanded; it need not exist.
    """
    return search_dirs(data_dir)[0]


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:  # e.g. a folder we may not list; treat as absent, the error message names it
        return False


def _candidates(folder: Path, dataset: str, split: str, kind: str) -> list[Path]:
    gz, raw = file_name(split, kind), file_name(split, kind, compressed=False)
    return [folder / dataset / gz, folder / dataset / raw, folder / gz, folder / raw]


def _looked_in(dataset: str, split: str, kind: str, data_dir) -> str:
    lines = [
        f"No copy of {dataset} {split} {kind} ({file_name(split, kind)!r} or the uncompressed "
        f"{file_name(split, kind, compressed=False)!r}) was found. Looked in:"
    ]
    for label, folder in _labelled_dirs(data_dir):
        state = "" if _is_dir(folder) else " (folder does not exist)"
        lines.append(f"  {label}: {folder}{state}")
        lines.extend(f"    {c}" for c in _candidates(folder, dataset, split, kind))
    return "\n".join(lines)


def locate(dataset: str, split: str, kind: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find a dataset file without reading or downloading it.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    split : {"train", "test"}
    kind : {"images", "labels"}
    data_dir : str or path-like, optional
        Searched first; then ``$REFDNS_DATA``, then :func:`cache_dir`.

    Returns
    -------
    path : Path
        The first existing file among, for each folder of :func:`search_dirs`:
        ``<dir>/<dataset>/<name>.gz``, ``<dir>/<dataset>/<name>``, ``<dir>/<name>.gz``, ``<dir>/<name>``.

    Raises
    ------
    ConfigError
        Unknown ``dataset``, ``split`` or ``kind``.
    DatasetNotFoundError
        No copy anywhere; the message lists every path tried and how to fix it.
    """
    _check_choice("dataset", dataset, DATASETS)
    _check_choice("split", split, SPLITS)
    _check_choice("kind", kind, KINDS)
    for folder in search_dirs(data_dir):
        for c in _candidates(folder, dataset, split, kind):
            if _is_file(c):
                return c
    raise DatasetNotFoundError(
        f"{_looked_in(dataset, split, kind, data_dir)}\nFix: {_HOW_TO_FIX}, or allow download "
        f"(download=True) to fetch it into {cache_dir() / dataset}."
    )


# --------------------------------------------------------------------------------------------------------
# Checksums


def _check_sha256(data: bytes, path: Path, dataset: str) -> None:
    sums = SHA256[dataset]
    if path.name not in sums:
        raise DataError(
            f"{path}: no published checksum for a file of this name in {dataset}; expected one of "
            f"{', '.join(sorted(sums))}"
        )
    expected = sums[path.name]
    got = hashlib.sha256(data).hexdigest()
    if got == expected:
        return
    hint = ""
    for other_ds, other in SHA256.items():
        for other_name, digest in other.items():
            if digest == got:
                hint = f" This file is {other_ds}'s {other_name!r}, so it is in the wrong place."
    raise ChecksumError(
        f"{path}: SHA-256 mismatch for {dataset} {path.name!r}: expected {expected}, got {got}.{hint} "
        f"The file was left untouched; replace it with a good copy (or delete it to let refdns download it "
        f"again). Published checksums are listed in data/README.md."
    )


# --------------------------------------------------------------------------------------------------------
# Download


def resolve_mirrors(dataset: str, mirrors: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """Base URLs to download ``dataset`` from, in the order they are tried.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    mirrors : str or sequence of str, optional
        Base URLs (http or https); a str is split on commas. Default: the ``REFDNS_MIRRORS``
        environment variable (comma-separated) when set and non-empty, else :data:`DEFAULT_MIRRORS`.

    Returns
    -------
    urls : tuple of str
        Each ends with ``/``; a file's URL is ``base + file name``.
    """
    _check_choice("dataset", dataset, DATASETS)
    source = "mirrors"
    if mirrors is None:
        env = os.environ.get("REFDNS_MIRRORS", "")
        if not env.strip():
            return DEFAULT_MIRRORS[dataset]
        mirrors, source = env, "REFDNS_MIRRORS"
    if isinstance(mirrors, str):
        mirrors = mirrors.split(",")
    if not isinstance(mirrors, Sequence):
        raise ConfigError(f"mirrors={mirrors!r} must be a str, a sequence of str, or None")
    urls = []
    for m in mirrors:
        if not isinstance(m, str):
            raise ConfigError(f"{source} entry {m!r} must be a str base URL")
        m = m.strip()
        if not m:
            continue
        if urllib.parse.urlsplit(m).scheme not in ("http", "https"):
            raise ConfigError(
                f"{source} entry {m!r} must be an http:// or https:// base URL; for a local folder set "
                f"REFDNS_DATA or --data-dir instead"
            )
        urls.append(m if m.endswith("/") else m + "/")
    if not urls:
        raise ConfigError(f"{source}={mirrors!r} holds no base URL; give at least one, or leave it unset")
    return tuple(urls)


def _download_one(url: str, final: Path, expected: str, max_bytes: int, timeout: float, progress: bool):
    """Fetch ``url`` into ``final`` atomically; returns None on success, else the reason as a str."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        req = urllib.request.Request(url, headers={"User-Agent": f"refdns/{__version__}"})
        with (
            os.fdopen(fd, "wb") as f,
            urllib.request.urlopen(req, timeout=timeout) as resp,
        ):
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                return f"server announces {total} bytes, the published file has {max_bytes}"
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=final.name, disable=not progress, leave=False
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        return f"received more than the published {max_bytes} bytes"
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
            if total is not None and size != total:
                return f"incomplete: received {size} of {total} bytes"
            got = h.hexdigest()
            if got != expected:
                return f"SHA-256 mismatch ({size} bytes): expected {expected}, got {got}"
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a dataset file is public data
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        with contextlib.suppress(OSError):  # the checked file is in place; syncing its folder is best effort
            fsync_dir(final.parent)
        return None
    except urllib.error.HTTPError as e:
        e.close()
        return f"HTTP {e.code} {e.reason}"
    except urllib.error.URLError as e:
        return f"cannot connect: {e.reason}"
    except (OSError, HTTPException, ValueError) as e:  # timeouts, resets, IncompleteRead, bad URLs
        return f"{type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # gone already after a successful os.replace


def fetch(
    dataset: str,
    split: str,
    kind: str,
    *,
    mirrors: str | Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> Path:
    """Download one ``.gz`` file into ``cache_dir()/<dataset>/``, verified and atomically.

    The file is written to a temporary file in the same folder, its SHA-256 checked, fsynced, then
    renamed to its final name with ``os.replace``. A bad download is deleted and never appears under the
    final name; the next mirror is then tried.

    Parameters
    ----------
    dataset : {"mnist", "fashion-mnist"}
    split : {"train", "test"}
    kind : {"images", "labels"}
    mirrors : str or sequence of str, optional
        Base URLs; see :func:`resolve_mirrors` (default ``REFDNS_MIRRORS``, then :data:`DEFAULT_MIRRORS`).
    timeout : float
        Seconds to wait for a connection or for data, per mirror.
    progress : bool, optional
        Show a tqdm progress bar on stderr; default: only when stderr is a terminal.

    Returns
    -------
    path : Path
        The verified file in the cache folder.

    Raises
    ------
    ConfigError
        Unknown ``dataset``/``split``/``kind``, bad ``mirrors`` or ``timeout``.
    DownloadError
        Every mirror failed; the message lists each URL with its reason and how to fix it.
    """
    _check_choice("dataset", dataset, DATASETS)
    name = file_name(split, kind)
    urls = resolve_mirrors(dataset, mirrors)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"timeout={timeout!r} must be a positive number of seconds")
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    folder = cache_dir() / dataset
    final = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot create the download folder {folder} ({e}). Set XDG_CACHE_HOME to a writable folder, "
            f"or {_HOW_TO_FIX}."
        ) from e
    failures = []
    for base in urls:
        url = base + name
        reason = _download_one(
            url, final, SHA256[dataset][name], _GZ_SIZES[dataset][name], float(timeout), progress
        )
        if reason is None:
            return final
        failures.append(f"  {url}: {reason}")
    raise DownloadError(
        f"Could not download {dataset} {name!r}; every mirror failed:\n"
        + "\n".join(failures)
        + f"\nFix: {_HOW_TO_FIX}; or set REFDNS_MIRRORS to working base URLs (comma-separated)."
    )


# --------------------------------------------------------------------------------------------------------
# Loading


def _obtain(dataset, split, kind, data_dir, download, mirrors, timeout) -> Path:
    try:
        return locate(dataset, split, kind, data_dir)
    except DatasetNotFoundError:
        if not download:
            raise
        looked = _looked_in(dataset, split, kind, data_dir)
    try:
        return fetch(dataset, split, kind, mirrors=mirrors, timeout=timeout)
    except DownloadError as e:
        raise DownloadError(f"{looked}\n{e}") from None


def _file_key(path: Path) -> tuple[str, int, int, int, int]:
    st = path.stat()
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _load_part(path: Path, dataset: str, verify: bool) -> np.ndarray:
    data = _read_bytes(path)
    if verify:
        _check_sha256(data, path, dataset)
    return _decode_idx(_payload(data, path), str(path))


@functools.lru_cache(maxsize=2)
def _load_cached(images_key, labels_key, dataset: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = Path(images_key[0]), Path(labels_key[0])
    images = _load_part(images_path, dataset, verify)  # (N, 28, 28) uint8
    labels = _load_part(labels_path, dataset, verify)  # (N,) uint8
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise IDXFormatError(
            f"{images_path}: holds {images.dtype.name} data of shape {images.shape}; {dataset} images are "
            f"ubyte (N, 28, 28)"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXFormatError(
            f"{labels_path}: holds {labels.dtype.name} data of shape {labels.shape}; {dataset} labels are "
            f"ubyte (N,)"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{dataset}: {images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the two files must come from the same split"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {int(labels.max())} is out of range; labels are 0..9")
    n = images.shape[0]
    x = images.reshape(n, 1, 28, 28).astype(np.float32)  # (N, 1, 28, 28)
    x *= PIXEL_SCALE
    y = labels.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def clear_cache() -> None:
    """Forget the arrays :func:`load_mnist` keeps in memory."""
    _load_cached.cache_clear()


def load_mnist(
    split: str = "train",
    *,
    dataset: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    verify: bool = True,
    mirrors: str | Sequence[str] | None = None,
    timeout: float = 30.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST or Fashion-MNIST as Caffe does: NCHW float32 pixels scaled by 1/256.

    Parameters
    ----------
    split : {"train", "test"}
        60000 training or 10000 test examples.
    dataset : {"mnist", "fashion-mnist"}
    data_dir : str or path-like, optional
        Folder searched first (CLI ``--data-dir``); then ``$REFDNS_DATA``, then :func:`cache_dir`.
    download : bool
        Fetch missing files from the mirrors into :func:`cache_dir` (see :func:`fetch`).
    verify : bool
        Check each file's SHA-256 before reading it. Turn off only to read files that are not the
        published ones; the structural checks of :func:`read_idx` still apply.
    mirrors : str or sequence of str, optional
        Download base URLs; see :func:`resolve_mirrors`.
    timeout : float
        Seconds per mirror for a download.

    Returns
    -------
    x : ndarray, shape (N, 1, 28, 28), float32
        Pixels times 0.00390625 (1/256, Caffe's ``scale``), so values lie in [0, 255/256].
    y : ndarray, shape (N,), int64
        Class labels 0..9.

    Raises
    ------
    ConfigError
        Unknown ``split`` or ``dataset``.
    DatasetNotFoundError
        A file is missing and ``download`` is False; the message lists every path tried.
    DownloadError
        A file is missing and every mirror failed.
    ChecksumError
        A file's SHA-256 differs from the published one (the file is left untouched).
    CorruptFileError, IDXFormatError
        A file is truncated, damaged or malformed (reached with ``verify=False``).
    DataError
        The images and labels files disagree on the number of examples.

    Notes
    -----
    The result is cached in memory (the last two datasets/splits, keyed on each file's path, inode,
    size and modification time), so repeated calls are free and return the same arrays. To make that
    safe, both arrays are read-only (``writeable=False``); take ``x.copy()`` to modify them.
    :func:`clear_cache` frees the memory.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("dataset", dataset, DATASETS)
    images = _obtain(dataset, split, "images", data_dir, download, mirrors, timeout)
    labels = _obtain(dataset, split, "labels", data_dir, download, mirrors, timeout)
    return _load_cached(_file_key(images), _file_key(labels), dataset, bool(verify))
