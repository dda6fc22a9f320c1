"""flaxbert/demo.py's fine-tuning stage at its smallest: the module task built from the stdlib,
both fine-tunes (pre-trained and random initialisation) through the one Trainer, predictions
through the pipeline, and the plot of both runs. A tiny random BERT stands in for the demo's
pre-trained export; `make demo` itself is the measurement (README, the demo's last lines)."""
import json

import numpy as np
import pytest

from conftest import tiny_bert_checkpoint

from flaxbert.demo import (compare_finetuning, corpus_without, module_task, show_predictions,
                           stdlib_documents, write_jsonl)

MODULES = 3


@pytest.fixture(scope="module")
def documents():
    return stdlib_documents()


@pytest.fixture(scope="module")
def task(documents):
    return module_task(documents, modules=MODULES, per_module=20)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, task):
    root = tmp_path_factory.mktemp("demo")
    names, train, validation = task
    start = tiny_bert_checkpoint(root, [r["text"] for r in train], vocab_size=200)
    train_file = write_jsonl(root / "task" / "train.jsonl", train)
    validation_file = write_jsonl(root / "task" / "validation.jsonl", validation)
    return start, compare_finetuning(start, train_file, validation_file, root, config_arg="tiny")


def test_module_task_is_balanced_and_disjoint(documents, task):
    names, train, validation = task
    assert len(names) == MODULES and names == sorted(names)
    assert all(not n.startswith("_") and n != "pydoc_data" for n in names)
    for name in names:
        assert sum(r["label"] == name for r in validation) == 4  # 20% of 20
        assert sum(r["label"] == name for r in train) == 16
    assert not {r["text"] for r in train} & {r["text"] for r in validation}
    assert module_task(documents, modules=MODULES, per_module=20) == task  # seeded
    with pytest.raises(ValueError, match="at least 2"):
        module_task([("asyncio", "Run the event loop until the future is done.")])


def test_validation_docstrings_stay_out_of_pretraining(documents, task):
    _, train, validation = task
    corpus = {" ".join(doc.split("\n")) for doc in corpus_without(documents, validation)}
    assert not corpus & {r["text"] for r in validation}
    assert {r["text"] for r in train} <= corpus
    assert len(corpus_without(documents, [])) == len(documents)


@pytest.mark.slow  # two fine-tune processes: ~3 min on 2 cores
def test_both_starts_fine_tune_with_the_same_recipe(comparison, task):
    from safetensors.numpy import load_file
    start, results = comparison
    names, _, validation = task
    assert list(results) == ["pretrained", "random init"]
    for result in results.values():
        rows = [json.loads(ln) for ln in (result["workdir"] / "metrics.jsonl").read_text()
                .splitlines()]
        assert max(r["step"] for r in rows if "loss" in r) == 8  # demo_finetune.py:tiny's steps
        assert 0.0 <= result["metrics"]["eval_accuracy"] <= 1.0
        assert result["metrics"]["eval_sequences"] == len(validation)
        config = json.loads((result["export"] / "config.json").read_text())
        assert [config["id2label"][str(i)] for i in range(MODULES)] == names
    # The random start has the pre-trained one's architecture and tokenizer, not its weights.
    random_init = start.parent / "random_init"
    pretrained_config = json.loads((start / "config.json").read_text())
    random_config = json.loads((random_init / "config.json").read_text())
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size"):
        assert random_config[field] == pretrained_config[field]
    assert (random_init / "vocab.txt").read_text() == (start / "vocab.txt").read_text()
    ours, theirs = load_file(random_init / "model.safetensors"), load_file(start /
                                                                          "model.safetensors")
    word = next(k for k in theirs if k.endswith("word_embeddings.weight"))
    assert ours[word].shape == theirs[word].shape
    assert not np.allclose(ours[word], theirs[word])


@pytest.mark.slow  # two fine-tune processes: ~3 min on 2 cores
def test_predictions_and_plot_of_both_runs(comparison, task, tmp_path, capsys):
    from flaxbert.plot import plot_runs
    _, results = comparison
    names, _, validation = task
    answers = show_predictions(results["pretrained"]["export"], validation, count=3)
    assert len(answers) == 3 and all(a["label"] in names and 0 < a["score"] <= 1 for a in answers)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all("true " in line for line in printed)
    fig = plot_runs([r["workdir"] for r in results.values()], tmp_path / "demo_runs.png",
                    labels=list(results))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["train loss", "learning rate"] and "eval accuracy" in titles
    assert titles[-1] == "throughput (sequences/s)"
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["pretrained", "random init"]


def test_workdir_is_new_or_an_earlier_demo_replaced_only_with_overwrite(tmp_path):
    from flaxbert.demo import CORPUS_FILE, main, prepare_workdir
    fresh = prepare_workdir(str(tmp_path / "new"))
    assert fresh.is_dir() and not any(fresh.iterdir())
    assert prepare_workdir(str(fresh)) == fresh  # empty: fine
    (fresh / CORPUS_FILE).write_text("an earlier run\n")
    with pytest.raises(ValueError, match="pass --overwrite"):
        prepare_workdir(str(fresh))
    assert (fresh / CORPUS_FILE).is_file()  # refused: nothing touched
    assert not any(prepare_workdir(str(fresh), overwrite=True).iterdir())
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("not the demo's\n")
    with pytest.raises(ValueError, match="not an earlier demo's workdir"):
        prepare_workdir(str(theirs), overwrite=True)
    assert (theirs / "notes.txt").read_text() == "not the demo's\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        prepare_workdir(str(tmp_path / "file"))
    assert main(["--workdir", str(theirs)]) == 2  # the CLI: one line, exit 2, nothing run
