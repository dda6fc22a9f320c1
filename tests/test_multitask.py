"""Multi-task fine-tuning: the task sampler's frequencies, a two-task run on one shared encoder
that learns both tasks (different label sets, one a GLUE-format file), its bit-identical resume,
its per-task transformers exports, and bad configs refused in one line."""
import json
import shutil
from pathlib import Path

import flax.linen
import numpy as np
import pytest
import torch
import transformers
from scipy import stats

import flaxbert
from conftest import set_fields
from flaxbert.training.finetune import finetune, finetune_config
from flaxbert.training.multitask import (MultiTaskData, TaskSampler, task_block,
                                         task_probabilities)
from flaxbert.training.sources import data_source

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"]
MARKER = "zebra"
COLOURS = ["red", "green", "blue"]
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


# ----------------------------------------------------------------------------- sampler

@pytest.mark.parametrize("sampling,temperature", [("proportional", 1.0), ("temperature", 2.0),
                                                  ("temperature", 0.5), ("temperature", 1e6)])
def test_sampler_frequencies_follow_the_probabilities(sampling, temperature):
    sizes = [6000, 1500, 500]
    p = task_probabilities(sizes, sampling, temperature)
    power = 1.0 if sampling == "proportional" else 1.0 / temperature
    expected = np.power(sizes, power) / np.power(sizes, power).sum()
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    if temperature == 1e6:
        np.testing.assert_allclose(p, 1 / 3, atol=1e-5)  # a large T is uniform
    n = 20_000
    tasks = TaskSampler(p, seed=3).tasks(0, n)
    counts = np.bincount(tasks, minlength=3)
    # The seeded sequence is fixed, so this is no flaky test: it checks the draw follows p.
    assert stats.chisquare(counts, p * n).pvalue > 1e-3, (counts, p * n)
    assert np.all(np.abs(counts / n - p) < 4 * np.sqrt(p * (1 - p) / n))


def test_sampler_depends_only_on_seed_and_step():
    p = task_probabilities([10, 30], "proportional")
    a, b = TaskSampler(p, 7), TaskSampler(p, 7)
    assert [a.task_at(s) for s in range(499, 399, -1)] == list(b.tasks(400, 500)[::-1])
    assert not np.array_equal(a.tasks(0, 200), TaskSampler(p, 8).tasks(0, 200))
    np.testing.assert_allclose(task_probabilities([1, 3, 6]), [0.1, 0.3, 0.6])
    # n^(1/T) would overflow float64 here; the probabilities stay exact.
    np.testing.assert_allclose(task_probabilities([10 ** 6, 10 ** 5], "temperature", 0.01),
                               [1.0, 0.0], atol=1e-12)


# ----------------------------------------------------------------------------- objective

def test_the_loss_is_each_rows_own_task_head_as_a_single_task_model_scores_it():
    """Rows of task 1 (3 labels) and task 0 (2 labels) in one batch: loss and logits equal the
    single-task objective on each exported single-task model, on that task's rows."""
    import jax

    from flaxbert.models.multitask import single_task
    from flaxbert.training.objectives import get_objective
    config = flaxbert.get_config("bert-tiny", hidden_size=32, intermediate_size=64,
                                 num_attention_heads=4, num_hidden_layers=1)
    tasks = (("yesno", ("no", "yes")), ("colour", ("blue", "green", "red")))
    objective = get_objective("multitask_classification", config, {"tasks": tasks})
    rs = np.random.RandomState(0)
    batch = {"input_ids": rs.randint(5, 100, (4, 12)).astype(np.int32),
             "attention_mask": np.ones((4, 12), np.int32),
             "token_type_ids": np.zeros((4, 12), np.int32),
             "labels": np.array([2, 1, 0, 1], np.int32),
             "task_id": np.array([1, 0, 1, 0], np.int32),
             "example_weights": np.ones(4, np.float32)}
    params = flax.linen.meta.unbox(jax.jit(objective.init)(jax.random.PRNGKey(0), batch))["params"]
    assert sorted(params["heads"]) == ["colour", "yesno"]

    task_rows = [np.flatnonzero(batch["task_id"] == task) for task in range(len(tasks))]

    @jax.jit
    def both(params, batch):
        """The multi-task loss and logits; each task's single-task ones on its rows."""
        singles = []
        for task, (name, labels) in enumerate(tasks):
            model, part = single_task(objective.model, params, name, labels)
            single = get_objective("classification", model.config)
            mine = {k: v[task_rows[task]] for k, v in batch.items() if k != "task_id"}
            singles.append((single.loss(part, mine, deterministic=True)[0],
                            single.logits(part, mine)))
        return objective.loss(params, batch, deterministic=True)[0], \
            objective.logits(params, batch), singles

    loss, padded, singles = jax.device_get(both(params, batch))
    total = 0.0
    for (task_loss, logits), rows, (_, labels) in zip(singles, task_rows, tasks):
        total += len(rows) * float(task_loss)
        np.testing.assert_allclose(padded[rows, :len(labels)], logits, rtol=1e-5, atol=1e-6)
        assert (padded[rows, len(labels):] < -1e8).all()
    np.testing.assert_allclose(float(loss), total / len(batch["labels"]), rtol=1e-5)
    with pytest.raises(ValueError, match="needs batch key"):
        jax.eval_shape(lambda p: objective.loss(p, {k: v for k, v in batch.items()
                                                    if k != "task_id"}, deterministic=True),
                       params)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random BERT with a WordPiece tokenizer trained on the tasks' words."""
    from flaxbert.tokenizer_training import train_tokenizer
    root = tmp_path_factory.mktemp("multitask")
    corpus = root / "corpus.txt"
    rs = np.random.RandomState(0)
    vocabulary = WORDS + [MARKER] + COLOURS
    corpus.write_text("\n".join(" ".join(rs.choice(vocabulary, 8)) for _ in range(300)) + "\n")
    train_tokenizer([corpus], root / "tok", "wordpiece", 120, min_frequency=1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "tok")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(root / "model")
    for f in (root / "tok").iterdir():
        shutil.copy(f, root / "model" / f.name)
    return root / "model"


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    """polarity: a GLUE SST-2 TSV (label ids 0/1: is the marker in the sentence?), 384
    training rows; colour: JSONL, which of three colour words the sentence holds, 128 rows."""
    root = tmp_path_factory.mktemp("tasks")
    rs = np.random.RandomState(1)
    for split, n in (("train", 384), ("dev", 64)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            words, label = list(rs.choice(WORDS, rs.randint(4, 9))), int(rs.rand() < 0.5)
            if label:
                words.insert(rs.randint(len(words) + 1), MARKER)
            lines.append(f"{' '.join(words)}\t{label}")
        (root / f"polarity_{split}.tsv").write_text("\n".join(lines) + "\n")
    for split, n in (("train", 128), ("dev", 48)):
        rows = []
        for _ in range(n):
            words, colour = list(rs.choice(WORDS, rs.randint(4, 9))), str(rs.choice(COLOURS))
            words.insert(rs.randint(len(words) + 1), colour)
            rows.append({"text": " ".join(words), "colour": colour})
        (root / f"colour_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _config(model, files, **fields):
    c = finetune_config(model=str(model), objective="multitask_classification")
    c.data.train = "polarity,colour"
    c.multitask.tasks.polarity = task_block(glue="sst2", train=files / "polarity_train.tsv",
                                            validation=files / "polarity_dev.tsv")
    c.multitask.tasks.colour = task_block(train=files / "colour_train.jsonl",
                                          validation=files / "colour_dev.jsonl",
                                          text_column="text", label_column="colour")
    c.multitask.sampling, c.multitask.temperature = "temperature", 2.0
    c.task.max_seq_length = 32
    c.model_overrides.hidden_dropout_prob = 0.1  # dropout on: the rng stream must resume too
    c.train.num_steps, c.train.global_batch_size, c.train.log_every = 160, 32, 20
    c.train.eval_every, c.train.progress_bar = 80, False
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 3e-3, 10
    c.checkpoint.save_every, c.checkpoint.keep, c.checkpoint.async_save = 80, None, False
    return set_fields(c, **fields)


# ----------------------------------------------------------------------------- data

def test_batches_come_from_the_sampled_task_and_resume_mid_stream(checkpoint, task_files):
    data = data_source(_config(checkpoint, task_files))
    assert isinstance(data, MultiTaskData) and data.names == ["polarity", "colour"]
    assert data.label_names == [("negative", "positive"), ("blue", "green", "red")]
    np.testing.assert_allclose(data.probabilities, np.sqrt([384, 128]) / np.sqrt([384, 128]).sum())
    sampler = data.sampler()
    stream = data.train_batches(None)
    first = [next(stream) for _ in range(30)]
    assert [int(b["task_id"][0]) for b in first] == list(sampler.tasks(0, 30))
    assert all((b["task_id"] == b["task_id"][0]).all() and len(b["task_id"]) == 32 for b in first)
    # Colour batches hold colour labels (3 classes); each task keeps its own position.
    assert max(int(b["labels"].max()) for b in first if b["task_id"][0] == 1) == 2
    saved = json.loads(json.dumps(stream.state()))
    counts = np.bincount(sampler.tasks(0, 30), minlength=2)
    assert [saved["tasks"][n]["next_batch"] for n in data.names] == list(counts)
    after = [next(stream) for _ in range(20)]
    resumed = data.train_batches(saved)
    for a, b in zip(after, (next(resumed) for _ in range(20))):
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="another task mix"):
        data_source(_config(checkpoint, task_files, **{"multitask.temperature": 3.0})
                    ).train_batches(saved)


# ----------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def trained(checkpoint, task_files, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "run"
    last = finetune(_config(checkpoint, task_files), workdir)
    return workdir, last


def test_two_tasks_learn_on_one_encoder_with_their_own_metrics(trained):
    workdir, last = trained
    # Chance: 0.5 (polarity) and 1/3 (colour).
    assert last["eval_polarity_accuracy"] >= 0.9, last
    assert last["eval_colour_accuracy"] >= 0.9, last
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_colour_accuracy" in r]
    assert [r["step"] for r in evals] == [80, 160]
    for r in evals:  # each task's whole validation set, its loss and its metrics
        assert r["eval_polarity_sequences"] == 64 and r["eval_colour_sequences"] == 48
        assert r["eval_polarity_loss"] > 0 and r["eval_colour_loss"] > 0
    from flaxbert.training.workdir import load_data_description
    kept = load_data_description(workdir)  # what an export from the workdir alone reads
    assert [(t["name"], t["labels"]) for t in kept["tasks"]] == [
        ("polarity", ["negative", "positive"]), ("colour", ["blue", "green", "red"])]


def test_resume_after_a_checkpoint_is_bit_identical(trained, checkpoint, task_files, tmp_path):
    """A copy of the run as if killed after its step-80 checkpoint resumes to the same
    weights and the same logged losses."""
    import jax

    from flaxbert.training.trainer import restore_params
    workdir, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "160")
    shutil.rmtree(copy / "export")
    finetune(_config(checkpoint, task_files, **{"train.eval_every": 0, "train.eval_batches": 0,
                                                "export.at_end": False}), copy)
    _, step_a, a = restore_params(workdir)
    _, step_b, b = restore_params(copy)
    assert step_a == step_b == 160
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    logged = [json.loads(ln) for ln in (copy / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged if "loss" in r] == [r["loss"] for r in reference
                                                          if "loss" in r]


def test_each_task_exports_a_transformers_classifier_with_the_same_logits(trained):
    from flaxbert.training.trainer import restore_params
    workdir, _ = trained
    trainer, _, params = restore_params(workdir)
    export = workdir / "export" / "step_160"
    assert sorted(p.name for p in export.iterdir()) == ["colour", "polarity"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(export / "colour")
    texts = ["alpha zebra bravo red", "charlie green delta", "blue echo golf hotel zebra"]
    enc = tokenizer(texts, padding=True, return_tensors="np")
    ours = trainer.objective.model.apply({"params": params}, enc["input_ids"],
                                         enc["attention_mask"], enc["token_type_ids"]).logits
    labels = {"polarity": {"0": "negative", "1": "positive"},
              "colour": {"0": "blue", "1": "green", "2": "red"}}
    for name in ("polarity", "colour"):
        config = json.loads((export / name / "config.json").read_text())
        assert config["id2label"] == labels[name]
        torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(
            export / name).eval()
        assert type(torch_model).__name__ == "BertForSequenceClassification"
        with torch.no_grad():
            theirs = torch_model(**{k: torch.as_tensor(v) for k, v in enc.items()}).logits
        np.testing.assert_allclose(np.asarray(ours[name]), theirs.numpy(), atol=1e-5)
    assert [labels["colour"][str(i)] for i in np.asarray(ours["colour"]).argmax(-1)] == \
        ["red", "green", "blue"]
    assert list(np.asarray(ours["polarity"]).argmax(-1)) == [1, 0, 1]


# ----------------------------------------------------------------------------- bad configs

@pytest.mark.parametrize("fields,message", [
    ({"data.train": "polarity,sentiment"}, r"data.train: task\(s\) \['sentiment'\] have no "
                                           r"multitask.tasks.<name> block"),
    ({"data.train": "polarity,colour,polarity"}, r"task\(s\) \['polarity'\] named more than once"),
    ({"multitask.tasks.colour.train": "/nonexistent/colour.jsonl"},
     r"multitask.tasks.colour.train: /nonexistent/colour.jsonl does not exist"),
    ({"multitask.tasks.polarity.validation": "/nonexistent/dev.tsv"},
     r"multitask.tasks.polarity.validation: /nonexistent/dev.tsv does not exist"),
    ({"multitask.temperature": 0.0}, r"multitask.temperature=0.0 must be a finite number > 0"),
    ({"multitask.temperature": -1.0}, r"multitask.temperature=-1.0 must be"),
    ({"multitask.sampling": "uniformly"}, r"multitask.sampling='uniformly'; choose one of"),
    ({"multitask.tasks.polarity.glue": "sst3"}, r"multitask.tasks.polarity.glue: unknown GLUE "
                                                r"task 'sst3'"),
    ({"multitask.tasks.polarity.glue": "stsb"}, r"multitask.tasks.polarity.glue='stsb' is a "
                                                r"regression task"),
    ({"multitask.tasks.colour.label_column": "shade"}, r"^multitask.tasks.colour: .*shade"),
    ({"data.validation": "x.tsv"}, r"data.validation: a multi-task run reads each task's own"),
])
def test_bad_config_is_one_clear_line(checkpoint, task_files, fields, message):
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        data_source(_config(checkpoint, task_files, **fields))
    assert "\n" not in str(error.value)
    assert error.match(message), str(error.value)


def test_recipe_is_a_valid_config(checkpoint):
    from flaxbert.training.cli import _load_config
    from flaxbert.training.config import check_config
    for arg in ("", ":tiny"):
        path, config = _load_config(f"{CONFIGS}/finetune_multitask.py{arg}")
        config.model = str(checkpoint)
        check_config(config, source=path)
        assert config.objective == "multitask_classification"
        assert all(n in config.multitask.tasks for n in config.data.train.split(","))
