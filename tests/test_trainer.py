"""The pre-training loop end to end on tiny models: every config file's objective trains, the CLI
runs and exports, kills and preemptions resume exactly, damaged checkpoints are skipped, and the
sharded step on 8 CPU devices gives the single-device losses."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_on_8_cpu_devices, set_fields

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from flaxbert.demo import stdlib_docstrings
    from flaxbert.tokenizer_training import train_tokenizer
    root = tmp_path_factory.mktemp("pretrain")
    text = root / "docs.txt"
    text.write_text("\n\n".join(stdlib_docstrings(limit=400)) + "\n", encoding="utf-8")
    train_tokenizer([text], root / "wordpiece", "wordpiece", 1000)
    train_tokenizer([text], root / "spm", "sentencepiece", 1000, style="xlnet")
    return root


def _prepared(corpus, mode, tokenizer="wordpiece", length=64):
    from flaxbert.data.prepare import prepare
    out = corpus / f"data-{mode}-{tokenizer}-{length}"
    if not out.exists():
        prepare([corpus / "docs.txt"], out, corpus / tokenizer, mode=mode, max_seq_length=length,
                num_shards=2, validation_fraction=0.05, workers=1)
    return out


def _config(path_arg: str, data_dir, **fields):
    """Load configs/<file>[:arg] as `flaxbert pretrain` does, and set small-run fields."""
    from ml_collections import config_flags  # noqa: F401  (the loader below is its own)
    import importlib.util
    file, _, arg = path_arg.partition(":")
    spec = importlib.util.spec_from_file_location("cfg", CONFIGS / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg) if arg else module.get_config()
    c.data.train = str(data_dir)
    c.train.progress_bar = False
    c.checkpoint.async_save = False
    c.export.at_end = False
    return set_fields(c, **fields)


def _losses(workdir) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "eval_loss" not in r}


# Each config file's :tiny variant with the data its objective needs. The three in `make test`
# cover what the trainer treats differently (pair labels; two exported models; unmasked data with
# special ids from the tokenizer); the rest run with `make test-slow` (~25 s each, mostly
# compiling). Every objective's loss also falls in tests/test_objectives.py.
RECIPES = [
    ("bert_base.py:tiny", "nsp", "wordpiece"),
    pytest.param("albert_base.py:tiny", "sop", "wordpiece", marks=pytest.mark.slow),
    pytest.param("roberta_base.py:tiny", "full-sentences", "wordpiece", marks=pytest.mark.slow),
    ("electra_small.py:tiny", "full-sentences", "wordpiece"),
    pytest.param("distilbert_base.py:tiny", "full-sentences", "wordpiece", marks=pytest.mark.slow),
    pytest.param("deberta_v3_base.py:tiny", "full-sentences", "wordpiece", marks=pytest.mark.slow),
    ("xlnet_base.py:tiny", "full-sentences", "spm"),
]
# Every config file and argument, at full size: each must build its model, objective and an
# abstract sharded train state (no compiling, no memory).
ALL_CONFIGS = ["bert_base.py:phase1", "bert_base.py:phase2", "bert_base.py:tiny",
               "roberta_base.py", "roberta_base.py:tiny", "albert_base.py", "albert_base.py:tiny",
               "electra_small.py", "electra_small.py:tiny", "electra_base.py",
               "distilbert_base.py", "distilbert_base.py:tiny", "xlnet_base.py",
               "xlnet_base.py:tiny", "deberta_v3_base.py", "deberta_v3_base.py:tiny", "demo.py"]
MODE_OF = {"mlm_nsp": "nsp", "mlm_sop": "sop"}


@pytest.mark.parametrize("recipe", ALL_CONFIGS)
def test_every_config_builds_its_train_state(recipe):
    import jax

    from flaxbert.models import registry
    from flaxbert.training.trainer import Trainer
    c = _config(recipe, "<synthetic>")
    model = registry.get_config(c.model)
    if c.objective == "distillation" and not c.objective_settings.teacher:
        # A registered name + seed stands in for the teacher directory a real run must give.
        c.objective_settings.teacher = "bert-base-uncased"
        c.objective_settings.teacher_seed = 0
    manifest = {"max_seq_length": 128, "mode": MODE_OF.get(c.objective, "full-sentences"),
                "tokenizer": {"vocab_size": model.vocab_size, "special_ids": {"pad": 0},
                              "all_special_ids": [0, 1, 2, 3, 4]}}
    trainer = Trainer(c, "/tmp/unused", manifest=manifest)
    abstract = trainer.abstract_state()
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract.params))
    family = registry.family_of(trainer.model_config)
    if c.objective != "rtd":
        # Parameters trained = the exported transformers model's parameters.
        (_, module, _), = trainer.objective.export(jax.tree_util.tree_map(
            lambda x: np.zeros(x.shape, x.dtype), abstract.params))
        assert n_params == sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
            jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                               **module.dummy_inputs())["params"])))
    assert family.name in ("bert", "roberta", "albert", "electra", "distilbert", "xlnet",
                           "deberta-v2")
    assert abstract.opt_state is not None and abstract.step.shape == ()


@pytest.mark.parametrize("recipe, mode, tokenizer", RECIPES)
def test_recipes_train_and_their_loss_falls(corpus, tmp_path, recipe, mode, tokenizer):
    from flaxbert.training.trainer import Trainer
    data = _prepared(corpus, mode, tokenizer)
    c = _config(recipe, data, **{"train.num_steps": 40, "train.global_batch_size": 16,
                                 "train.log_every": 1, "optimizer.warmup_steps": 3,
                                 "checkpoint.save_every": 100, "train.eval_batches": 0,
                                 "model_overrides.hidden_dropout_prob": 0.0,
                                 "model_overrides.attention_probs_dropout_prob": 0.0})
    Trainer(c, tmp_path).run()
    losses = _losses(tmp_path)
    first = np.mean([losses[s] for s in range(1, 6)])
    last = np.mean([losses[s] for s in range(36, 41)])
    assert np.isfinite(last)
    assert last < first - 0.3, f"{recipe}: mean loss of steps 1-5 {first:.3f}, 36-40 {last:.3f}"


def test_cli_pretrain_export_and_transformers_loads_it(corpus, tmp_path):
    import torch
    import transformers

    import flaxbert
    from flaxbert.cli import main
    data = tmp_path / "data"
    shutil.copytree(_prepared(corpus, "nsp"), data)
    workdir = tmp_path / "run"
    rc = main(["pretrain", "--config", f"{CONFIGS / 'bert_base.py'}:tiny", "--workdir",
               str(workdir), f"--config.data.train={data}", "--config.train.num_steps=6",
               "--config.train.global_batch_size=8", "--config.train.log_every=2",
               "--config.optimizer.warmup_steps=2",
               "--config.checkpoint.save_every=3", "--config.train.progress_bar=False",
               "--config.train.eval_batches=2"])
    assert rc == 0
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) \
        == [3, 6]
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r and "eval_loss" not in r] == [2, 4, 6]
    assert any("eval_loss" in r for r in rows)
    assert all(r["seq_per_s"] > 0 for r in rows if "seq_per_s" in r)
    export = workdir / "export" / "step_6"
    assert (export / "config.json").is_file() and (export / "tokenizer.json").is_file()

    # `flaxbert export` of an earlier step needs only the workdir (the data has moved away), and
    # PyTorch agrees with the trained flax weights.
    data.rename(tmp_path / "data-moved")
    out = tmp_path / "step3"
    assert main(["export", "--workdir", str(workdir), "--step", "3", "--output", str(out)]) == 0
    assert (out / "tokenizer.json").is_file()
    kept = out / "kept.txt"
    kept.write_text("a file of the user's")
    assert main(["export", "--workdir", str(workdir), "--step", "6", "--output", str(out)]) == 2
    assert kept.read_text() == "a file of the user's"  # refused, nothing replaced
    torch_model = transformers.BertForPreTraining.from_pretrained(out).eval()
    model, params = flaxbert.from_pretrained(out, task="pretraining")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = tok(["Return the number of items.", "Raise an error if the file is missing."],
              padding=True, return_tensors="np")
    ours = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"],
                       enc["token_type_ids"])
    with torch.no_grad():
        theirs = torch_model(**{k: torch.as_tensor(v) for k, v in enc.items()})
    np.testing.assert_allclose(np.asarray(ours.prediction_logits), theirs.prediction_logits.numpy(),
                               atol=2e-4)
    np.testing.assert_allclose(np.asarray(ours.seq_relationship_logits),
                               theirs.seq_relationship_logits.numpy(), atol=2e-4)

    # A later phase (BERT's 512-token phase 2, say) starts from an export with init_from.
    import jax

    from flaxbert.training.trainer import Trainer
    c = _config("bert_base.py:tiny", tmp_path / "data-moved",
                **{"init_from": str(out), "train.num_steps": 2,
                                              "optimizer.warmup_steps": 1})
    started = Trainer(c, tmp_path / "phase2").init_state()
    for a, b in zip(jax.tree_util.tree_leaves(started.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(started.step) == 0


def _pretrain_command(workdir, data, steps):
    return [sys.executable, "-m", "flaxbert.cli", "pretrain", "--config",
            f"{CONFIGS / 'bert_base.py'}:tiny", "--workdir", str(workdir),
            f"--config.data.train={data}", f"--config.train.num_steps={steps}",
            "--config.train.global_batch_size=8", "--config.train.log_every=1",
            "--config.optimizer.warmup_steps=2",
            "--config.checkpoint.save_every=3", "--config.train.progress_bar=False",
            "--config.export.at_end=False", "--config.train.eval_batches=0",
            "--config.data.shuffle_buffer=64"]


def _env(cache):
    # A shared persistent compilation cache: the resumed processes reuse the first one's step.
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _run_until(command, workdir, step, sig, env):
    """Start `command`, wait until metrics.jsonl reaches `step`, send `sig`; return the rc."""
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = Path(workdir) / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and max(_losses(workdir) or [0]) >= step:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def test_kill_and_preemption_resume_give_the_uninterrupted_losses(corpus, tmp_path):
    """SIGTERM (preemption: save and exit) then SIGKILL (no warning) then run to the end: every
    step's loss equals an uninterrupted run's."""
    from flaxbert.cli import main
    data = _prepared(corpus, "nsp")
    steps = 14
    straight = tmp_path / "straight"
    assert main(_pretrain_command(straight, data, steps)[3:]) == 0  # in this process
    reference = _losses(straight)
    assert sorted(reference) == list(range(1, steps + 1))

    broken = tmp_path / "broken"
    env = _env(tmp_path / "jax-cache")
    rc, out = _run_until(_pretrain_command(broken, data, steps), broken, 4, signal.SIGTERM, env)
    assert rc == 0, out[-2000:]
    assert "stopped by signal" in out
    stopped_at = max(_losses(broken))
    ckpts = sorted(int(p.name) for p in (broken / "checkpoints").iterdir() if p.name.isdigit())
    assert stopped_at in ckpts  # the preemption save, off the every-3 interval if need be

    rc, out = _run_until(_pretrain_command(broken, data, steps), broken, 10, signal.SIGKILL, env)
    assert rc == -signal.SIGKILL, out[-2000:]
    assert f"resumed from checkpoint at step {stopped_at}" in out

    result = subprocess.run(_pretrain_command(broken, data, steps), cwd=REPO, text=True,
                            capture_output=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resumed from checkpoint at step" in result.stdout
    # Steps re-run after the kill replace the rows the killed run wrote: each step once, in order.
    rows = [json.loads(ln) for ln in (broken / "metrics.jsonl").read_text().splitlines()]
    seen = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [s for s, _ in seen] == list(range(1, steps + 1))
    for step, loss in seen:
        assert loss == pytest.approx(reference[step], abs=1e-6), step
    # Nothing the killed run was writing is left behind.
    assert [p for p in broken.rglob("*") if "tmp" in p.name] == []


def test_damaged_checkpoint_falls_back_to_the_previous_one(corpus, tmp_path, caplog, capsys):
    from flaxbert.training.trainer import Trainer
    data = _prepared(corpus, "nsp")
    c = _config("bert_base.py:tiny", data, **{"train.num_steps": 4, "train.global_batch_size": 8,
                                              "optimizer.warmup_steps": 1,
                                              "checkpoint.save_every": 2,
                                              "checkpoint.keep": None,
                                              "train.eval_batches": 0})
    Trainer(c, tmp_path).run()
    ckpt = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["2", "4"]
    # Damage step 4: remove the array data of its state item.
    for f in (ckpt / "4" / "state").rglob("*"):
        if f.is_file() and "metadata" not in f.name:
            f.unlink()
    # A half-written save (what a kill during an async save leaves) must be ignored too.
    (ckpt / "6.orbax-checkpoint-tmp-1234").mkdir()
    c.train.num_steps = 6
    trainer = Trainer(c, tmp_path)
    with caplog.at_level("WARNING"):
        trainer.run()
    assert "step 4" in caplog.text and "damaged" in caplog.text
    assert "resumed from checkpoint at step 2" in capsys.readouterr().out
    # Rerunning a finished run resumes at its end and saves nothing twice.
    Trainer(c, tmp_path).run()
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["2", "4", "6"]
    assert len(list((tmp_path / "checkpoints.damaged").iterdir())) == 1


def test_missing_data_and_bad_values_give_clear_errors(corpus, tmp_path, capsys):
    from flaxbert.cli import main
    config = f"{CONFIGS / 'bert_base.py'}:tiny"
    assert main(["pretrain", "--config", config, "--workdir", str(tmp_path),
                 f"--config.data.train={tmp_path / 'nowhere'}"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["pretrain", "--config", config, "--workdir", str(tmp_path)]) == 2
    assert "data.train is empty" in capsys.readouterr().err
    data = _prepared(corpus, "nsp")
    assert main(["pretrain", "--config", config, "--workdir", str(tmp_path),
                 f"--config.data.train={data}", "--config.optimizer.name=sgd"]) == 2
    assert "optimizer.name='sgd'" in capsys.readouterr().err
    assert main(["pretrain", "--config", config, "--workdir", str(tmp_path),
                 f"--config.data.train={data}", "--config.train.num_steps=ten"]) == 2
    assert "num_steps" in capsys.readouterr().err
    # SOP objective on NSP data.
    assert main(["pretrain", "--config", f"{CONFIGS / 'albert_base.py'}:tiny", "--workdir",
                 str(tmp_path), f"--config.data.train={data}"]) == 2
    assert "--mode sop" in capsys.readouterr().err
    assert main(["pretrain", "--config", str(CONFIGS / "bert_base.py") + ":phase9",
                 "--workdir", str(tmp_path)]) == 2
    assert "phase9" in capsys.readouterr().err
    assert main(["export", "--workdir", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2


def test_one_process_per_workdir_and_a_dead_holder_is_taken_over(corpus, tmp_path, capsys):
    from flaxbert.cli import main
    from flaxbert.training.workdir import WorkdirLock
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from flaxbert.training.workdir import "
         f"WorkdirLock; WorkdirLock({str(workdir)!r}).acquire(); print('locked', flush=True); "
         "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc = main(["pretrain", "--config", f"{CONFIGS / 'bert_base.py'}:tiny", "--workdir",
                   str(workdir), f"--config.data.train={_prepared(corpus, 'nsp')}",
                   "--config.train.num_steps=2", "--config.optimizer.warmup_steps=1"])
        err = capsys.readouterr().err
        assert rc == 2 and f"in use by pid {holder.pid}" in err, err
        assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()
    finally:
        holder.kill()  # kill -9 leaves the lock file behind; the kernel dropped the lock
        holder.wait()
    with WorkdirLock(workdir):
        assert f"pid {os.getpid()}" in (workdir / "lock").read_text()
        with pytest.raises(BlockingIOError, match="in use by pid"):
            WorkdirLock(workdir).acquire()


MESH_SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from test_trainer import _config
from flaxbert.training.trainer import Trainer
from flaxbert.data.pipeline import BatchIterator

c = _config("bert_base.py:tiny", {data!r}, **{{"train.global_batch_size": 16,
            "model_overrides.vocab_size": 1024, "train.num_steps": 3,
            "optimizer.warmup_steps": 1}})
losses = {{}}
for mesh in [(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2)]:
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    devices = jax.devices()[:int(np.prod(mesh))]
    trainer = Trainer(c, "/tmp/unused", devices=devices)
    state = trainer.init_state()
    batches = trainer.batches()
    out = []
    for _ in range(3):
        state, metrics = trainer.train_step(state, next(batches))
        out.append(float(metrics["loss"]))
    losses[str(mesh)] = out
print(json.dumps(losses))
"""


def test_data_fsdp_and_tensor_parallel_steps_match_one_device(corpus):
    """Three train steps (dropout on) on meshes over 8 CPU devices give the 1-device losses."""
    data = _prepared(corpus, "nsp")
    out = run_on_8_cpu_devices(MESH_SCRIPT.format(tests=str(REPO / "tests"), data=str(data)))
    losses = json.loads(out.strip().splitlines()[-1])
    reference = losses.pop("(1, 1, 1)")
    for mesh, values in losses.items():
        np.testing.assert_allclose(values, reference, atol=1e-5, err_msg=mesh)


def test_a_forced_save_right_after_an_async_save_of_the_same_step_is_a_no_op(tmp_path):
    """A preemption that lands on a checkpoint step saves once (the async save may not be
    listed yet when the forced one comes)."""
    import jax.numpy as jnp

    from flaxbert.training.checkpoint import Checkpoints
    ckpt = Checkpoints(tmp_path, save_every=3, keep=2, async_save=True)
    state = {"w": jnp.arange(4.0)}
    assert not ckpt.save(2, state, {"next_batch": 2})
    assert ckpt.save(3, state, {"next_batch": 3})
    assert not ckpt.save(3, state, {"next_batch": 3}, force=True)
    assert ckpt.save(4, state, {"next_batch": 4}, force=True)
    ckpt.close()
    assert Checkpoints(tmp_path, save_every=3, keep=2).steps() == [3, 4]


def test_export_killed_anywhere_leaves_nothing_half_written(corpus, tmp_path):
    """kill -9 at random moments of `flaxbert export`: the output is absent or complete and
    loadable after each, and the next run leaves no temporary behind."""
    import flaxbert
    from flaxbert.training.trainer import Trainer
    c = _config("bert_base.py:tiny", _prepared(corpus, "nsp"),
                **{"train.num_steps": 1, "optimizer.warmup_steps": 0, "train.eval_batches": 0,
                   "train.global_batch_size": 8})
    Trainer(c, tmp_path / "run").run()
    out = tmp_path / "export"
    command = [sys.executable, "-m", "flaxbert", "export", "--workdir", str(tmp_path / "run"),
               "--output", str(out)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    started = time.perf_counter()
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    duration = time.perf_counter() - started
    shutil.rmtree(out)
    for delay in sorted(np.random.RandomState(0).uniform(0.5 * duration, duration, 2)):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        if out.exists():
            flaxbert.from_pretrained(out, task="pretraining")
            shutil.rmtree(out)
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    flaxbert.from_pretrained(out, task="pretraining")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export.")] == []


def test_evaluation_reads_the_whole_validation_split_whatever_the_batch(corpus, tmp_path):
    """Every validation sequence counts once (the last batch padded with rows of weight 0), so
    a per-sequence metric does not depend on the batch size."""
    from flaxbert.data.prepare import read_manifest
    from flaxbert.training.trainer import Trainer
    data = _prepared(corpus, "nsp")
    expected = read_manifest([data])["sequences"]["validation"]
    results = []
    for batch in (8, 24):
        assert expected % batch  # a partial last batch either way
        c = _config("bert_base.py:tiny", data, **{"train.global_batch_size": batch,
                                                  "train.num_steps": 1,
                                                  "optimizer.warmup_steps": 0})
        trainer = Trainer(c, tmp_path / str(batch))
        results.append(trainer.evaluate(trainer.init_state().params))
    for result in results:
        assert result["eval_sequences"] == expected
    for key in ("eval_nsp_loss", "eval_mlm_loss"):  # the same masks, whatever the batch
        assert results[0][key] == pytest.approx(results[1][key], abs=2e-6), key
    assert results[0]["eval_nsp_accuracy"] == pytest.approx(results[1]["eval_nsp_accuracy"])
