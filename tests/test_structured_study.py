"""validate/structured_study.py: a tiny real study (LeNet-300-100 on real MNIST, a few iterations) writes
per-net outputs whose figure has the expected axes, and --merge joins two seeds but refuses studies whose
settings differ or that share a seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import require_data

REPO = Path(__file__).resolve().parents[1]
TINY = ["--net", "lenet-300-100", "--dense-iterations", "20", "--finetune-iterations", "6", "--steps", "2",
        "--samples", "100", "--criteria", "random", "l1", "--fractions", "0.5"]


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(REPO / "validate"))
    import structured_study

    return structured_study


@pytest.fixture(scope="module")
def runs(study, tmp_path_factory):
    """Two real tiny studies, seeds 0 and 1, written to different folders: their JSON paths."""
    data = require_data()
    out = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"seed{seed}")
        argv = [*TINY, "--seeds", str(seed), "--data-dir", str(data), "--out-dir", str(folder)]
        assert study.main(argv) == 0
        assert sorted(p.name for p in folder.iterdir()) == [
            f"structured_study_lenet-300-100.{x}" for x in ("json", "md", "png")]
        out.append(folder / "structured_study_lenet-300-100.json")
    return out


def test_figure_has_two_panels_one_line_per_criterion(study, runs):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    res = json.loads(runs[0].read_text())
    fig = study.figure(res)
    try:
        axes = fig.get_axes()
        assert len(axes) == 2
        assert "no fine-tune" in axes[0].get_title() and "fine-tune (6 iterations)" in axes[1].get_title()
        assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"
        for ax, ft in zip(axes, (False, True), strict=True):
            assert ax.get_xlabel() == "hidden units removed (%)" and ax.get_ylabel() == "test error (%)"
            assert len(ax.containers) == 2  # one errorbar per criterion
            for c, bar in zip(("random", "l1"), ax.containers, strict=True):
                line = bar.lines[0]
                assert bar.get_label() == c
                row = next(r for r in res["table"] if (r["criterion"], r["finetune"]) == (c, ft))
                assert abs(line.get_xdata()[0] - 50.0) < 1  # dodged a little
                assert line.get_ydata()[0] == pytest.approx(100 * row["mean"])
            rnd, l1 = (bar.lines[0] for bar in ax.containers)
            assert rnd.get_linestyle() == "--" and l1.get_linestyle() == "-"  # random drawn apart
        assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["random", "l1"]
    finally:
        plt.close(fig)


def test_merge_joins_seeds_and_sums_wall_times(study, runs, tmp_path):
    a, b = (json.loads(p.read_text()) for p in runs)
    assert study.main(["--merge", *map(str, runs), "--out-dir", str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "structured_study_lenet-300-100.json").read_text())
    assert merged["settings"]["seeds"] == [0, 1]
    assert merged["seconds"] == pytest.approx(a["seconds"] + b["seconds"])
    assert len(merged["runs"]) == len(a["runs"]) + len(b["runs"])
    row = next(r for r in merged["table"] if (r["criterion"], r["finetune"]) == ("l1", True))
    errs = [r["test_error"] for r in a["runs"] + b["runs"] if (r["criterion"], r["finetune"]) == ("l1", True)]
    assert row["n"] == 2 and row["mean"] == pytest.approx(sum(errs) / 2)
    md = (tmp_path / "structured_study_lenet-300-100.md").read_text()
    assert "the sum of the wall times of the 2 processes merged" in md
    assert "## Mittal et al. (2018) claim" in md and "random's rank" in md
    assert (tmp_path / "structured_study_lenet-300-100.png").stat().st_size > 0


def test_merge_refuses_other_settings_and_repeated_seeds(study, runs, tmp_path, capsys):
    b = json.loads(runs[1].read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps(b | {"settings": b["settings"] | {"dense_iterations": 21}}))
    with pytest.raises(study.MergeError, match=r"setting 'dense_iterations' differs: .*seed0.* has 20, "
                                               r".*other.json has 21"):
        study.merge([runs[0], other])
    assert study.main(["--merge", str(runs[0]), str(other), "--out-dir", str(tmp_path / "no")]) == 2
    assert "dense_iterations" in capsys.readouterr().err and not (tmp_path / "no").exists()
    with pytest.raises(study.MergeError, match=r"seed 0 is in both .*seed0.* and .*seed0"):
        study.merge([runs[0], runs[0]])
    net = tmp_path / "net.json"
    net.write_text(json.dumps(b | {"net": "lenet-5"}))
    with pytest.raises(study.MergeError, match="key 'net' differs"):
        study.merge([runs[0], net])
    with pytest.raises(study.MergeError, match="at least two"):
        study.merge([runs[0]])


def test_outputs_are_named_per_net_and_quick(study):
    assert study.stem({"net": "lenet-5", "settings": {"quick": False}}) == "structured_study_lenet-5"
    assert study.stem({"net": "lenet-300-100", "settings": {"quick": True}}) == \
        "structured_study_lenet-300-100_quick"
