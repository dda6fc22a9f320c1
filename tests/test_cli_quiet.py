"""A quiet CLI: without -v, stderr holds only what flaxbert itself writes (its warnings and its
progress), none of TensorFlow's, jax's or Orbax's start-up lines; with -v they show. Progress
is plain periodic lines where stderr is not a terminal, a tqdm bar where it is."""
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_bert_checkpoint

REPO = Path(__file__).resolve().parent.parent
# What the libraries print at start-up (seen on this package's commands; flaxbert/quiet.py).
NOISE = [re.compile(p) for p in (
    r"absl::InitializeLog", r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]", r"oneDNN", r"cpu_feature_guard",
    r"rebuild TensorFlow", r"xla_bridge", r"Unable to initialize backend", r"No GPU/TPU found",
    r"Falling back to cpu", r"^INFO ", r"^I\d{4} ", r"orbax", r"Warning: ")]
# Lines flaxbert writes to stderr: its loggers' records and its progress lines.
OWN = [re.compile(p) for p in (
    r"^(WARNING|ERROR) flaxbert[.\w]*: ",
    r"^[\w ()]+: \d+(/\d+)? \w+( \(\d+%\))? \[\d\d:\d\d(<\d\d:\d\d)?, +[\d.?]+ ?(\w+/s|s/\w+)\]")]
LINES = ["a good movie", "a bad movie", "great film", "awful film", "i liked it", "i hated it",
         "the best acting", "the worst plot"]


def _flaxbert(*args, **env):
    return subprocess.run([sys.executable, "-m", "flaxbert", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FLAXBERT_COMPILATION_CACHE": "0", **env})


def _foreign_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not any(p.match(line) for p in OWN)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    model = tiny_bert_checkpoint(root, LINES)
    (root / "texts.txt").write_text("\n".join(LINES * 3) + "\n")
    docs = [f"{a} and {b}. Then {c} again. It was {a}."
            for a, b, c in zip(LINES, LINES[1:], LINES[2:])] * 20
    (root / "docs.txt").write_text("\n\n".join(docs) + "\n")  # 120 documents
    return root, model


def test_prepare_and_embed_write_only_their_own_lines(files, tmp_path):
    """prepare imports TensorFlow (in this process and two workers), embed loads and compiles
    with jax; every stderr line is flaxbert's progress, printed on each update (interval 0) as
    plain lines: no carriage return, no TensorFlow / jax line."""
    root, model = files
    result = _flaxbert("prepare", root / "docs.txt", "--tokenizer", root / "tok", "--mode", "nsp",
                       "--max-seq-length", 32, "--out", tmp_path / "data", "--num-shards", 2,
                       "--workers", 2, "--chunk-documents", 30, FLAXBERT_PROGRESS_SECONDS="0")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    assert _foreign_lines(result.stderr) == [], result.stderr
    steps = [ln for ln in result.stderr.splitlines() if ln.startswith("prepare: ")]
    assert len(steps) == 4 and steps[-1].startswith("prepare: 120 doc"), result.stderr  # 4 chunks
    assert "\r" not in result.stderr

    result = _flaxbert("embed", model, "--input", root / "texts.txt", "--output", tmp_path / "e.npy",
                       "--batch-size", 8, FLAXBERT_PROGRESS_SECONDS="0")
    assert result.returncode == 0, result.stderr
    assert _foreign_lines(result.stderr) == [], result.stderr
    counts = [int(m.group(1)) for m in re.finditer(r"^embed: (\d+)/24 input", result.stderr, re.M)]
    assert counts == sorted(counts) and len(counts) >= 3 and counts[-1] == 24, result.stderr
    assert "\r" not in result.stderr
    assert not any(p.search(result.stderr) for p in NOISE), result.stderr


def test_short_work_prints_no_progress_and_verbose_shows_the_libraries(files, tmp_path):
    """At the default interval (30 s) a few-second convert prints nothing on stderr; with -v
    Python logging's INFO lines show, Orbax's among them."""
    _, model = files
    result = _flaxbert("convert", model, tmp_path / "flax", "--to", "flax")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    result = _flaxbert("-v", "convert", model, tmp_path / "flax-v", "--to", "flax")
    assert result.returncode == 0, result.stderr
    info = [ln for ln in result.stderr.splitlines() if ln.startswith("INFO ")]
    assert any(ln.startswith("INFO absl: ") for ln in info), result.stderr  # Orbax's


@pytest.mark.slow  # ~40 s of CPU: a real fine-tuning run (its lines: test_metric_writer_lines)
def test_finetune_says_it_compiles_and_logs_plain_lines(files, tmp_path):
    """The trainer's loop: a line before the first (compiling) step and its time after, then a
    plain progress line per log interval on stderr, evaluation results on stdout."""
    root, model = files
    tsv = root / "train.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(LINES)))
    result = _flaxbert(
        "finetune", "--config", "configs/finetune_glue.py:sst2,tiny", "--workdir", tmp_path / "run",
        f"--config.model={model}", f"--config.data.train={tsv}", f"--config.data.validation={tsv}",
        "--config.task.max_seq_length=16", "--config.train.num_steps=4",
        "--config.train.log_every=2", "--config.checkpoint.async_save=False",
        "--config.export.at_end=False")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    compiling = out.index("compiling the train step (the first step) ...")
    assert re.fullmatch(r"first step \(compile \+ run\) took \d+\.\d s", out[compiling + 1])
    assert any(re.match(r"step 4: eval_loss=", ln) for ln in out), result.stdout
    assert _foreign_lines(result.stderr) == [], result.stderr
    train = [ln for ln in result.stderr.splitlines() if ln.startswith("train: ")]
    assert [ln.split(" [")[0] for ln in train] == ["train: 2/4 step (50%)", "train: 4/4 step (100%)"]
    assert all("loss=" in ln for ln in train)
    assert "\r" not in result.stderr


def test_metric_writer_lines(tmp_path, capsys):
    """The trainer's reporting without a bar: a progress line per log interval on stderr with
    the shown metrics, evaluations and notes on stdout, every row in metrics.jsonl."""
    from flaxbert.training.reporting import MetricWriter
    writer = MetricWriter(tmp_path, progress_total=4, progress_start=0, progress_bar=False)
    writer.note("compiling the train step (the first step) ...")
    writer.write(2, {"loss": 2.5, "grad_norm": 1.0})
    writer.write(4, {"loss": 2.0, "grad_norm": 1.0})
    writer.write(4, {"eval_loss": 1.75, "eval_accuracy": 0.5})
    writer.close()
    out = capsys.readouterr()
    assert out.out.splitlines() == ["compiling the train step (the first step) ...",
                                    "step 4: eval_loss=1.75 eval_accuracy=0.5"]
    lines = out.err.splitlines()
    assert [ln.split(" [")[0] for ln in lines] == ["train: 2/4 step (50%)", "train: 4/4 step (100%)"]
    assert lines[0].endswith(", loss=2.5") and lines[1].endswith(", loss=2")
    assert _foreign_lines(out.err) == []
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_progress_bar_on_a_terminal_and_lines_elsewhere():
    from flaxbert.progress import Progress
    bar_file = io.StringIO()
    with Progress(total=3, desc="work", unit="item", file=bar_file, terminal=True) as bar:
        for _ in range(3):
            bar.update()
    assert "\r" in bar_file.getvalue() and "3/3" in bar_file.getvalue()

    quiet = io.StringIO()  # longer interval than the work: nothing at all
    with Progress(total=3, desc="work", file=quiet, terminal=False, interval=3600) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""

    lines = io.StringIO()
    with Progress(total=4, desc="work", unit="item", file=lines, terminal=False,
                  interval=0) as bar:
        bar.update(1)
        bar.set_postfix_str("loss=1.5")
        bar.update(3)
    text = lines.getvalue().splitlines()
    assert [ln.split(" [")[0] for ln in text] == ["work: 1/4 item (25%)", "work: 4/4 item (100%)"]
    assert text[1].endswith(", loss=1.5") and "\r" not in lines.getvalue()


def test_progress_can_be_switched_off(monkeypatch):
    from flaxbert.progress import Progress, line_interval
    monkeypatch.setenv("FLAXBERT_PROGRESS", "0")
    out = io.StringIO()
    with Progress(total=2, desc="work", file=out, terminal=False, interval=0) as bar:
        bar.update(2)
    assert out.getvalue() == ""
    monkeypatch.setenv("FLAXBERT_PROGRESS_SECONDS", "soon")
    with pytest.raises(ValueError, match="FLAXBERT_PROGRESS_SECONDS='soon' must be a number"):
        line_interval()


def test_cpp_records_below_the_level_are_dropped():
    """TensorFlow's start-up lines, as TF 2.21 writes them during `import tensorflow`."""
    from flaxbert.quiet import drop_cpp_records
    startup = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796306493.067099   15442 port.cc:153] oneDNN custom operations are on.\n"
        "I0000 00:00:1796306493.253965   15442 cpu_feature_guard.cc:227] This TensorFlow binary "
        "is optimized to use available CPU instructions in performance-critical operations.\n"
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
        "with the appropriate compiler flags.\n")
    kept = ("/site-packages/x.py:3: UserWarning: something new\n"
            "E0000 00:00:1796306493.3   15442 dso_loader.cc:2] a real error\n")
    assert drop_cpp_records(startup + kept, 2) == kept
    assert drop_cpp_records(startup + kept, 0) == startup + kept


def test_an_installed_libtpu_without_a_tpu_is_not_probed():
    """The `tpu` extra (flaxbert compile) installs libtpu; on a machine without TPU chips JAX
    would probe it at start-up and print its failure. quiet_startup runs on the CPU instead,
    and leaves an explicit JAX_PLATFORMS alone."""
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (the tpu extra)")
    probe = ("import os; from flaxbert.quiet import quiet_startup; quiet_startup(False); "
             "import jax; print(os.environ.get('JAX_PLATFORMS'), jax.devices()[0].platform)")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["cpu", "cpu"] and run.stderr == ""
    explicit = ("import os; os.environ['JAX_PLATFORMS'] = 'cpu,tpu'; "
                "from flaxbert.quiet import skip_absent_tpu; "
                "print(skip_absent_tpu(), os.environ['JAX_PLATFORMS'])")
    run = subprocess.run([sys.executable, "-c", explicit], env=env, capture_output=True, text=True)
    assert run.stdout.split() == ["False", "cpu,tpu"], run.stderr
