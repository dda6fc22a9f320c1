"""flaxbert.plot / `flaxbert plot`: training curves from metrics.jsonl to a PNG.

The files here hold rows as the Trainer writes them (flaxbert.training.trainer and reporting:
train rows with loss, learning_rate, grad_norm, seq_per_s, ...; evaluation rows with eval_*);
tests/test_demo.py plots real fine-tuning runs.
"""
import json
import sys

import pytest

pytest.importorskip("matplotlib")

from flaxbert.plot import plot_runs, read_metrics  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TITLES = ["train loss", "learning rate", "eval loss", "eval accuracy", "throughput (sequences/s)"]


def _write_run(workdir, offset=0.0, steps=(10, 20, 30, 40), eval_at=(20, 40)):
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for step in steps:
        rows.append({"step": step, "loss": 3.0 - step / 20 + offset, "grad_norm": 1.5,
                     "learning_rate": 1e-3 * step / steps[-1], "nonfinite_in_a_row": 0.0,
                     "step_time_s": 0.1, "seq_per_s": 300.0 + step, "tokens_per_s": 19200.0})
        if step in eval_at:
            rows.append({"step": step, "eval_loss": 2.0 - step / 40 + offset,
                         "eval_accuracy": step / 50, "eval_sequences": 180.0})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plot")
    return _write_run(root / "pretrained"), _write_run(root / "random", offset=0.5)


def test_every_panel_overlays_every_run(runs, tmp_path):
    out = tmp_path / "runs.png"
    fig = plot_runs(runs, out, labels=["pre", "rand"])
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    import matplotlib.image
    height, width = matplotlib.image.imread(out).shape[:2]
    assert (width, height) == tuple(round(x * 100) for x in fig.get_size_inches())
    # eval_sequences is a count, not a curve: no panel of its own.
    assert [ax.get_title() for ax in fig.axes] == TITLES
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["pre", "rand"]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pre", "rand"]
    loss = fig.axes[0].get_lines()
    assert list(loss[0].get_xdata()) == [10, 20, 30, 40]
    assert list(loss[1].get_ydata()) == pytest.approx([3.0 - s / 20 + 0.5 for s in (10, 20, 30, 40)])
    accuracy = fig.axes[3].get_lines()[0]
    assert list(accuracy.get_xdata()) == [20, 40] and list(accuracy.get_ydata()) == [0.4, 0.8]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.png"]  # no temporary left


def test_default_labels_and_runs_without_evaluations(tmp_path):
    plain = _write_run(tmp_path / "a" / "run", eval_at=())
    other = _write_run(tmp_path / "b" / "run", eval_at=())
    fig = plot_runs([plain, other / "metrics.jsonl"], tmp_path / "two.png")
    assert [ax.get_title() for ax in fig.axes] == ["train loss", "learning rate",
                                                   "throughput (sequences/s)"]
    # Both workdirs are named "run": the labels say which is which.
    assert [line.get_label() for line in fig.axes[0].get_lines()] == [str(plain), str(other)]
    single = plot_runs(plain, tmp_path / "one.png")
    assert single.axes[0].get_legend() is None  # one run: nothing to tell apart


def test_refuses_an_existing_png_unless_overwrite(runs, tmp_path):
    out = tmp_path / "runs.png"
    out.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="already exists"):
        plot_runs(runs, out)
    assert out.read_bytes() == b"mine"
    plot_runs(runs, out, overwrite=True)
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_bad_metrics_line_names_file_and_line(tmp_path):
    run = _write_run(tmp_path / "run")
    file = run / "metrics.jsonl"
    lines = file.read_text().splitlines()
    file.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=rf"^{file}:2: not a JSON line"):
        plot_runs(run, tmp_path / "x.png")
    file.write_text(lines[0] + '\n{"step": 20, "loss": "low"}\n')
    with pytest.raises(ValueError, match=rf"^{file}:2: 'loss' is not a number$"):
        read_metrics(run)
    file.write_text(lines[0] + '\n[1, 2]\n')
    with pytest.raises(ValueError, match=rf"^{file}:2: not a metrics row"):
        read_metrics(run)
    file.write_text("\n")
    with pytest.raises(ValueError, match="holds no metrics rows"):
        read_metrics(run)
    assert not (tmp_path / "x.png").exists()


def test_unfinished_last_line_is_skipped(tmp_path):
    """A run still writing (or killed mid-write) leaves a last line without its newline."""
    run = _write_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "lo')
    rows = read_metrics(run)
    assert rows[-1]["step"] == 40 and len(rows) == 6


def test_bad_arguments(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        plot_runs([runs[0], tmp_path / "nowhere"], tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no metrics.jsonl"):
        plot_runs(tmp_path / "empty", tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels: 1 given for 2 runs"):
        plot_runs(runs, tmp_path / "x.png", labels=["one"])
    with pytest.raises(ValueError, match="ending in .png"):
        plot_runs(runs, tmp_path / "x.jpg")
    assert not any(tmp_path.glob("x.*"))


def test_missing_matplotlib_says_what_to_install(runs, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: import fails
    with pytest.raises(ImportError, match=r"pip install 'flaxbert\[plot\]'"):
        plot_runs(runs, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli(runs, tmp_path, capsys):
    from flaxbert.cli import main
    out = tmp_path / "cli.png"
    argv = ["plot", *map(str, runs), "--output", str(out), "--labels", "pre,rand"]
    assert main(argv) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert f"wrote {out}: 2 run(s); panels: {', '.join(TITLES)}" in capsys.readouterr().out
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flaxbert plot: error: destination") and "\n" not in err
    assert main([*argv, "--overwrite"]) == 0
    bad = _write_run(tmp_path / "bad")
    (bad / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\noops\n')
    assert main(["plot", str(bad), "--output", str(tmp_path / "bad.png")]) == 2
    assert capsys.readouterr().err.strip() == (f"flaxbert plot: error: {bad / 'metrics.jsonl'}:2: "
                                               "not a JSON line (Expecting value)")
