"""validate/error_speedup.py end to end on a tiny real run, its matched-error rule, and its flag checks."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "validate"))
import error_speedup as es  # noqa: E402

BATCHES = (1, 64, 1000)
TINY = ["--nets", "lenet-300-100", "--dense-iterations", "60", "--dns-iterations", "60", "--finetune", "20",
        "--steps", "2", "--budgets", "0.4,0.15", "--n-test", "1000", "--batches", "1,64,1000", "--reps", "1",
        "--quick-timing"]


def expected_choice(rows: list[dict], dns_error: float, tol_pp: float) -> str:
    """The rule, written again from its statement: fastest (geometric mean) within DNS + tol, else the
    lowest error."""
    within = [r for r in rows if r["test_error"] <= dns_error + tol_pp / 100 + 1e-12]
    if within:
        return sorted(within, key=lambda r: -math.prod(r[f"batch{b}_speedup"] for b in BATCHES))[0]["net"]
    return sorted(rows, key=lambda r: (r["test_error"], -r["speedup_geomean"]))[0]["net"]


def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "es"
    assert es.main([*TINY, "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert "error" in out.with_suffix(".md").read_text() and res["load_before"] and res["load_after"]
    (net,) = res["nets"]
    names = [r["net"] for r in net["rows"]]
    assert names == ["dense", "DNS (CSR)", "l1 40%", "l1 15%"]
    dense, dns, *structured = net["rows"]
    for r in net["rows"]:
        assert 0.0 <= r["test_error"] <= 1.0 and r["params"] > 0 and r["flops"] > 0
        for b in BATCHES:
            assert r[f"batch{b}_median_s"] > 0
            ratio = dense[f"batch{b}_median_s"] / r[f"batch{b}_median_s"]
            assert r[f"batch{b}_speedup"] == pytest.approx(ratio)
    assert dense["params"] == 266_610 and dense["flops"] == 531_990
    for r in structured:  # the thinned nets meet their budgets and compute what their masked sources do
        assert r["flops"] <= r["flop_budget"] and r["same_argmax_as_masked"]
    assert net["dns_csr_agrees_with_dense_forward"]
    m = net["matched"]
    assert m["net"] == expected_choice(structured, dns["test_error"], res["tolerance_pp"])
    assert m["within_tolerance"] == any(r["test_error"] <= dns["test_error"] + 0.001 for r in structured)
    chosen = next(r for r in structured if r["net"] == m["net"])
    for b in BATCHES:
        ratio = dns[f"batch{b}_speedup"] / chosen[f"batch{b}_speedup"]
        assert m["dns_over_structured"][str(b)] == pytest.approx(ratio)


def _row(name, err, speedups):
    row = {"net": name, "test_error": err, "speedup_geomean": es.geomean(speedups.values())}
    return row | {f"batch{b}_speedup": s for b, s in speedups.items()}


def test_matched_rule_both_branches():
    rows = [_row("a", 0.020, {1: 1.5, 64: 2.0}), _row("b", 0.0205, {1: 2.0, 64: 3.0}),
            _row("c", 0.030, {1: 4.0, 64: 6.0})]
    # within 0.1 pp of 0.0198: a and b; b is faster
    assert es.choose_matched(rows, 0.0198, 0.1, "geomean", (1, 64))["net"] == "b"
    # by batch 1 only, same pick; with no tolerance only a is within
    assert es.choose_matched(rows, 0.0198, 0.1, 1, (1, 64))["net"] == "b"
    assert es.choose_matched(rows, 0.020, 0.0, "geomean", (1, 64))["net"] == "a"
    # nothing within: the lowest error, said so
    m = es.choose_matched(rows, 0.010, 0.1, "geomean", (1, 64))
    assert m["net"] == "a" and not m["within_tolerance"] and "NO structured net" in m["why"]


@pytest.mark.parametrize("bad", [
    ["--budgets", "0.4,1.2"], ["--budgets", "0.4,0.4"], ["--dns", "lenet-5"], ["--dns", "lenet-7=x.h5"],
    ["--dense", "lenet-300-100=/nonexistent.h5"], ["--tolerance", "-1"], ["--batches", "1,20000"],
    ["--choose-by", "7"], ["--finetune", "lenet-5=1"], ["--budgets", "0.000001"], ["--nets", "lenet-300-100",
                                                                                    "--dns", "lenet-5=x"],
])
def test_bad_flags_status_2_before_work(bad, tmp_path, capsys):
    assert es.main([*bad, "--out", str(tmp_path / "x")]) == 2
    assert "error_speedup.py" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
