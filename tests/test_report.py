"""refdns report: figures rendered from a short real run; files and axes checked, not pixels."""

import pytest


def test_report_of_a_short_real_run_writes_every_figure_with_its_axes(mnist, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra")
    from refdns import checkpoint
    from refdns.cli import main
    from refdns.pipeline import Data, experiment, reproduce
    from refdns.report import write_report

    exp = experiment("lenet-300-100", "dns", iterations=60, dense_iterations=40, test_interval=20,
                     overrides={}, select_on="validation")
    reproduce(exp, Data(*mnist), dense_out=tmp_path / "d.h5", out=tmp_path / "p.h5")
    ck = checkpoint.load(tmp_path / "p.h5")
    figs = write_report(ck, tmp_path / "rep", source="p.h5", dense=checkpoint.load(tmp_path / "d.h5").state)
    by = {f.name: f for f in figs}
    assert set(by) == {"density", "churn", "error", "weights_start", "weights_end"}
    for f in figs:
        assert f.path.exists() and f.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert by["density"].axes == (("iteration", "kept connections (% of the layer)"),)
    assert by["error"].axes == (("iteration", "validation error (%)"),)
    assert [x for x, _ in by["weights_end"].axes] == ["|w| of ip1", "|w| of ip2", "|w| of ip3"]
    assert all(y.endswith(": connections") for _, y in by["churn"].axes)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert all(f'src="{f.path.name}"' in page for f in figs) and "validation split" in page
    assert "data order shuffled" in page  # issue 16

    # the CLI finds the dense checkpoint through the run's config
    assert main(["report", str(tmp_path / "p.h5"), "-o", str(tmp_path / "cli")]) == 0
    assert "weights_start.png" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "p.h5"), "-o", str(tmp_path / "cli")]) == 2  # exists: needs --force


def test_sweep_figure_draws_error_against_kept_fraction_with_seed_error_bars(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra")
    import json

    from refdns.cli import main
    from refdns.stats import describe

    def point(c, errs, kept):
        st = {"test_error": describe(errs), "validation_error": describe(errs),
              "kept_fraction": describe(kept), "layers": {}, "seeds": [0, 1], "select_on": "validation"}
        return {"values": {"method.layers.*.c_rate": c}, "rows": [], "statistics": st}

    table = {"grid": ["method.layers.*.c_rate"], "seeds": [0, 1], "select_on": "validation",
             "net": "lenet-300-100", "method": "dns", "order": {"data_order": "caffe", "draws": "caffe"},
             "points": [point(1.0, [0.02, 0.021], [0.02, 0.021]), point(2.0, [0.03, 0.031], [0.01, 0.012])]}
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "table.json").write_text(json.dumps(table))
    assert main(["report", str(tmp_path / "sw"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "sweep.png").exists() and 'src="sweep.png"' in (tmp_path / "out" / "index.html").read_text()
    from refdns.report import sweep_figure

    fig = sweep_figure(table, tmp_path / "again")
    assert fig.axes == (("kept connections (% of the net)", "error (%), mean ± sd over seeds"),)
    assert "validation split" in fig.title and "data order caffe, draws caffe" in fig.title
