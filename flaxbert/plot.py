"""`flaxbert plot`: training curves of one or several runs, from their metrics.jsonl, to a PNG.

    flaxbert plot runs/pretrained runs/random --output runs.png --labels pretrained,random

    fig = flaxbert.plot.plot_runs(["runs/pretrained", "runs/random"], "runs.png")

One panel per curve the runs hold: the train loss, the learning rate, every evaluation metric
(the Trainer's `eval_*` rows: eval_loss, eval_accuracy, eval_mlm_accuracy, ...) and the
throughput (seq_per_s); the runs overlay in each panel with a legend. matplotlib is an optional
extra (`pip install 'flaxbert[plot]'`), imported only here, drawing with its Agg backend (no
display needed).
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from flaxbert.io import atomic_file, check_destination, read_text

PLOT_HINT = "pip install 'flaxbert[plot]'"
# Panels from the Trainer's train rows (flaxbert.training.trainer / reporting); the evaluation
# panels go between the learning rate and the throughput.
TRAIN_PANELS = (("loss", "train loss"), ("learning_rate", "learning rate"))
THROUGHPUT_PANEL = ("seq_per_s", "throughput (sequences/s)")
# Evaluation rows also carry how many rows and tokens they averaged over: counts, not curves.
_COUNT_KEY = re.compile(r"eval_(.+_)?(sequences|tokens|examples|rows)")


def metrics_file(run: str | os.PathLike) -> Path:
    """A run's metrics.jsonl: the file itself, or the one in a workdir."""
    path = Path(run)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a metrics.jsonl file nor a workdir holding one"
                                if not path.is_dir() else f"{path} holds no metrics.jsonl")
    return file


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """The rows of a run's metrics.jsonl ({"step": N, key: number, ...}). A line that is not
    such a row raises a ValueError naming the file and line; only an unfinished last line (no
    newline: a run being written, or killed mid-write) is skipped."""
    file = metrics_file(run)
    text = read_text(file)
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        unfinished = number == len(lines)  # after the last newline
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if unfinished:
                continue
            raise ValueError(f"{file}:{number}: not a JSON line ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{file}:{number}: not a metrics row (a JSON object with an "
                             "integer \"step\")")
        bad = [k for k, v in row.items() if not isinstance(v, (int, float))]
        if bad:
            raise ValueError(f"{file}:{number}: {bad[0]!r} is not a number")
        rows.append(row)
    if not rows:
        raise ValueError(f"{file} holds no metrics rows")
    return rows


def _labels(runs: list, labels) -> list[str]:
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != len(runs):
            raise ValueError(f"labels: {len(labels)} given for {len(runs)} runs")
        return labels
    names = [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    if len(set(names)) < len(names):  # runs/a/run and runs/b/run: say which run is which
        names = [str(metrics_file(r).parent) for r in runs]
    return names


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    return [s for s, _ in points], [v for _, v in points]


def panels_of(runs_rows: list[list[dict]]) -> list[tuple[str, str]]:
    """(key, title) of every panel these runs have data for: train loss, learning rate, each
    evaluation metric (eval_loss first, the rest by name), throughput."""
    keys = {k for rows in runs_rows for row in rows for k in row}
    evals = sorted((k for k in keys if k.startswith("eval_") and not _COUNT_KEY.fullmatch(k)),
                   key=lambda k: (k != "eval_loss", k))
    panels = [*TRAIN_PANELS, *((k, k.replace("_", " ")) for k in evals), THROUGHPUT_PANEL]
    return [(k, title) for k, title in panels if k in keys]


def plot_runs(runs, output: str | os.PathLike, *, labels=None, overwrite: bool = False):
    """Draw the runs' curves (workdirs or metrics.jsonl files) to the PNG `output`, written
    atomically; an existing one is refused unless overwrite. Returns the matplotlib Figure
    (one axes per panel, titled as `panels_of` says)."""
    runs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    if not runs:
        raise ValueError("plot: no runs given")
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"output {output}: the plot is a PNG; give a name ending in .png")
    check_destination(output, overwrite, directory=False)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"flaxbert plot needs matplotlib: {PLOT_HINT}") from None
    runs_rows = [read_metrics(r) for r in runs]
    names = _labels(runs, labels)
    panels = panels_of(runs_rows)
    if not panels:
        raise ValueError(f"{', '.join(map(str, runs))}: no loss, learning rate, evaluation or "
                         "throughput rows to plot")

    columns = min(3, len(panels))
    rows_of_panels = -(-len(panels) // columns)
    fig = Figure(figsize=(5 * columns, 3.4 * rows_of_panels), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global figure state, no display
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(rows_of_panels, columns, i + 1)
        for name, rows in zip(names, runs_rows):
            steps, values = _series(rows, key)
            if steps:  # a marker on each evaluation: they are few and far between
                ax.plot(steps, values, label=name, marker="o" if key.startswith("eval_") else None,
                        markersize=4)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize="small")
    with atomic_file(output, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return fig


def _plot_command(args) -> None:
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    fig = plot_runs(args.runs, args.output, labels=labels, overwrite=args.overwrite)
    titles = ", ".join(ax.get_title() for ax in fig.axes)
    print(f"wrote {args.output}: {len(args.runs)} run(s); panels: {titles}")


def add_plot_parser(commands) -> argparse.ArgumentParser:
    """Register `flaxbert plot WORKDIR [WORKDIR ...] --output runs.png`."""
    parser = commands.add_parser(
        "plot", help="draw runs' loss, learning rate, eval metrics and throughput to a PNG",
        description="Read each run's metrics.jsonl (a workdir, or the file) and draw the train "
                    "loss, learning rate, every eval_* metric and throughput, the runs "
                    f"overlaid, to --output. Needs matplotlib ({PLOT_HINT}).")
    parser.add_argument("runs", nargs="+", metavar="WORKDIR",
                        help="training workdir (or its metrics.jsonl)")
    parser.add_argument("--output", required=True,
                        help="the PNG to write (must not exist unless --overwrite)")
    parser.add_argument("--labels", default=None,
                        help="comma-separated legend names, one per run (default: the "
                             "workdirs' names)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    parser.set_defaults(run=_plot_command)
    return parser
