"""Atomic writes: a file appears under its final name complete, or not at all.

Every writer in refdns (checkpoints, traces, ``.npz`` exports, JSON figures, benchmark results) goes through
:func:`atomic_path`: the content is written to a temporary file in the destination's folder, flushed to disk,
renamed over the destination with ``os.replace`` (atomic on POSIX) and the folder entry itself fsynced. A
process killed at any moment leaves the previous file intact (plus, at worst, a stray ``.name.*.tmp``, which
the next write to the same path sweeps away).

* A destination that is a symbolic link is written *through*: the link stays and its target is replaced.
* The new file gets the mode an ordinary tool would give it: the existing file's mode when it replaces one,
  else ``0o666`` less the process umask (``mkstemp``'s private 0600 is not kept).

:func:`check_outputs` is what every command calls before any work starts, so that a run is never lost to an
output path that turns out to be unwritable, and no input is ever overwritten by an output.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from refdns.errors import ConfigError, OutputError


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sweep_stale_temporaries(path: Path) -> None:
    """Remove the ``.<name>.*.tmp`` files a killed writer of ``path`` left behind."""
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def check_outputs(outputs: dict[str, str | os.PathLike | None], *, inputs: dict[str, str | os.PathLike | None]
                  | None = None, force: bool = False) -> None:
    """Refuse, before any work, every output that would lose data or fail late.

    ``outputs`` and ``inputs`` map an option's name (``"--out"``) to its path (None: not given). Raises
    :class:`~refdns.errors.OutputError` naming the option when an output is empty, is the same file as an
    input or as another output, exists and is not a regular file, exists and ``force`` is False, or lies in a
    folder that cannot be written (checked by creating and removing a file there).
    """
    seen: dict[str, str] = {}
    for option, p in (inputs or {}).items():
        if p is not None and str(p):
            seen[os.path.realpath(p)] = f"the input {option} {p}"
    for option, p in outputs.items():
        if p is None:
            continue
        if not str(p):
            raise OutputError(f"{option}: the path is empty; give a file name")
        real = os.path.realpath(p)
        if real in seen:
            raise OutputError(f"{option} {p} is the same file as {seen[real]}; choose another output path")
        seen[real] = f"the output {option} {p}"
        target = Path(real)
        if target.exists() or target.is_symlink():
            if not target.is_file():
                kind = "a folder" if target.is_dir() else "not a regular file"
                raise OutputError(f"{option} {p} is {kind}; give the path of a file to write")
            if not force:
                raise OutputError(f"{option} {p} exists; pass --force to overwrite it, or choose another path")
        check_writable_folder(target.parent, option)


def check_writable_folder(folder: Path, option: str) -> None:
    """Raise OutputError unless files can be created in ``folder`` (or in the folders it would be made in)."""
    probe = Path(folder)
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{option}: {probe} is not a folder, so {folder} cannot be made")
    try:
        fd, name = tempfile.mkstemp(prefix=".refdns-probe.", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise OutputError(f"{option}: cannot write in {probe} ({e.strerror}); choose another folder") from None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path``, on failure it goes.

    Examples
    --------
    >>> with atomic_path("out.h5") as tmp:          # doctest: +SKIP
    ...     with h5py.File(tmp, "w") as f: ...
    """
    path = Path(os.path.realpath(path))  # through a symlink to its target
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    mode = path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~_umask()
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_figure(path: str | os.PathLike, fig, *, dpi: int = 100) -> Path:
    """Render a matplotlib figure to PNG in memory and write it atomically (``savefig`` on the path would
    leave a half-written file behind a crash)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return write_bytes(path, buf.getvalue())


def check_inputs(inputs: dict[str, str | os.PathLike | None]) -> None:
    """Raise :class:`~refdns.errors.ConfigError` naming the option whose input file is missing, has an empty
    name, or is not a regular file (a folder, a device)."""
    for option, p in inputs.items():
        if p is None:
            continue
        if not str(p):
            raise ConfigError(f"{option}: the path is empty; give an existing file")
        path = Path(p)
        if not path.exists():
            raise ConfigError(f"{option} {p} does not exist")
        if not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise ConfigError(f"{option} {p} is {kind}; give the path of a file")
