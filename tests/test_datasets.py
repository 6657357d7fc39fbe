"""Tests for refdns.datasets: IDX parsing, finding data, checksums, downloads and the MNIST loader.

Real data comes from ``$REFDNS_DATA`` (default: the shared data folder beside the repository, where CI
clones it). Crafted bad files and download targets live in pytest's tmp_path; downloads are served by a
local HTTP server on 127.0.0.1, never the internet, and the user cache is redirected to tmp_path.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refdns import datasets
from refdns.errors import (
    ChecksumError,
    ConfigError,
    CorruptFileError,
    DataError,
    DatasetNotFoundError,
    DownloadError,
    IDXFormatError,
)

SHARED = Path(os.environ.get("REFDNS_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_shared = pytest.mark.skipif(
    not (SHARED / "mnist").is_dir() or not (SHARED / "fashion-mnist").is_dir(),
    reason=f"MNIST/Fashion-MNIST not found in {SHARED}; set REFDNS_DATA to the shared data folder",
)

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


# ---------------------------------------------------------------------------------------------------------
# Helpers and fixtures


def idx_bytes(arr: np.ndarray, *, code: int | None = None, dims: tuple[int, ...] | None = None) -> bytes:
    """IDX bytes for ``arr``, written straight from the spec; ``code``/``dims`` override the header."""
    arr = np.asarray(arr)
    code = IDX_CODES[arr.dtype] if code is None else code
    dims = arr.shape if dims is None else dims
    header = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (temp files included), relative, sorted."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def flip(data: bytes) -> bytes:
    """The same length with a few bytes in the middle inverted."""
    b = bytearray(data)
    mid = len(b) // 2
    for i in range(mid, mid + 4):
        b[i] ^= 0xFF
    return bytes(b)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real home, cache, data folder, mirror list or proxy: returns the redirected cache folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("REFDNS_DATA", raising=False)
    monkeypatch.delenv("REFDNS_MIRRORS", raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    return tmp_path / "xdg" / "refdns"


@pytest.fixture
def shared_env(monkeypatch):
    monkeypatch.setenv("REFDNS_DATA", str(SHARED))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; under /liar/ it announces 1000 bytes more than it sends, then hangs up; under
    /nolength/ it sends no Content-Length (the client reads until the connection closes)."""

    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.server.hits.append(self.path)
        if self.path.startswith(("/liar/", "/nolength/")):
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            if self.path.startswith("/liar/"):
                self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root))
    )
    httpd.hits = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    counter = iter(range(10**6))

    def mirror(variant: str, dataset: str = "mnist", names=()) -> str:
        """Publish ``names`` from the shared data as ``variant`` (good, corrupt, truncated, padded,
        liar, nolength, empty) under a fresh folder; returns its base URL."""
        sub = f"{variant}/{next(counter)}"
        folder = root / sub
        folder.mkdir(parents=True)
        for name in names:
            data = (SHARED / dataset / name).read_bytes()
            data = {
                "good": data,
                "liar": data[:-2000],  # announced size stays within the published size
                "nolength": data + b"\0" * 64,
                "corrupt": flip(data),
                "truncated": data[: len(data) // 2],
                "padded": data + b"\0" * 64,
            }[variant]
            (folder / name).write_bytes(data)
        return f"http://127.0.0.1:{httpd.server_address[1]}/{sub}/"

    yield SimpleNamespace(mirror=mirror, hits=httpd.hits)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


LABELS = "t10k-labels-idx1-ubyte.gz"
IMAGES = "t10k-images-idx3-ubyte.gz"


# ---------------------------------------------------------------------------------------------------------
# read_idx: structure


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_three_images(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    data = idx_bytes(imgs)
    assert data[:4] == b"\x00\x00\x08\x03"
    path = write(tmp_path / ("x.gz" if gz else "x"), gzip.compress(data) if gz else data)
    out = datasets.read_idx(path)
    assert out.shape == (3, 28, 28)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, imgs)
    assert out.flags.writeable
    out[0, 0, 0] ^= 1  # the caller owns the array


def test_read_idx_is_big_endian(tmp_path):
    raw = b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + b"\x01\x02\x03\x04" + b"\xff\xff\xff\xfe"
    out = datasets.read_idx(write(tmp_path / "x", raw))
    np.testing.assert_array_equal(out, [0x01020304, -2])
    assert out.dtype == np.int32
    assert out.dtype.isnative


@given(
    arr=hnp.arrays(
        dtype=st.sampled_from(sorted(IDX_CODES, key=str)),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    ),
    gz=st.booleans(),
)
def test_read_idx_round_trips_every_dtype(arr, gz):
    data = idx_bytes(arr)
    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d) / ("a.gz" if gz else "a"), gzip.compress(data) if gz else data)
        out = datasets.read_idx(path)
    assert out.dtype == arr.dtype and out.dtype.isnative
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "dtype code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 3), "3 dimensions"),
        (idx_bytes(np.zeros((3, 28, 28), np.uint8), dims=(4, 28, 28)), r"\(4, 28, 28\).*2352"),
        (idx_bytes(np.zeros((3, 28, 28), np.uint8), dims=(2, 28, 28)), "payload holds 2352 bytes"),
        (idx_bytes(np.zeros(5, np.int32))[:-1], "19 bytes"),
    ],
    ids=["bad-magic", "bad-dtype", "no-dims", "short", "header-cut", "dims>payload", "dims<payload", "odd"],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_structural_errors(tmp_path, data, match, gz):
    path = write(tmp_path / ("bad.gz" if gz else "bad"), gzip.compress(data) if gz else data)
    with pytest.raises(IDXFormatError, match=match) as info:
        datasets.read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_read_idx_truncated_gz(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)))
    path = write(tmp_path / "x.gz", good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        datasets.read_idx(path)


@pytest.mark.parametrize(
    "data",
    [
        b"\x1f\x8b" + bytes(range(256)) * 4,  # gzip magic, then garbage
        b"this is not gzip at all",  # .gz name, no gzip magic
        b"",
    ],
    ids=["garbage-after-magic", "not-gzip", "empty"],
)
def test_read_idx_garbage_gz(tmp_path, data):
    with pytest.raises(CorruptFileError):
        datasets.read_idx(write(tmp_path / "x.gz", data))


def test_read_idx_bad_gzip_crc(tmp_path):
    good = bytearray(gzip.compress(idx_bytes(np.ones((3, 28, 28), np.uint8))))
    good[-8] ^= 0xFF  # CRC32 in the trailer
    with pytest.raises(CorruptFileError, match="damaged"):
        datasets.read_idx(write(tmp_path / "x.gz", bytes(good)))


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no such file") as info:
        datasets.read_idx(tmp_path / "nope.gz")
    assert isinstance(info.value, FileNotFoundError)


# ---------------------------------------------------------------------------------------------------------
# Arguments, constants


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"split": "val"}, "split"),
        ({"split": None}, "split"),
        ({"dataset": "cifar10"}, "dataset"),
        ({"dataset": "MNIST"}, "dataset"),
    ],
)
def test_load_mnist_rejects_unknown_arguments(kwargs, name):
    with pytest.raises(ConfigError, match=name) as info:
        datasets.load_mnist(**kwargs, download=False)
    assert isinstance(info.value, ValueError)
    allowed = datasets.SPLITS if name == "split" else datasets.DATASETS
    for a in allowed:
        assert repr(a) in str(info.value)


def test_locate_rejects_unknown_kind():
    with pytest.raises(ConfigError, match=r"kind='pixels'.*'images', 'labels'"):
        datasets.locate("mnist", "train", "pixels")


def test_file_names():
    assert datasets.file_name("train", "images") == "train-images-idx3-ubyte.gz"
    assert datasets.file_name("test", "labels", compressed=False) == "t10k-labels-idx1-ubyte"


@needs_shared
@pytest.mark.parametrize("dataset", datasets.DATASETS)
def test_embedded_checksums_match_published_and_decompressed(dataset):
    published = {}
    for line in (SHARED / dataset / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        published[name] = digest
    embedded = datasets.SHA256[dataset]
    assert {k: v for k, v in embedded.items() if k.endswith(".gz")} == published
    for name in published:
        raw = gzip.decompress((SHARED / dataset / name).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == embedded[name[: -len(".gz")]]


# ---------------------------------------------------------------------------------------------------------
# Finding data


def test_resolve_data_dir_order(tmp_path, monkeypatch, isolated):
    assert datasets.resolve_data_dir() == isolated
    monkeypatch.setenv("REFDNS_DATA", str(tmp_path / "env"))
    assert datasets.resolve_data_dir() == tmp_path / "env"
    assert datasets.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert datasets.search_dirs(tmp_path / "arg") == [tmp_path / "arg", tmp_path / "env", isolated]
    # the same folder twice is searched once
    assert datasets.search_dirs(str(tmp_path / "env")) == [tmp_path / "env", isolated]


def test_resolve_data_dir_expands_home_and_ignores_empty_env(tmp_path, monkeypatch, isolated):
    monkeypatch.setenv("REFDNS_DATA", "")
    assert datasets.resolve_data_dir() == isolated
    assert datasets.resolve_data_dir("~/mydata") == tmp_path / "home" / "mydata"


def test_cache_dir_without_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert datasets.cache_dir() == tmp_path / "home" / ".cache" / "refdns"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # XDG spec: relative values are ignored
    assert datasets.cache_dir() == tmp_path / "home" / ".cache" / "refdns"


@needs_shared
def test_locate_search_order(tmp_path, monkeypatch, isolated):
    src = SHARED / "mnist" / LABELS
    arg, env = tmp_path / "arg", tmp_path / "env"
    for folder in (arg, env, isolated):
        write(folder / "mnist" / LABELS, src.read_bytes())
    monkeypatch.setenv("REFDNS_DATA", str(env))
    assert datasets.locate("mnist", "test", "labels", arg) == arg / "mnist" / LABELS
    (arg / "mnist" / LABELS).unlink()
    assert datasets.locate("mnist", "test", "labels", arg) == env / "mnist" / LABELS
    (env / "mnist" / LABELS).unlink()
    assert datasets.locate("mnist", "test", "labels", arg) == isolated / "mnist" / LABELS


@needs_shared
def test_locate_accepts_flat_layout_and_raw_names(tmp_path):
    gz = (SHARED / "mnist" / LABELS).read_bytes()
    raw_name = LABELS[: -len(".gz")]
    write(tmp_path / raw_name, gzip.decompress(gz))
    assert datasets.locate("mnist", "test", "labels", tmp_path) == tmp_path / raw_name
    write(tmp_path / LABELS, gz)
    assert datasets.locate("mnist", "test", "labels", tmp_path) == tmp_path / LABELS
    write(tmp_path / "mnist" / raw_name, gzip.decompress(gz))
    assert datasets.locate("mnist", "test", "labels", tmp_path) == tmp_path / "mnist" / raw_name
    write(tmp_path / "mnist" / LABELS, gz)
    assert datasets.locate("mnist", "test", "labels", tmp_path) == tmp_path / "mnist" / LABELS


def test_missing_file_names_every_place_and_the_fix(tmp_path, monkeypatch, isolated):
    monkeypatch.setenv("REFDNS_DATA", str(tmp_path / "env"))
    (tmp_path / "arg").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        datasets.load_mnist("test", data_dir=tmp_path / "arg", download=False)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for folder in (tmp_path / "arg", tmp_path / "env", isolated):
        assert str(folder / "mnist" / IMAGES) in msg
        assert str(folder / "mnist" / IMAGES[: -len(".gz")]) in msg
        assert str(folder / IMAGES) in msg
    assert "folder does not exist" in msg  # env and cache folders were never created
    for hint in ("--data-dir", "REFDNS_DATA", "download=True"):
        assert hint in msg
    assert files_under(tmp_path / "arg") == []


# ---------------------------------------------------------------------------------------------------------
# Checksums and bad files reached through the loader


@needs_shared
def test_wrong_checksum_names_path_expected_and_got(tmp_path):
    bad = flip((SHARED / "mnist" / LABELS).read_bytes())
    write(tmp_path / "mnist" / IMAGES, (SHARED / "mnist" / IMAGES).read_bytes())
    path = write(tmp_path / "mnist" / LABELS, bad)
    with pytest.raises(ChecksumError) as info:
        datasets.load_mnist("test", data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert str(path) in msg
    assert datasets.SHA256["mnist"][LABELS] in msg
    assert hashlib.sha256(bad).hexdigest() in msg


@needs_shared
def test_raw_copy_is_verified_too(tmp_path):
    raw = gzip.decompress((SHARED / "mnist" / LABELS).read_bytes())
    write(tmp_path / "mnist" / IMAGES, (SHARED / "mnist" / IMAGES).read_bytes())
    write(tmp_path / "mnist" / LABELS[:-3], flip(raw))
    with pytest.raises(ChecksumError, match=datasets.SHA256["mnist"][LABELS[:-3]]):
        datasets.load_mnist("test", data_dir=tmp_path, download=False)


@needs_shared
def test_raw_copies_load_like_the_gz_files(tmp_path):
    for name in (IMAGES, LABELS):
        write(tmp_path / "mnist" / name[:-3], gzip.decompress((SHARED / "mnist" / name).read_bytes()))
    x_raw, y_raw = datasets.load_mnist("test", data_dir=tmp_path, download=False)
    x_gz, y_gz = datasets.load_mnist("test", data_dir=SHARED, download=False)
    np.testing.assert_array_equal(x_raw, x_gz)
    np.testing.assert_array_equal(y_raw, y_gz)


@needs_shared
def test_checksum_error_says_when_a_file_belongs_to_the_other_dataset(tmp_path):
    write(tmp_path / "mnist" / IMAGES, (SHARED / "mnist" / IMAGES).read_bytes())
    write(tmp_path / "mnist" / LABELS, (SHARED / "fashion-mnist" / LABELS).read_bytes())
    with pytest.raises(ChecksumError, match="fashion-mnist's 't10k-labels-idx1-ubyte.gz'"):
        datasets.load_mnist("test", data_dir=tmp_path, download=False)


@needs_shared
def test_corrupt_file_in_download_target_is_never_overwritten(server, isolated):
    """The bad copy sits exactly where a download would land: the loader must refuse, not replace it."""
    bad = flip((SHARED / "mnist" / LABELS).read_bytes())
    target = write(isolated / "mnist" / LABELS, bad)
    before = target.stat()
    url = server.mirror("good", names=[IMAGES, LABELS])
    hits = len(server.hits)
    with pytest.raises(ChecksumError):
        datasets.load_mnist("test", download=True, mirrors=[url])
    assert target.read_bytes() == bad
    assert (target.stat().st_ino, target.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not any(h.endswith(LABELS) for h in server.hits[hits:])  # no attempt to fetch a replacement
    assert files_under(isolated / "mnist") == [IMAGES, LABELS]  # images were missing, so downloaded


def _crafted(tmp_path, images, labels, *, gz=True):
    """Write crafted test-split files in the flat layout; returns the folder."""
    suffix = ".gz" if gz else ""
    enc = gzip.compress if gz else bytes
    write(tmp_path / f"t10k-images-idx3-ubyte{suffix}", enc(images))
    write(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", enc(labels))
    return tmp_path


def test_loader_without_verify_reads_crafted_files(tmp_path):
    imgs = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    folder = _crafted(tmp_path, idx_bytes(imgs), idx_bytes(np.array([1, 2, 9], np.uint8)))
    with pytest.raises(ChecksumError):
        datasets.load_mnist("test", data_dir=folder, download=False)
    x, y = datasets.load_mnist("test", data_dir=folder, download=False, verify=False)
    assert x.shape == (3, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], imgs.astype(np.float32) / 256)
    np.testing.assert_array_equal(y, [1, 2, 9])
    assert y.dtype == np.int64


IMG3 = idx_bytes(np.zeros((3, 28, 28), np.uint8))  # three blank images
LAB3 = idx_bytes(np.zeros(3, np.uint8))


@pytest.mark.parametrize(
    ("images", "labels", "error", "match"),
    [
        (IMG3, idx_bytes(np.zeros(2, np.uint8)), DataError, "3 images but .* 2 labels"),
        (idx_bytes(np.zeros((3, 28, 27), np.uint8)), LAB3, IDXFormatError, re.escape("(3, 28, 27)")),
        (idx_bytes(np.zeros((3, 28, 28), np.int32)), LAB3, IDXFormatError, "int32"),
        (IMG3, idx_bytes(np.zeros((3, 1), np.uint8)), IDXFormatError, re.escape("(3, 1)")),
        (IMG3, idx_bytes(np.array([0, 10, 1], np.uint8)), DataError, "label 10 is out of range"),
        (b"\x00\x01" + IMG3[2:], LAB3, IDXFormatError, "magic"),
        (idx_bytes(np.zeros((3, 28, 28), np.uint8), dims=(4, 28, 28)), LAB3, IDXFormatError, "payload"),
    ],
    ids=["count-mismatch", "bad-dims", "bad-dtype", "labels-2d", "label-range", "bad-magic", "dims>payload"],
)
def test_loader_structural_errors(tmp_path, images, labels, error, match):
    folder = _crafted(tmp_path, images, labels, gz=False)
    with pytest.raises(error, match=match):
        datasets.load_mnist("test", data_dir=folder, download=False, verify=False)


def test_loader_reports_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    write(tmp_path / IMAGES, good[:-20])
    write(tmp_path / LABELS, gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(CorruptFileError, match="truncated"):
        datasets.load_mnist("test", data_dir=tmp_path, download=False, verify=False)
    assert (tmp_path / IMAGES).read_bytes() == good[:-20]


# ---------------------------------------------------------------------------------------------------------
# Downloads (local HTTP server)


def test_resolve_mirrors(monkeypatch):
    assert datasets.resolve_mirrors("mnist") == (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )
    assert datasets.resolve_mirrors("fashion-mnist") == (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    )
    monkeypatch.setenv("REFDNS_MIRRORS", "http://a.example/x, https://b.example/y/")
    assert datasets.resolve_mirrors("mnist") == ("http://a.example/x/", "https://b.example/y/")
    assert datasets.resolve_mirrors("mnist", ["http://c.example"]) == ("http://c.example/",)
    assert datasets.resolve_mirrors("mnist", "http://d.example,http://e.example") == (
        "http://d.example/",
        "http://e.example/",
    )
    with pytest.raises(ConfigError, match="http"):
        datasets.resolve_mirrors("mnist", ["file:///etc/"])
    with pytest.raises(ConfigError, match="no base URL"):
        datasets.resolve_mirrors("mnist", [])
    monkeypatch.setenv("REFDNS_MIRRORS", "ftp://x/")
    with pytest.raises(ConfigError, match="REFDNS_MIRRORS"):
        datasets.resolve_mirrors("mnist")


@needs_shared
@pytest.mark.parametrize("progress", [False, True])
def test_good_download_lands_in_cache(server, isolated, progress):
    url = server.mirror("good", names=[LABELS])
    path = datasets.fetch("mnist", "test", "labels", mirrors=[url], progress=progress)
    assert path == isolated / "mnist" / LABELS
    assert sha256(path) == datasets.SHA256["mnist"][LABELS]
    assert files_under(isolated) == [f"mnist/{LABELS}"]  # no temp file left
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    assert datasets.locate("mnist", "test", "labels") == path
    np.testing.assert_array_equal(datasets.read_idx(path), datasets.read_idx(SHARED / "mnist" / LABELS))


@needs_shared
def test_load_mnist_downloads_missing_files_then_uses_the_cache(server, isolated):
    url = server.mirror("good", names=[IMAGES, LABELS])
    x, y = datasets.load_mnist("test", mirrors=url)
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert files_under(isolated) == [f"mnist/{IMAGES}", f"mnist/{LABELS}"]
    hits = len(server.hits)
    x2, y2 = datasets.load_mnist("test", download=False)
    assert len(server.hits) == hits
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


@needs_shared
def test_fashion_download_uses_fashion_checksums(server, isolated):
    url = server.mirror("good", dataset="fashion-mnist", names=[LABELS])
    path = datasets.fetch("fashion-mnist", "test", "labels", mirrors=[url])
    assert path == isolated / "fashion-mnist" / LABELS
    # MNIST's published file is not accepted from a mirror holding Fashion-MNIST's
    with pytest.raises(DownloadError, match="the published file has 4542"):
        datasets.fetch("mnist", "test", "labels", mirrors=[url])
    assert files_under(isolated) == [f"fashion-mnist/{LABELS}"]


@needs_shared
@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("corrupt", "SHA-256 mismatch"),
        ("truncated", "SHA-256 mismatch"),
        ("padded", "server announces 4606 bytes, the published file has 4542"),
        ("nolength", "received more than the published 4542 bytes"),
        ("liar", "incomplete: received 2542 of 3542 bytes"),
        ("empty", "HTTP 404"),
    ],
)
def test_bad_download_leaves_nothing_behind(server, isolated, variant, reason):
    url = server.mirror(variant, names=[] if variant == "empty" else [LABELS])
    with pytest.raises(DownloadError) as info:
        datasets.fetch("mnist", "test", "labels", mirrors=[url])
    msg = str(info.value)
    assert url + LABELS in msg and reason in msg
    assert "REFDNS_DATA" in msg and "--data-dir" in msg
    assert not (isolated / "mnist" / LABELS).exists()
    assert files_under(isolated) == []


@needs_shared
def test_next_mirror_is_tried_after_404_refused_and_corrupt(server, isolated):
    bad = [server.mirror("empty"), closed_port_url(), server.mirror("corrupt", names=[LABELS])]
    good = server.mirror("good", names=[LABELS])
    hits = len(server.hits)
    path = datasets.fetch("mnist", "test", "labels", mirrors=[*bad, good])
    assert sha256(path) == datasets.SHA256["mnist"][LABELS]
    tried = server.hits[hits:]
    assert [t.split("/")[1] for t in tried] == ["empty", "corrupt", "good"]
    assert files_under(isolated) == [f"mnist/{LABELS}"]


@needs_shared
def test_mirrors_from_env_and_keyword_wins(server, isolated, monkeypatch):
    monkeypatch.setenv("REFDNS_MIRRORS", server.mirror("empty"))
    with pytest.raises(DownloadError, match="HTTP 404"):
        datasets.fetch("mnist", "test", "labels")
    monkeypatch.setenv("REFDNS_MIRRORS", f"{server.mirror('empty')},{server.mirror('good', names=[LABELS])}")
    assert datasets.fetch("mnist", "test", "labels").is_file()
    (isolated / "mnist" / LABELS).unlink()
    monkeypatch.setenv("REFDNS_MIRRORS", server.mirror("empty"))
    assert datasets.fetch("mnist", "test", "labels", mirrors=server.mirror("good", names=[LABELS])).is_file()


def test_download_timeout_is_a_download_error(isolated):
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
        with pytest.raises(DownloadError, match="timed out"):
            datasets.fetch("mnist", "test", "labels", mirrors=[url], timeout=0.2)
    assert files_under(isolated) == []


def test_fetch_rejects_bad_timeout():
    with pytest.raises(ConfigError, match="timeout"):
        datasets.fetch("mnist", "test", "labels", mirrors="http://127.0.0.1:9/", timeout=0)


def test_load_mnist_download_failure_lists_mirrors_and_places(tmp_path, isolated):
    url = closed_port_url()
    with pytest.raises(DownloadError) as info:
        datasets.load_mnist("test", data_dir=tmp_path / "arg", mirrors=[url])
    msg = str(info.value)
    assert url + IMAGES in msg and "cannot connect" in msg
    assert str(tmp_path / "arg" / "mnist" / IMAGES) in msg
    assert str(isolated / "mnist" / IMAGES) in msg
    assert files_under(isolated) == []


# ---------------------------------------------------------------------------------------------------------
# Real data


@needs_shared
@pytest.mark.usefixtures("shared_env")
def test_mnist_train_from_shared_data():
    x, y = datasets.load_mnist("train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == np.float32(255 / 256)
    assert np.bincount(y, minlength=10).tolist() == MNIST_TRAIN_COUNTS


@needs_shared
@pytest.mark.usefixtures("shared_env")
def test_mnist_test_scaling_is_exactly_one_over_256():
    x, y = datasets.load_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.int64
    assert x.max() == np.float32(255 / 256)
    pixels = datasets.read_idx(SHARED / "mnist" / IMAGES)
    np.testing.assert_array_equal(x[:, 0] * np.float32(256), pixels.astype(np.float32))
    np.testing.assert_array_equal(y, datasets.read_idx(SHARED / "mnist" / LABELS))


@needs_shared
@pytest.mark.usefixtures("shared_env")
@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_fashion_mnist_from_shared_data(split, n):
    x, y = datasets.load_mnist(split, dataset="fashion-mnist")
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32
    assert x.max() == np.float32(255 / 256)
    assert np.bincount(y, minlength=10).tolist() == [n // 10] * 10


@needs_shared
@pytest.mark.usefixtures("shared_env")
def test_results_are_cached_and_read_only():
    x, y = datasets.load_mnist("test")
    x2, y2 = datasets.load_mnist("test")
    assert x2 is x and y2 is y
    assert not x.flags.writeable and not y.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        x[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        y[0] = 3
    datasets.clear_cache()
    x3, _ = datasets.load_mnist("test")
    assert x3 is not x
    np.testing.assert_array_equal(x3, x)


@needs_shared
def test_cache_notices_a_replaced_file(tmp_path):
    for name in (IMAGES, LABELS):
        shutil.copyfile(SHARED / "mnist" / name, tmp_path / name)
    datasets.load_mnist("test", data_dir=tmp_path, download=False)
    bad = write(tmp_path / "new.gz", flip((SHARED / "mnist" / LABELS).read_bytes()))
    os.replace(bad, tmp_path / LABELS)
    with pytest.raises(ChecksumError):
        datasets.load_mnist("test", data_dir=tmp_path, download=False)
