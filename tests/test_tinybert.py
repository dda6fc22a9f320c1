"""TinyBERT distillation (flaxbert/training/tinybert.py): each loss term equals a NumPy
re-derivation from the two models' own outputs on a fixed batch, the layer map picks the teacher
layers it says, the projections train but are not exported, and `flaxbert pretrain` runs the
general stage of configs/tinybert.py:tiny with the loss falling."""
import json
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

import flaxbert
from flaxbert.training.objectives import get_objective
from flaxbert.training.tinybert import PROJECTION, layer_map, uniform_layer_map
from conftest import pretrain_rows

REPO = Path(__file__).resolve().parent.parent
VOCAB = 99
# A 4-layer, 192-wide teacher of the 2-layer, 128-wide bert-tiny (2 heads each).
TEACHER = {"teacher": "bert-tiny", "teacher_seed": 1,
           "teacher_overrides": {"vocab_size": VOCAB, "num_hidden_layers": 4, "hidden_size": 192,
                                 "intermediate_size": 256}}


def test_uniform_and_explicit_layer_maps():
    assert uniform_layer_map(4, 12) == (3, 6, 9, 12)  # the paper's TinyBERT_4 of BERT-base
    assert uniform_layer_map(6, 12) == (2, 4, 6, 8, 10, 12)
    assert uniform_layer_map(3, 4) == (1, 2, 4)
    assert uniform_layer_map(2, 2) == (1, 2)
    assert layer_map(2, 4, ()) == (2, 4)
    assert layer_map(2, 4, (1, 3)) == (1, 3)
    with pytest.raises(ValueError, match="one teacher layer per student layer"):
        layer_map(2, 4, (1, 2, 3))
    with pytest.raises(ValueError, match="teacher layers are 1..4"):
        layer_map(2, 4, (0, 4))


def _batch(rows=3, length=12, predictions=4, seed=0):
    rs = np.random.RandomState(seed)
    mask = np.ones((rows, length), np.int32)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    return {"input_ids": (rs.randint(5, VOCAB, (rows, length)) * mask).astype(np.int32),
            "attention_mask": mask, "token_type_ids": np.zeros((rows, length), np.int32),
            "masked_positions": rs.randint(0, 5, (rows, predictions)).astype(np.int32),
            "masked_ids": rs.randint(5, VOCAB, (rows, predictions)).astype(np.int32),
            "masked_weights": np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], np.float32),
            "labels": np.array([0, 2, 1], np.int32)}


def _outputs(objective, params, frozen, batch):
    """The student's and the teacher's outputs, straight from their own apply, as NumPy."""
    tokens = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    extra = objective.head_inputs(batch)
    student = objective.model.apply(
        {"params": {k: v for k, v in params.items() if k != PROJECTION}}, *tokens,
        output_hidden_states=True, output_attentions=True, **extra)
    teacher = objective.teacher.apply({"params": frozen}, *tokens, output_hidden_states=True,
                                      output_attentions=True, **extra)
    return jax.tree_util.tree_map(np.asarray, (student, teacher))


def _reference(objective, params, student, teacher, batch, prediction_weights):
    """Each TinyBERT term re-derived in NumPy (float64)."""
    f = lambda x: np.asarray(x, np.float64)  # noqa: E731
    real = f(batch["attention_mask"])
    w_e = f(params[PROJECTION]["embedding"]["kernel"])
    w_h = f(params[PROJECTION]["hidden"]["kernel"])

    def mse(s, t):  # per token: mean over features; then the mean over the real tokens
        return np.sum(np.mean((f(s) - f(t)) ** 2, -1) * real) / real.sum()

    out = {"embedding": mse(f(student.hidden_states[0]) @ w_e, teacher.hidden_states[0])}
    mapping = objective.layer_map
    out["hidden"] = sum(mse(f(student.hidden_states[m]) @ w_h, teacher.hidden_states[n])
                        for m, n in enumerate(mapping, 1))
    att = 0.0
    for m, n in enumerate(mapping, 1):
        s, t = f(student.attentions[m - 1]), f(teacher.attentions[n - 1])  # (B, H, Q, K)
        per_query = np.zeros(real.shape)
        for b in range(real.shape[0]):
            keys = real[b] > 0
            per_query[b] = np.mean(np.mean((s[b][..., keys] - t[b][..., keys]) ** 2, -1), 0)
        att += np.sum(per_query * real) / real.sum()
    out["attention"] = att
    temperature = objective.settings["temperature"]

    def log_softmax(z):
        z = f(z) / temperature
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    ce = -np.sum(np.exp(log_softmax(teacher.logits)) * log_softmax(student.logits), -1)
    out["prediction"] = np.sum(ce * prediction_weights) / prediction_weights.sum()
    return out


@pytest.fixture(scope="module")
def general():
    config = flaxbert.get_config("bert-tiny").replace(vocab_size=VOCAB)
    # An explicit map that is not the uniform one (2, 4): the terms must read layers 1 and 3.
    objective = get_objective("tinybert", config, {
        **TEACHER, "layer_map": (1, 3), "temperature": 2.0, "alpha_embedding": 0.5,
        "alpha_hidden": 2.0, "alpha_attention": 3.0, "alpha_prediction": 0.25})
    batch = _batch()
    params = nn.meta.unbox(objective.init(jax.random.key(0), batch))["params"]
    frozen = objective.load_frozen()
    (loss, metrics), grads = jax.jit(jax.value_and_grad(
        lambda p: objective.loss(p, batch, deterministic=True, frozen=frozen),
        has_aux=True))(params)
    return objective, batch, params, frozen, loss, metrics, grads


def test_general_stage_terms_equal_a_numpy_rederivation(general):
    objective, batch, params, frozen, loss, metrics, _ = general
    assert objective.layer_map == (1, 3) and objective.projected
    student, teacher = _outputs(objective, params, frozen, batch)
    ref = _reference(objective, params, student, teacher, batch, batch["masked_weights"])
    for term, value in ref.items():
        np.testing.assert_allclose(float(metrics[f"{term}_loss"]), value, rtol=2e-5,
                                   err_msg=term)
    weights = {"embedding": 0.5, "hidden": 2.0, "attention": 3.0, "prediction": 0.25}
    np.testing.assert_allclose(float(loss), sum(weights[k] * v for k, v in ref.items()),
                               rtol=2e-5)
    # The terms are not trivially small on random models: each one is tested, not just 0 = 0.
    assert all(v > 1e-6 for v in ref.values()), ref
    # With the uniform map (2, 4) the hidden term differs: the map chooses the layers read.
    uniform = {**ref, "hidden": sum(
        np.mean(np.sum(np.mean((np.asarray(student.hidden_states[m], np.float64)
                                @ np.asarray(params[PROJECTION]["hidden"]["kernel"], np.float64)
                                - teacher.hidden_states[n]) ** 2, -1) * batch["attention_mask"])
                / batch["attention_mask"].sum()) for m, n in ((1, 2), (2, 4)))}
    assert abs(uniform["hidden"] - ref["hidden"]) > 1e-3


def test_projections_train_but_are_not_exported(general):
    objective, batch, params, _, _, _, grads = general
    assert np.abs(np.asarray(grads[PROJECTION]["hidden"]["kernel"])).max() > 0
    assert np.abs(np.asarray(grads[PROJECTION]["embedding"]["kernel"])).max() > 0
    assert params[PROJECTION]["hidden"]["kernel"].shape == (128, 192)
    (sub, module, exported), = objective.export(params)
    assert sub == "" and PROJECTION not in exported
    flaxbert.convert.hf.check_params(module, exported)
    # A saved student (what init_from / a fine-tuning start loads) gets fresh projections.
    completed = objective.complete_params(exported)
    assert jax.tree_util.tree_structure(completed) == jax.tree_util.tree_structure(params)


@pytest.mark.slow
def test_the_same_student_as_teacher_has_zero_intermediate_loss():
    """bert-tiny taught by itself (same seed, same width: no projection) loses nothing."""
    config = flaxbert.get_config("bert-tiny").replace(vocab_size=VOCAB)
    objective = get_objective("tinybert", config, {
        "teacher": "bert-tiny", "teacher_seed": 0, "alpha_prediction": 1.0,
        "teacher_overrides": {"vocab_size": VOCAB}})
    assert not objective.projected and objective.layer_map == (1, 2)
    params = objective.load_frozen()
    loss, metrics = jax.jit(lambda p: objective.loss(p, _batch(), deterministic=True,
                                                     frozen=p))(params)
    for term in ("embedding", "hidden", "attention"):
        assert float(metrics[f"{term}_loss"]) < 1e-10, term
    # Soft CE of identical distributions is their entropy, > 0; the MSE terms are 0.
    assert float(metrics["prediction_loss"]) > 0


@pytest.mark.slow
def test_task_stage_terms_equal_a_numpy_rederivation():
    config = flaxbert.get_config("bert-tiny").replace(vocab_size=VOCAB, num_labels=3)
    objective = get_objective("tinybert_task", config, {**TEACHER, "temperature": 1.5})
    assert objective.layer_map == (2, 4) and objective.teacher.config.num_labels == 3
    batch = {k: v for k, v in _batch().items() if not k.startswith("masked_")}
    params = nn.meta.unbox(objective.init(jax.random.key(0), batch))["params"]
    frozen = objective.load_frozen()
    loss, metrics = jax.jit(lambda p: objective.loss(p, batch, deterministic=True,
                                                     frozen=frozen))(params)
    student, teacher = _outputs(objective, params, frozen, batch)
    ref = _reference(objective, params, student, teacher, batch, np.ones(3))
    for term, value in ref.items():
        np.testing.assert_allclose(float(metrics[f"{term}_loss"]), value, rtol=2e-5,
                                   err_msg=term)
    np.testing.assert_allclose(float(loss), sum(ref.values()), rtol=2e-5)
    accuracy = np.mean(np.argmax(student.logits, -1) == batch["labels"])
    np.testing.assert_allclose(float(metrics["accuracy"]), accuracy)


def test_bad_settings_are_refused():
    config = flaxbert.get_config("bert-tiny").replace(vocab_size=VOCAB)
    with pytest.raises(ValueError, match="needs objective_settings.teacher"):
        get_objective("tinybert", config)
    with pytest.raises(ValueError, match="attention heads"):
        get_objective("tinybert", config, {"teacher": "bert-mini",
                                           "teacher_overrides": {"vocab_size": VOCAB}})
    with pytest.raises(ValueError, match="vocab_size"):
        get_objective("tinybert", config, {"teacher": "bert-tiny"})
    with pytest.raises(ValueError, match="alpha_hidden"):
        get_objective("tinybert", config, {**TEACHER, "alpha_hidden": -1.0})
    with pytest.raises(ValueError, match="nothing would be learned"):
        get_objective("tinybert", config, {**TEACHER, "alpha_embedding": 0.0, "alpha_hidden": 0.0,
                                           "alpha_attention": 0.0})
    # Only the terms that are on are computed, and only their projections made.
    hidden_only = get_objective("tinybert", config, {**TEACHER, "alpha_embedding": 0.0,
                                                     "alpha_attention": 0.0})
    assert list(hidden_only.init_projection(jax.random.key(0))) == ["hidden"]


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from flaxbert.data.prepare import prepare
    from flaxbert.demo import stdlib_docstrings
    from flaxbert.tokenizer_training import train_tokenizer
    root = tmp_path_factory.mktemp("tinybert")
    text = root / "docs.txt"
    text.write_text("\n\n".join(stdlib_docstrings(limit=200)) + "\n", encoding="utf-8")
    train_tokenizer([text], root / "wordpiece", "wordpiece", 500)
    prepare([text], root / "data", root / "wordpiece", mode="full-sentences", max_seq_length=32,
            num_shards=1, validation_fraction=0.05, workers=1)
    return root / "data"


def test_cli_general_stage_of_the_tiny_recipe_trains(prepared, tmp_path):
    rows = pretrain_rows(f"{REPO / 'configs' / 'tinybert.py'}:tiny", prepared, tmp_path / "run")
    first = np.mean([rows[s]["loss"] for s in range(1, 4)])
    last = np.mean([rows[s]["loss"] for s in range(28, 31)])
    assert last < 0.8 * first, (first, last)
    assert {"embedding_loss", "hidden_loss", "attention_loss"} <= set(rows[30])
    export = tmp_path / "run" / "export" / "step_30"
    model, params = flaxbert.from_pretrained(export, "masked-lm")
    assert PROJECTION not in params and model.config.num_hidden_layers == 2


WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"]
MARKER = "zebra"


@pytest.mark.slow
def test_cli_task_stage_intermediate_then_prediction(tmp_path):
    """The paper's task stage through `flaxbert finetune`: a fine-tuned 4-layer teacher, then
    a 2-layer, narrower student taught its layers (configs/tinybert.py:task), then its
    predictions (:task_prediction) from the first run's export."""
    from conftest import marker_tsv, tiny_bert_checkpoint

    from flaxbert.cli import main
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [MARKER]
    teacher_base = tiny_bert_checkpoint(tmp_path / "t", None, vocab=vocab, hidden_size=64,
                                        num_hidden_layers=4, intermediate_size=128)
    student = tiny_bert_checkpoint(tmp_path / "s", None, vocab=vocab)  # 2 x 32, 4 heads
    rs = np.random.RandomState(0)
    data = [f"--config.data.{split}={marker_tsv(tmp_path / f'{name}.tsv', n, rs, WORDS, MARKER)}"
            for split, name, n in (("train", "train", 256), ("validation", "dev", 64))]
    common = [*data, "--config.task.max_seq_length=16", "--config.train.progress_bar=False",
              "--config.checkpoint.async_save=False", "--config.train.log_every=5"]
    assert main(["finetune", "--config", f"{REPO / 'configs'}/finetune_glue.py:sst2,tiny",
                 "--workdir", str(tmp_path / "teacher"), f"--config.model={teacher_base}",
                 "--config.export.at_end=False", *common]) == 0
    teacher = tmp_path / "teacher" / "export" / "best"

    def distil(arg, model, workdir):
        assert main(["finetune", "--config", f"{REPO / 'configs'}/tinybert.py:{arg}",
                     "--workdir", str(workdir), f"--config.model={model}",
                     f"--config.objective_settings.teacher={teacher}", "--config.task.glue=sst2",
                     "--config.train.num_epochs=0", "--config.train.num_steps=60",
                     "--config.train.global_batch_size=16", "--config.train.eval_every=60",
                     "--config.optimizer.learning_rate=3e-3", *common]) == 0
        rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r for r in rows if "loss" in r and "eval_loss" not in r}, \
            [r for r in rows if "eval_accuracy" in r][-1]

    layers, _ = distil("task", student, tmp_path / "one")
    assert layers[60]["loss"] < 0.7 * layers[5]["loss"], layers
    assert layers[60].get("prediction_loss") is None  # the paper's first phase: layers only
    exported = tmp_path / "one" / "export" / "step_60"
    predictions, evaluation = distil("task_prediction", exported, tmp_path / "two")
    assert predictions[60]["loss"] < predictions[5]["loss"], predictions
    assert evaluation["eval_accuracy"] >= 0.8, evaluation


def test_task_stage_puts_the_teachers_labels_in_the_tasks_order():
    config = flaxbert.get_config("bert-tiny").replace(vocab_size=VOCAB, num_labels=3,
                                                      id2label=("neg", "neu", "pos"))
    settings = {**TEACHER, "teacher_overrides": {**TEACHER["teacher_overrides"],
                                                 "id2label": ("pos", "neg", "neu")}}
    objective = get_objective("tinybert_task", config, settings)
    assert objective.label_order == (1, 2, 0)  # student label i is teacher column order[i]
    same = get_objective("tinybert_task", config.replace(id2label=("pos", "neg", "neu")),
                         settings)
    assert same.label_order is None
    with pytest.raises(ValueError, match="are not the task's"):
        get_objective("tinybert_task", config.replace(id2label=("a", "b", "c")), settings)
    with pytest.raises(ValueError, match="num_labels=2"):
        get_objective("tinybert_task", config, {**TEACHER, "teacher_overrides": {
            **TEACHER["teacher_overrides"], "num_labels": 2}})


def test_the_recipe_builds_tinybert_4_with_its_projections():
    """configs/tinybert.py at full size: a 4 x 312 student of a 12 x 768 teacher (abstract: no
    weights are made), layers 3/6/9/12, W_e / W_h 312 -> 768 trained and not exported."""
    from flaxbert.recipes import tinybert
    from flaxbert.training.trainer import Trainer
    c = tinybert.get_config()
    c.data.train, c.objective_settings.teacher = "<synthetic>", "bert-base-uncased"
    manifest = {"max_seq_length": 128, "mode": "full-sentences",
                "tokenizer": {"vocab_size": 30522, "special_ids": {"pad": 0},
                              "all_special_ids": [0, 100, 101, 102, 103]}}
    trainer = Trainer(c, "/tmp/unused", manifest=manifest, load_frozen=False)
    assert trainer.objective.layer_map == (3, 6, 9, 12)
    params = trainer.abstract_state().params
    assert params[PROJECTION]["hidden"]["kernel"].shape == (312, 768)
    (_, module, exported), = trainer.objective.export(params)
    assert PROJECTION not in exported and module.config.num_hidden_layers == 4
    assert {tinybert.get_config(a).objective for a in ("tiny", "task", "task_prediction")} == {
        "tinybert", "tinybert_task"}
    assert tinybert.get_config("task_prediction").objective_settings.alpha_hidden == 0.0
    with pytest.raises(ValueError, match="tinybert.py: argument 'x'"):
        tinybert.get_config("x")
