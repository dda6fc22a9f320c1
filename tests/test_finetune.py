"""Fine-tuning end to end on synthetic tasks that only a correct pipeline learns: sequence
classification (does a marker word occur?), token classification (a lexicon of entity words,
split into sub-words) and their exports, which transformers loads with identical logits."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import flaxbert
from conftest import marker_tsv, set_fields, tiny_bert_checkpoint
from flaxbert.training.finetune import finetune, finetune_config

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
         "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee"]
ENTITIES = ["zanzibar", "kathmandu", "ouagadougou", "reykjavik"]  # long: several sub-words
MARKER = "zebra"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random BERT with a WordPiece tokenizer trained on the task's words."""
    rs = np.random.RandomState(0)
    lines = [" ".join(rs.choice(WORDS + [MARKER], 8)) for _ in range(300)] + [" ".join(WORDS)] \
        + [" ".join(ENTITIES)]  # once: their letters are known, the words split into pieces
    return tiny_bert_checkpoint(tmp_path_factory.mktemp("finetune"), lines)


def _classification_files(root, rs):
    for split, n in (("train", 512), ("dev", 96)):
        rows = []
        for _ in range(n):
            words = list(rs.choice(WORDS, rs.randint(4, 10)))
            has = rs.rand() < 0.5
            if has:
                words.insert(rs.randint(len(words) + 1), MARKER)
            rows.append({"sentence": " ".join(words), "label": "yes" if has else "no"})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _config(model, root, **fields):
    c = finetune_config(model=str(model))
    c.data.train, c.data.validation = str(root / "train.jsonl"), str(root / "dev.jsonl")
    c.task.max_seq_length = 32
    c.train.num_steps, c.train.global_batch_size, c.train.log_every = 150, 32, 50
    c.train.eval_every, c.train.best_metric = 50, "eval_accuracy"
    c.train.progress_bar = False
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 3e-3, 10
    c.checkpoint.save_every, c.checkpoint.async_save = 50, False
    c.export.at_end = False
    return set_fields(c, **fields)


def test_sequence_classification_learns_and_exports_for_transformers(checkpoint, tmp_path):
    _classification_files(tmp_path, np.random.RandomState(1))
    workdir = tmp_path / "run"
    last = finetune(_config(checkpoint, tmp_path), workdir)
    assert last["eval_accuracy"] >= 0.95, last
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [50, 100, 150]
    assert all(r["eval_sequences"] == 96 for r in evals)  # the whole dev set, every time
    best = max(evals, key=lambda r: r["eval_accuracy"])

    # The best model is a transformers directory with the label names and the tokenizer.
    export = workdir / "export" / "best"
    config = json.loads((export / "config.json").read_text())
    assert config["id2label"] == {"0": "no", "1": "yes"} and config["label2id"]["yes"] == 1
    torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    texts = ["alpha zebra bravo", "charlie delta echo golf"]
    enc = tokenizer(texts, padding=True, return_tensors="np")
    model, params = flaxbert.from_pretrained(export)
    ours = np.asarray(model.apply({"params": params}, enc["input_ids"], enc["attention_mask"],
                                  enc["token_type_ids"]).logits)
    with torch.no_grad():
        theirs = torch_model(**{k: torch.as_tensor(v) for k, v in enc.items()}).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert [torch_model.config.id2label[i] for i in theirs.argmax(-1)] == ["yes", "no"]
    # The kept model is the best evaluation's, not the last one's.
    dev = [json.loads(ln) for ln in (tmp_path / "dev.jsonl").read_text().splitlines()]
    enc = tokenizer([r["sentence"] for r in dev], padding=True, truncation=True, max_length=32,
                    return_tensors="np")  # as the run truncated them
    predicted = np.asarray(model.apply({"params": params}, enc["input_ids"],
                                       enc["attention_mask"]).logits).argmax(-1)
    accuracy = np.mean([model.config.id2label[p] == r["label"] for p, r in zip(predicted, dev)])
    assert accuracy == pytest.approx(best["eval_accuracy"], abs=1e-6)


def test_token_classification_learns_entities_over_subwords(checkpoint, tmp_path):
    rs = np.random.RandomState(2)
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    pieces = [tok.tokenize(e) for e in ENTITIES]  # the alignment is really exercised
    assert all(len(p) > 1 and tok.unk_token not in p for p in pieces), pieces
    for split, n in (("train", 512), ("dev", 64)):
        rows = []
        for _ in range(n):
            words = list(rs.choice(WORDS, rs.randint(4, 9)))
            for _ in range(rs.randint(0, 3)):
                words.insert(rs.randint(len(words) + 1), str(rs.choice(ENTITIES)))
            tags = ["B-LOC" if w in ENTITIES else "O" for w in words]
            rows.append({"tokens": words, "ner_tags": tags})
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    last = finetune(_config(checkpoint, tmp_path, objective="token_classification",
                            **{"train.best_metric": "eval_f1", "train.num_steps": 100}),
                    tmp_path / "run")
    assert last["eval_f1"] >= 0.93, last  # 0.944-0.946 in runs here; untrained ~0
    config = json.loads((tmp_path / "run" / "export" / "best" / "config.json").read_text())
    assert sorted(config["label2id"]) == ["B-LOC", "O"]


def test_cli_finetune_evaluate_and_predict(checkpoint, tmp_path, capsys):
    """The real commands on a GLUE-style TSV (label ids 0 / 1, as GLUE's files hold them)."""
    from flaxbert.cli import main
    rs = np.random.RandomState(3)
    for split, n in (("train", 256), ("dev", 48)):
        marker_tsv(tmp_path / f"{split}.tsv", n, rs, WORDS, MARKER)
    workdir = tmp_path / "run"
    assert main(["finetune", "--config", f"{CONFIGS}/finetune_glue.py:sst2,tiny", "--workdir",
                 str(workdir), f"--config.model={checkpoint}",
                 f"--config.data.train={tmp_path / 'train.tsv'}",
                 f"--config.data.validation={tmp_path / 'dev.tsv'}",
                 "--config.task.max_seq_length=32", "--config.train.progress_bar=False",
                 "--config.export.at_end=False", "--config.checkpoint.async_save=False"]) == 0
    assert "best model" in capsys.readouterr().out
    best = workdir / "export" / "best"
    assert json.loads((best / "config.json").read_text())["id2label"] == {
        "0": "negative", "1": "positive"}
    logged = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    best_accuracy = max(r["eval_accuracy"] for r in logged if "eval_accuracy" in r)
    assert best_accuracy >= 0.9

    # evaluate: the same number from the exported directory alone.
    assert main(["evaluate", str(best), "--data", str(tmp_path / "dev.tsv"), "--glue", "sst2",
                 "--max-seq-length", "32", "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["eval_accuracy"] == pytest.approx(best_accuracy, abs=1e-6)
    assert main(["evaluate", str(best), "--data", str(tmp_path / "dev.tsv"), "--glue", "sst2",
                 "--output", str(tmp_path / "m.json")]) == 2  # refuses to replace it
    # predict: one line per row, in order, labels by name.
    capsys.readouterr()
    assert main(["predict", str(best), "--data", str(tmp_path / "dev.tsv"), "--output",
                 str(tmp_path / "p.jsonl")]) == 0
    predictions = [json.loads(ln) for ln in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(predictions) == 48
    assert {p["label"] for p in predictions} <= {"negative", "positive"}


@pytest.mark.parametrize("recipe", ["finetune_glue.py:mnli", "finetune_glue.py:stsb,tiny",
                                    "finetune_glue.py:tiny", "finetune_ner.py",
                                    "finetune_ner.py:tiny", "finetune_swag.py",
                                    "finetune_swag.py:tiny", "finetune_squad.py",
                                    "finetune_squad.py:v2", "finetune_squad.py:v2,tiny"])
def test_every_finetune_recipe_is_a_valid_config(checkpoint, recipe):
    from flaxbert.training.cli import _load_config
    from flaxbert.training.config import check_config
    path, config = _load_config(f"{CONFIGS}/{recipe}")
    config.model, config.data.train = str(checkpoint), "train.csv"
    check_config(config, source=path)
    assert config.task and config.train.best_metric.startswith("eval_")


@pytest.mark.slow  # two more fine-tuning runs (~1 min each here); test_peft covers the layers
@pytest.mark.parametrize("peft", ["lora", "houlsby"])
def test_peft_fine_tuning_trains_only_its_weights_and_exports(checkpoint, tmp_path, peft):
    """LoRA / adapters through the same trainer: the base weights stay bit-identical; LoRA is
    merged into a plain transformers export, adapters are saved on their own."""
    import jax

    import flaxbert.peft
    from flaxbert.layers.peft import is_peft_path
    from flaxbert.training.trainer import restore_params
    _classification_files(tmp_path, np.random.RandomState(4))
    c = _config(checkpoint, tmp_path, **{"model_overrides.peft": peft, "train.num_steps": 20,
                                         "train.eval_every": 20, "checkpoint.save_every": 20})
    finetune(c, tmp_path / "run")
    _, _, trained = restore_params(tmp_path / "run")
    _, base = flaxbert.from_pretrained(checkpoint, task="sequence-classification")
    trained_flat = {"/".join(str(k.key) for k in p): v for p, v in
                    jax.tree_util.tree_flatten_with_path(trained)[0]}
    base_flat = {"/".join(str(k.key) for k in p): v for p, v in
                 jax.tree_util.tree_flatten_with_path(base)[0]}
    frozen = [k for k in base_flat if k.startswith("backbone/") and "pooler" not in k]
    assert frozen and all(np.array_equal(base_flat[k], trained_flat[k]) for k in frozen)
    new = [k for k in trained_flat if is_peft_path(k.split("/"))]
    assert new and any(np.abs(np.asarray(trained_flat[k])).sum() > 0 for k in new)
    best = tmp_path / "run" / "export" / "best"
    if peft == "lora":
        torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(best).eval()
        model, params = flaxbert.from_pretrained(best)
        ids = np.array([[2, 10, 11, 12, 3]])
        with torch.no_grad():
            theirs = torch_model(torch.as_tensor(ids)).logits.numpy()
        np.testing.assert_allclose(np.asarray(model.apply({"params": params}, ids).logits),
                                   theirs, atol=1e-5)
    else:
        model, params = flaxbert.peft.load_peft(best, checkpoint)
        assert model.config.peft == "houlsby" and (best / "tokenizer.json").is_file()


def test_early_stopping_ends_the_run_and_a_rerun_trains_no_further(checkpoint, tmp_path):
    """With a learning rate too small to change any prediction, the first evaluation stays the
    best: patience 2 stops the run at the third evaluation, keeps the first one's export as
    best, and running the same workdir again trains no further step."""
    _classification_files(tmp_path, np.random.RandomState(5))
    c = _config(checkpoint, tmp_path, **{"train.num_steps": 100, "train.eval_every": 10,
                                         "train.log_every": 10, "checkpoint.save_every": 10,
                                         "train.early_stopping_patience": 2,
                                         "optimizer.learning_rate": 1e-12,
                                         "optimizer.warmup_steps": 0})
    workdir = tmp_path / "run"
    finetune(c, workdir)
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [10, 20, 30]
    assert max(r["step"] for r in rows) == 30
    assert (workdir / "export" / "best" / "config.json").exists()
    finetune(c, workdir)  # the stopped run is finished
    again = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in again) == 30


def test_seeded_fine_tuning_is_reproducible_and_a_resume_is_bit_identical(checkpoint, tmp_path):
    """The same config twice gives the same weights bit for bit; a run stopped at step 10 and
    resumed from its checkpoint to step 20 ends with the same weights as one run of 20 steps
    (dropout on, so the rng stream has to resume too)."""
    import jax

    from flaxbert.training.trainer import restore_params
    _classification_files(tmp_path, np.random.RandomState(6))
    fields = {"train.num_steps": 20, "train.eval_every": 0, "train.log_every": 10,
              "checkpoint.save_every": 10, "train.best_metric": "",
              "model_overrides.hidden_dropout_prob": 0.1}
    results = {}
    for name in ("a", "b"):
        finetune(_config(checkpoint, tmp_path, **fields), tmp_path / name)
        results[name] = restore_params(tmp_path / name)[2]
    finetune(_config(checkpoint, tmp_path, **{**fields, "train.num_steps": 10}), tmp_path / "c")
    finetune(_config(checkpoint, tmp_path, **fields), tmp_path / "c")  # resumes at step 10
    results["c"] = restore_params(tmp_path / "c")[2]
    leaves = {k: jax.tree_util.tree_leaves(v) for k, v in results.items()}
    for name in ("b", "c"):
        assert len(leaves[name]) == len(leaves["a"])
        for x, y in zip(leaves["a"], leaves[name]):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)
    logged = [json.loads(ln) for ln in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged if "loss" in r] == [r["loss"] for r in reference if "loss" in r]
    # Without dropout, train.seed is what makes two runs differ: it seeds the fresh head.
    heads = {}
    for seed in (0, 1):
        finetune(_config(checkpoint, tmp_path, **{**fields, "train.num_steps": 1,
                                                  "optimizer.warmup_steps": 0,
                                                  "model_overrides.hidden_dropout_prob": 0.0,
                                                  "train.seed": seed}), tmp_path / f"seed{seed}")
        heads[seed] = np.asarray(restore_params(tmp_path / f"seed{seed}")[2]["classifier"]
                                 ["dense"]["kernel"])
    assert heads[0].shape == heads[1].shape and not np.allclose(heads[0], heads[1])
