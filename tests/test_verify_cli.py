"""``refdns verify`` from the command line: tolerances, groups and JSON for CI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from refdns import cli, golden
from refdns.errors import TraceError

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "lenet-300-100-dns.h5"


@pytest.fixture
def nudged(tmp_path) -> Path:
    """The golden with step 1's ip1 activations scaled by 1 + 1e-3: over float32's rtol 1e-4, under 1e-2."""
    cand = tmp_path / "cand.h5"
    shutil.copy(GOLDEN, cand)
    with h5py.File(cand, "r+") as f:
        ds = f["steps/0001/activations/01_dense_ip1"]
        ds[...] = ds[()] * np.float32(1.001)
    golden.seal_trace(cand)
    return cand


def test_rtol_atol_from_the_command_line(nudged, capsys):
    assert cli.main(["verify", str(GOLDEN), str(nudged)]) == 1
    assert "at step 1 (activations/01_dense_ip1)" in capsys.readouterr().out
    assert cli.main(["verify", str(GOLDEN), str(nudged), "--rtol", "1e-2"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "float32: rtol 0.01 atol 1e-05" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["verify", str(GOLDEN), str(nudged), "--rtol", "-1"])
    assert e.value.code == 2
    assert "--rtol" in capsys.readouterr().err


def test_only_compares_the_named_groups(nudged, capsys):
    assert cli.main(["verify", str(GOLDEN), str(nudged), "--only", "masks", "--only", "grads/ip3"]) == 0
    out = capsys.readouterr().out
    assert "compared only: masks, grads/ip3" in out
    assert "| grads/ip3/weight |" in out and "| grads/ip1/weight |" not in out and "activations" not in out
    assert cli.main(["verify", str(GOLDEN), str(nudged), "--only", "activations"]) == 1
    assert cli.main(["verify", str(GOLDEN), str(nudged), "--only", "gradz"]) == 2
    err = capsys.readouterr().err
    assert "gradz" in err and "grads/ip1" in err  # names the groups there are
    with pytest.raises(TraceError, match="no such tensor group"):
        golden.verify(GOLDEN, nudged, only=[])


def test_json_for_ci(nudged, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["verify", str(GOLDEN), str(nudged), "--json", str(out)]) == 1
    r = json.loads(out.read_text())
    assert r["ok"] is False and r["divergence"] == {"step": 1, "tensor": "activations/01_dense_ip1"}
    assert r["tolerances"]["float32"] == {"rtol": 1e-4, "atol": 1e-5}
    bad = [t for t in r["tensors"] if not t["ok"]]
    assert [t["name"] for t in bad] == ["activations/01_dense_ip1"] and bad[0]["first_bad_step"] == 1
    assert len(bad[0]["first_bad_index"]) == 2
    assert (
        cli.main(["verify", str(GOLDEN), str(GOLDEN), "--json", str(out), "--force", "--only", "init"]) == 0
    )
    r = json.loads(out.read_text())
    assert r["ok"] and r["only"] == ["init"] and all(t["name"].startswith("init/") for t in r["tensors"])


def test_tolerance_is_validated():
    with pytest.raises(ValueError, match="rtol"):
        golden.Tolerance(rtol=float("nan"), atol=0.0)
    assert golden.Tolerance(1e-4, 1e-5).widened(atol=0.5) == golden.Tolerance(1e-4, 0.5)


def test_non_finite_golden_values_must_be_matched_exactly():
    inf, nan = np.inf, np.nan
    tol = golden.TOLERANCES["float64"]
    assert (
        golden.compare_arrays(np.array([inf, -inf, nan, 1.0]), np.array([inf, -inf, nan, 1.0]), tol)[2]
        is None
    )
    max_abs, max_rel, bad = golden.compare_arrays(np.array([1.0, inf]), np.array([1.0, 1e300]), tol)
    assert bad == 1 and max_abs == inf and max_rel == inf
    assert golden.compare_arrays(np.array([1.0, 2.0]), np.array([1.0, nan]), tol)[2] == 1
