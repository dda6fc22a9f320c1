"""kill -9 in the middle of `flaxbert finetune` (the real CLI, in a subprocess): rerunning the same
command resumes from the last checkpoint and continues the same run, so its per-step losses and
its final weights equal an uninterrupted run's bit for bit (dropout on, shuffled data: the rng
stream and the data position have to resume too)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import marker_tsv, tiny_bert_checkpoint

REPO = Path(__file__).resolve().parent.parent
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
MARKER = "zebra"
STEPS, SAVE_EVERY, KILL_AFTER = 30, 3, 8  # killed once step 8 is logged: checkpoints 3, 6


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny BERT directory (dropout on) and GLUE-style SST-2 files (label: does the marker word
    occur?)."""
    root = tmp_path_factory.mktemp("finetune_resume")
    rs = np.random.RandomState(0)
    model = tiny_bert_checkpoint(root, [" ".join(rs.choice(WORDS + [MARKER], 8))
                                        for _ in range(100)], vocab_size=80,
                                 hidden_dropout_prob=0.1)
    for split, n in (("train", 128), ("dev", 16)):
        marker_tsv(root / f"{split}.tsv", n, rs, WORDS, MARKER)
    return root, model


def _command(task, workdir):
    root, model = task
    return [sys.executable, "-m", "flaxbert.cli", "finetune", "--config",
            f"{REPO / 'configs' / 'finetune_glue.py'}:sst2,tiny", "--workdir", str(workdir),
            f"--config.model={model}", f"--config.data.train={root / 'train.tsv'}",
            f"--config.data.validation={root / 'dev.tsv'}", "--config.task.max_seq_length=32",
            f"--config.train.num_steps={STEPS}", "--config.train.global_batch_size=8",
            "--config.train.log_every=1", "--config.train.eval_every=0",
            "--config.train.best_metric=", "--config.train.progress_bar=False",
            f"--config.checkpoint.save_every={SAVE_EVERY}", "--config.export.at_end=False"]


def _rows(workdir) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


def _step_metrics(workdir) -> list[tuple]:
    """(step, loss, grad_norm, learning_rate) of every logged training step, in file order."""
    return [(r["step"], r["loss"], r["grad_norm"], r["learning_rate"])
            for r in _rows(workdir) if "grad_norm" in r]


def _final_params(workdir) -> dict:
    from flaxbert.training.trainer import restore_params
    _, step, params = restore_params(workdir)
    assert step == STEPS
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_kill_9_mid_finetune_then_rerun_continues_the_same_run(task, tmp_path):
    # One persistent compilation cache: the later processes reuse the first one's step.
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    straight = tmp_path / "straight"
    done = subprocess.run(_command(task, straight), cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = _step_metrics(straight)
    assert [r[0] for r in reference] == list(range(1, STEPS + 1))

    broken = tmp_path / "broken"
    proc = subprocess.Popen(_command(task, broken), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(r[0] >= KILL_AFTER for r in _step_metrics(broken)):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]  # killed, not finished
    killed_at = max(r[0] for r in _step_metrics(broken))
    assert KILL_AFTER <= killed_at < STEPS

    resumed = subprocess.run(_command(task, broken), cwd=REPO, env=env, text=True,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = int(resumed.stdout.split("resumed from checkpoint at step ")[1].split()[0])
    assert start % SAVE_EVERY == 0 and SAVE_EVERY <= start <= killed_at
    # The steps after the checkpoint ran twice; the log holds each step once, equal to the
    # uninterrupted run's to the last bit.
    assert _step_metrics(broken) == reference
    evaluations = [[r for r in _rows(w) if "eval_accuracy" in r] for w in (straight, broken)]
    assert len(evaluations[0]) == 1 and evaluations[1] == evaluations[0]
    ours, theirs = _final_params(broken), _final_params(straight)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert [p for p in broken.rglob("*") if "tmp" in p.name] == []  # nothing half-written left
