"""Seed statistics: the numbers, the refusals, and `reproduce --seeds` end to end."""

import json
import statistics

import pytest

from refdns.stats import describe, format_statistics, seed_statistics


def test_describe_is_mean_sample_sd_min_max():
    v = [0.0231, 0.0216, 0.0209]
    d = describe(v)
    assert d["n"] == 3 and d["mean"] == pytest.approx(statistics.fmean(v), abs=1e-15)
    assert d["sd"] == pytest.approx(statistics.stdev(v), rel=1e-12)
    assert (d["min"], d["max"]) == (0.0209, 0.0231)
    assert describe([0.5])["sd"] is None
    with pytest.raises(ValueError):
        describe([])


def _row(seed, err, val=None, select_on="test"):
    return {"seed": seed, "select_on": select_on, "test_error": err, "validation_error": val,
            "dense_test_error": 0.02, "kept_fraction": 0.02, "layers": {"ip1": 0.01, "ip2": 0.03}}


def test_statistics_label_the_protocol_and_refuse_mixed_protocols():
    st = seed_statistics([_row(0, 0.02), _row(1, 0.03)])
    text = format_statistics(st, "x")
    assert "the paper's protocol" in text and "2.50 ± 0.71%" in text and "validation error" not in text
    st = seed_statistics([_row(0, 0.02, 0.01, "validation"), _row(1, 0.03, 0.02, "validation")])
    assert "validation split" in format_statistics(st, "x") and st["validation_error"]["mean"] == 0.015
    with pytest.raises(ValueError, match="protocol"):
        seed_statistics([_row(0, 0.02), _row(1, 0.03, 0.02, "validation")])


def test_statistics_state_the_data_order_and_draws_and_refuse_mixed_orders():
    """Issue 16: data order alone moves DNS's result, so the seed table says which order (and DNS's draws
    when they are not the default stream)."""
    shuffled = {"data_order": "shuffled"}
    caffe = {"data_order": "caffe", "draws": "caffe", "srand_seed": 1}
    text = format_statistics(seed_statistics([_row(0, 0.02) | {"order": shuffled}] * 2), "x")
    assert "data order shuffled" in text and "draws" not in text
    rows = [_row(0, 0.02) | {"order": caffe}, _row(1, 0.03) | {"order": caffe}]
    text = format_statistics(seed_statistics(rows), "x")
    assert "data order caffe (the training set in file order" in text
    assert "DNS draws caffe (glibc rand() after srand(1))" in text
    with pytest.raises(ValueError, match="data orders"):
        seed_statistics([_row(0, 0.02) | {"order": shuffled}, _row(1, 0.03) | {"order": caffe}])
    assert "data order" not in format_statistics(seed_statistics([_row(0, 0.02)]), "x")  # rows from before


def test_reproduce_seeds_runs_each_seed_and_reports_statistics(mnist, tmp_path, capsys):
    from refdns.cli import main
    from tests.conftest import require_data

    argv = ["reproduce", "--net", "lenet-300-100", "--seeds", "0-1", "--dense-iterations", "10", "--iterations",
            "5", "--test-interval", "0", "--out-dir", str(tmp_path), "--no-progress", "--data-dir",
            str(require_data()), "--no-download", "--json", str(tmp_path / "s.json"), "--select-on", "validation"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 seed(s) [0, 1]" in out and "| validation error |" in out
    assert "data order shuffled" in out  # under the seed statistics
    fig = json.loads((tmp_path / "s.json").read_text())
    assert fig["statistics"]["order"] == {"data_order": "shuffled"}
    assert [r["seed"] for r in fig["runs"]] == [0, 1] and fig["statistics"]["test_error"]["n"] == 2
    assert (tmp_path / "lenet-300-100-dns" / "seed1-dns.h5").exists()
    assert main(argv) == 2  # the checkpoints exist now: refused without --force
