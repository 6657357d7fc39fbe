"""Traces are sealed like checkpoints: a damaged trace is refused by name before libhdf5 reads it (damaged
HDF5 metadata can make libhdf5 loop forever), while unsealed traces (older goldens, other implementations'
candidates) are still read."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest

from refdns import cli, golden
from refdns.checkpoint import SEAL_MAGIC
from refdns.errors import TraceError

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "golden"
GOLDEN = GOLDEN_DIR / "lenet-300-100-dns.h5"


def test_every_committed_golden_is_sealed():
    for path in sorted(GOLDEN_DIR.glob("*.h5")):
        assert path.read_bytes()[: len(SEAL_MAGIC)] == SEAL_MAGIC, path.name


@pytest.mark.parametrize("where", [0.0, 0.001, 0.3, 0.5, 0.999])
def test_a_flipped_byte_is_refused_by_the_seal(tmp_path, where, capsys):
    bad = tmp_path / "bad.h5"
    data = bytearray(GOLDEN.read_bytes())
    i = 512 + int(where * (len(data) - 513))
    data[i] ^= 0x40
    bad.write_bytes(bytes(data))
    for args in ((GOLDEN, bad), (bad, GOLDEN)):
        with pytest.raises(TraceError, match="SHA-256 seal"):
            golden.verify(*args)
    assert cli.main(["verify", str(GOLDEN), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "candidate trace" in err and "seal" in err and "Traceback" not in err


def test_truncated_extended_and_foreign_files_are_refused(tmp_path):
    data = GOLDEN.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match="truncated or extended"):
        golden.verify(GOLDEN, cut)
    stub = tmp_path / "stub.h5"
    stub.write_bytes(data[:100])
    with pytest.raises(TraceError, match="seal"):
        golden.verify(stub, GOLDEN)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"PK\x03\x04" + bytes(600))
    with pytest.raises(TraceError, match="not an HDF5 trace"):
        golden.verify(GOLDEN, junk)


def test_unsealed_traces_still_verify_and_edits_can_be_resealed(tmp_path):
    plain = tmp_path / "plain.h5"  # what the writer produced before seals (and what a replay writes)
    with h5py.File(GOLDEN) as g, h5py.File(plain, "w") as c:
        for k, v in g.attrs.items():
            c.attrs[k] = v
        for key in g:
            g.copy(g[key], c, name=key)
    assert plain.read_bytes()[:4] == b"\x89HDF"
    assert golden.verify(GOLDEN, plain).ok and golden.verify(plain, GOLDEN).ok
    with pytest.raises(TraceError, match="user block"):
        golden.seal_trace(plain)
    edited = tmp_path / "edited.h5"
    shutil.copy(GOLDEN, edited)
    with h5py.File(edited, "r+") as f:
        f["steps/0000/loss"][...] = 9.0
    with pytest.raises(TraceError, match="seal"):
        golden.verify(GOLDEN, edited)
    golden.seal_trace(edited)
    assert golden.verify(GOLDEN, edited).divergence == (0, "loss")
