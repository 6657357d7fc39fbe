"""validate/dns_table.py: its selection rule, and a tiny real run end to end (tables, verdicts, resume)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "validate"))
import dns_table as dt  # noqa: E402

from tests.conftest import require_data  # noqa: E402


def _point(kept: float, val: float, test: float) -> dict:
    def d(x):
        return {"mean": x, "sd": 0.0, "min": x, "max": x}

    return {"values": {"k": kept}, "statistics": {"kept_fraction": d(kept), "validation_error": d(val),
                                                  "test_error": d(test)}}


frac = st.floats(0.001, 0.05, allow_nan=False)


@given(st.lists(st.tuples(frac, frac, frac), min_size=1, max_size=8), frac)
@settings(max_examples=200, deadline=None)
def test_choice_is_lowest_validation_error_among_points_meeting_the_kept_target(points, target):
    """Never the test error (that would be choosing on test), never a point above the kept target."""
    table = {"points": [_point(*p) for p in points]}
    chosen = dt.choose(table, target)
    ok = [p for p in points if p[0] <= target]
    if not ok:
        assert chosen is None
        return
    st_ = chosen["statistics"]
    assert st_["kept_fraction"]["mean"] <= target
    assert st_["validation_error"]["mean"] == min(v for _, v, _ in ok)


def test_choice_ignores_test_error_and_points_over_target():
    table = {"points": [_point(0.017, 0.025, 0.019),   # meets kept, worse validation, best test
                        _point(0.016, 0.022, 0.030),   # meets kept, best validation: the choice
                        _point(0.030, 0.010, 0.010)]}  # best everything, but too dense
    assert dt.choose(table, 0.018)["values"] == {"k": 0.016}


def test_quick_run_end_to_end_and_resume(tmp_path):
    out = tmp_path / "dt"
    args = ["--data-dir", str(require_data()), "--quick", "--workers", "1", "--out", str(out)]
    assert dt.main(args) == 0
    md = (out / "dns_table.md").read_text()
    assert "QUICK" in md and "validation protocol: target" in md and "paper protocol: kept" in md
    assert "test set (the paper's protocol" in md
    report = json.loads((out / "dns_table.json").read_text())
    entry = report["nets"]["lenet-300-100"]
    assert entry["validation"]["run_times"]["runs"] == 4  # 2 points x 2 seeds
    assert entry["paper"]["run_times"]["runs"] == 2
    assert entry["validation"]["dense_test_error"]["mean"] > 0
    points = sorted((out / "lenet-300-100-validation" / "points").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in points]
    assert dt.main(args) == 0  # every point finished: nothing reruns, the tables are rewritten the same
    assert [p.stat().st_mtime_ns for p in points] == stamps
    again = json.loads((out / "dns_table.json").read_text())["nets"]["lenet-300-100"]
    assert again["validation"]["table"] == entry["validation"]["table"]
