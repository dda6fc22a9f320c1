"""Fine-tuning on packed rows (task.pack): a packed batch has the loss and the gradient of the
same examples padded (sequence classification and regression from each example's own [CLS],
token classification), a packed run learns, `real_token_fraction` is logged either way, and
what cannot pack is refused in one line."""
import json
import math

import flax.linen as nn
import jax
import numpy as np
import pytest

import flaxbert
from conftest import set_fields, tiny_bert_checkpoint
from flaxbert.packing import packing_conventions
from flaxbert.tasks.batching import TaskBatches
from flaxbert.tasks.labels import IGNORE_INDEX
from flaxbert.training.config import check_config
from flaxbert.training.finetune import finetune, finetune_config
from flaxbert.training.objectives import get_objective
from flaxbert.training.sources import data_source
from test_finetune import ENTITIES, MARKER, WORDS, _classification_files, _config

MAX_LENGTH = 32


def _features(objective, config, rs, n=20):
    """Short random examples: a first token standing for [CLS], a few ids (never the pad id),
    token types in two halves where the family has them, and the objective's labels."""
    features = []
    for _ in range(n):
        length = int(rs.randint(3, 15))
        ids = rs.randint(3, config.vocab_size, length).astype(np.int32)
        types = (np.arange(length) >= length // 2).astype(np.int32) \
            if config.type_vocab_size > 1 else np.zeros(length, np.int32)
        feature = {"input_ids": ids, "token_type_ids": types}
        if objective == "token_classification":
            labels = rs.randint(0, config.num_labels, length).astype(np.int32)
            labels[0] = labels[rs.rand(length) < 0.3] = IGNORE_INDEX  # [CLS], later sub-words
            feature["labels"] = labels
        elif config.num_labels == 1:
            feature["labels"] = np.float32(rs.randn())
        else:
            feature["labels"] = np.int32(rs.randint(config.num_labels))
        features.append(feature)
    return features


# Smaller than the registered tiny sizes: one compile per case and shape stays quick.
SMALL = dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_attention_heads=2,
             max_position_embeddings=64, embedding_size=16, pooler_hidden_size=32)
SLOW = pytest.mark.slow  # the other families: same code path, one compile each
CASES = [  # (registered model, objective, num_labels)
    ("bert-tiny", "classification", 3),  # pooler per example
    ("bert-tiny", "classification", 1),  # regression
    ("bert-tiny", "token_classification", 4),
    ("roberta-tiny", "classification", 3),  # positions from padding_idx + 1, first-token head
    pytest.param("roberta-tiny", "token_classification", 4, marks=SLOW),
    pytest.param("distilbert-tiny", "classification", 2, marks=SLOW),
    pytest.param("albert-tiny", "classification", 2, marks=SLOW),
    pytest.param("electra-tiny", "classification", 2, marks=SLOW),
    pytest.param("deberta-v3-tiny", "classification", 2, marks=SLOW),  # relative positions
]


@pytest.mark.parametrize("model_name, objective_name, num_labels", CASES)
def test_packed_batch_has_the_loss_and_gradient_of_the_same_examples_padded(
        model_name, objective_name, num_labels):
    config = flaxbert.get_config(model_name)
    config = config.replace(num_labels=num_labels, **{k: v for k, v in SMALL.items()
                                                       if hasattr(config, k)})
    objective = get_objective(objective_name, config)
    features = _features(objective_name, config, np.random.RandomState(0))
    conventions = packing_conventions(objective.model)
    padded = next(TaskBatches(features, len(features), max_length=MAX_LENGTH,
                              pad_id=conventions["pad_id"], buckets=(MAX_LENGTH,), shuffle=False,
                              repeat=False))
    stream = TaskBatches(features, 8, max_length=MAX_LENGTH, shuffle=False, repeat=False,
                         pack=True, max_per_row=8, **conventions)
    assert len(stream.plan(0)) == 1  # every example in the one packed batch
    packed = next(stream)
    assert packed["input_ids"].shape == (8, MAX_LENGTH)
    assert (packed["segment_ids"].max(-1) > 1).any()  # rows really hold several examples
    assert int(packed["example_weights"].sum()) == len(features)

    params = nn.meta.unbox(jax.jit(objective.init)(jax.random.PRNGKey(0), padded))["params"]
    grad_fn = jax.jit(jax.value_and_grad(
        lambda p, b: objective.loss(p, b, deterministic=True), has_aux=True))
    (loss, metrics), grads = grad_fn(params, padded)
    (packed_loss, packed_metrics), packed_grads = grad_fn(params, packed)
    assert float(packed_loss) == pytest.approx(float(loss), abs=1e-5)
    assert float(loss) > 0.1  # random weights: a loss that could differ
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                           grads, packed_grads)
    assert float(jax.tree_util.tree_reduce(lambda a, b: a + b, jax.tree_util.tree_map(
        lambda g: float(np.abs(g).sum()), packed_grads))) > 0
    # The same tokens, fewer padded ones.
    real = sum(len(f["input_ids"]) for f in features)
    assert float(metrics["real_token_fraction"]) == pytest.approx(real / padded["input_ids"].size)
    assert float(packed_metrics["real_token_fraction"]) == pytest.approx(
        real / packed["input_ids"].size)


def test_packing_refuses_what_it_cannot_train_in_one_line():
    config = finetune_config(model="bert-tiny")
    config.data.train = "train.jsonl"
    config.task.pack = True
    check_config(config)  # classification packs: no refusal any more
    check_config(set_fields(config.copy_and_resolve_references(),
                            objective="token_classification"))
    for objective in ("multiple_choice", "question_answering"):
        with pytest.raises(ValueError, match=rf"^config: task.pack=True: objective "
                                             rf"'{objective}' cannot train on packed rows"):
            check_config(set_fields(config.copy_and_resolve_references(), objective=objective))
    with pytest.raises(ValueError, match=r"task.long_inputs='windows' cuts long ones"):
        check_config(set_fields(config.copy_and_resolve_references(),
                                **{"task.long_inputs": "windows"}))
    objective = get_objective("multiple_choice", flaxbert.get_config("bert-tiny"))
    batch = {"input_ids": np.ones((2, 2, 5), np.int32), "attention_mask": np.ones((2, 2, 5)),
             "labels": np.zeros(2, np.int32), "segment_ids": np.ones((2, 2, 5), np.int32)}
    with pytest.raises(ValueError, match="cannot train on packed rows"):
        objective.check_batch(batch)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """test_finetune's tiny BERT and WordPiece tokenizer."""
    rs = np.random.RandomState(0)
    lines = [" ".join(rs.choice(WORDS + [MARKER], 8)) for _ in range(300)] + [" ".join(WORDS)] \
        + [" ".join(ENTITIES)]
    return tiny_bert_checkpoint(tmp_path_factory.mktemp("pack"), lines)


def _logged(workdir, key):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def test_packed_fine_tuning_learns_and_logs_its_real_token_fraction(checkpoint, tmp_path):
    _classification_files(tmp_path, np.random.RandomState(1))
    packed = finetune(_config(checkpoint, tmp_path, **{
        "task.pack": True, "train.num_steps": 60, "train.eval_every": 30,
        "train.log_every": 10}), tmp_path / "packed")
    assert packed["eval_accuracy"] >= 0.95, packed  # test_finetune's bar for the padded run
    assert _logged(tmp_path / "packed", "eval_sequences") == [96, 96]  # evaluation: unpacked
    padded = finetune(_config(checkpoint, tmp_path, **{
        "train.num_steps": 10, "train.eval_batches": 0, "train.log_every": 10}),
        tmp_path / "padded")
    packed_fraction = _logged(tmp_path / "packed", "real_token_fraction")
    padded_fraction = _logged(tmp_path / "padded", "real_token_fraction")
    assert len(packed_fraction) == 6 and len(padded_fraction) == 1
    assert all(0 < f <= 1 for f in packed_fraction + padded_fraction)
    # 4-11 words of one or two pieces: rows of 32 hold two or three such examples.
    assert min(packed_fraction) > padded_fraction[0] + 0.2, (packed_fraction, padded_fraction)
    print(f"real_token_fraction: packed {np.mean(packed_fraction):.3f}, "
          f"padded to buckets {padded_fraction[0]:.3f}")
    assert padded["loss"] > 0


def _token_files(root, rs):
    for split, n in (("train", 256), ("dev", 32)):
        rows = []
        for _ in range(n):
            words = list(rs.choice(WORDS, rs.randint(3, 7)))
            words.insert(rs.randint(len(words) + 1), str(rs.choice(ENTITIES)))
            rows.append({"tokens": words,
                         "ner_tags": ["B-LOC" if w in ENTITIES else "O" for w in words]})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _token_config(checkpoint, root):
    return _config(checkpoint, root, objective="token_classification", **{
        "task.pack": True, "task.max_seq_length": 64, "train.num_epochs": 16,
        "train.eval_every": 0, "train.best_metric": "eval_f1"})


def test_epochs_count_packed_rows(checkpoint, tmp_path):
    _token_files(tmp_path, np.random.RandomState(2))
    config = _token_config(checkpoint, tmp_path)
    source = data_source(config)
    rows = source.train_batches(None).rows_per_epoch
    assert rows < len(source.train_features) / 2
    assert config.train.num_steps == math.ceil(16 * rows / 32)


@pytest.mark.slow
def test_packed_token_classification_learns(checkpoint, tmp_path):
    _token_files(tmp_path, np.random.RandomState(2))
    last = finetune(_token_config(checkpoint, tmp_path), tmp_path / "run")
    assert last["eval_f1"] >= 0.9, last


def test_a_model_without_segment_ids_is_refused(checkpoint, tmp_path):
    _classification_files(tmp_path, np.random.RandomState(1))
    config = _config("xlnet-tiny", tmp_path, **{"task.pack": True,
                                                "task.tokenizer": str(checkpoint)})
    with pytest.raises(ValueError, match=r"task.pack=True: XLNetForSequenceClassification "
                                         r"takes no segment ids"):
        data_source(config)
