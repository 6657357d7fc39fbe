"""Sensitivity analysis: one layer pruned by magnitude at a time, no retraining."""

import numpy as np
import pytest

from refdns.errors import ConfigError


def test_sensitivity_prunes_one_layer_at_a_time_and_changes_nothing_at_density_1(mnist, tmp_path, capsys):
    from refdns.cli import main
    from refdns.pipeline import Data, experiment, reproduce
    from refdns.sensitivity import figure, format_table, sensitivity
    from tests.conftest import require_data

    data = Data(*mnist)
    res = reproduce(experiment("lenet-300-100", None, dense_iterations=50, test_interval=0), data,
                    out=tmp_path / "d.h5")
    state = res.dense.state
    before = {k: m.copy() for k, m in state.masks.items()}
    out = sensitivity(state, data, [1.0, 0.1, 0.001], select_on="validation")
    assert all(np.array_equal(before[k], state.masks[k]) for k in before)  # the checkpoint's net untouched
    assert len(out["rows"]) == 9 and out["select_on"] == "validation"
    full = [r for r in out["rows"] if r["density"] == 1.0]
    assert all(r["error"] == out["baseline_error"] for r in full)
    ip3 = {r["density"]: r for r in out["rows"] if r["layer"] == "ip3"}
    assert ip3[0.1]["kept_fraction"] == 0.1 and ip3[0.001]["error"] > ip3[1.0]["error"]
    assert "| ip1 |" in format_table(out) and "validation split" in format_table(out)
    pytest.importorskip("matplotlib")
    assert figure(out, tmp_path / "s.png") == ("weights kept in the layer (%)", "validation error (%)")
    assert (tmp_path / "s.png").exists()
    with pytest.raises(ConfigError, match="density"):
        sensitivity(state, data, [0.0])
    assert main(["sensitivity", str(tmp_path / "d.h5"), "--densities", "1,0.2", "--data-dir",
                 str(require_data()), "--no-download"]) == 0
    assert "| ip2 | " in capsys.readouterr().out
    assert main(["sensitivity", str(tmp_path / "d.h5"), "--densities", "1,x"]) == 2
