"""Fine-tuning losses equal transformers' own on the same weights: sequence classification (cross
entropy, and MSE when num_labels=1), token classification with -100 ignored, multiple choice; rows
of weight 0 change nothing."""
import jax
import numpy as np
import pytest
import torch
import transformers

import flaxbert
from conftest import TINY_HF, token_batch
from flaxbert.training.objectives import get_objective

CASES = [  # (transformers class, our objective, num_labels)
    ("BertForSequenceClassification", "classification", 3),
    ("BertForSequenceClassification", "classification", 1),
    ("BertForTokenClassification", "token_classification", 5),
    ("BertForMultipleChoice", "multiple_choice", 2),
]


def _batch(objective_name, num_labels, rs):
    ids, mask, types = token_batch(batch=3, length=11, vocab=99)
    if objective_name == "multiple_choice":
        ids, mask, types = (np.stack([x, np.roll(x, 1, axis=0)], axis=1) for x in (ids, mask, types))
        labels = rs.randint(0, 2, 3)
    elif objective_name == "token_classification":
        labels = np.where(mask == 1, rs.randint(0, num_labels, ids.shape), -100)
        labels[:, 0] = -100  # [CLS]
    elif num_labels == 1:
        labels = rs.randn(3).astype(np.float32)
    else:
        labels = rs.randint(0, num_labels, 3)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


@pytest.mark.parametrize("hf_class, name, num_labels", CASES)
def test_task_loss_equals_transformers(tmp_path, hf_class, name, num_labels):
    torch.manual_seed(0)
    hf = getattr(transformers, hf_class)(transformers.BertConfig(**TINY_HF, num_labels=num_labels))
    hf.eval().save_pretrained(tmp_path)
    task = get_objective(name, flaxbert.get_config("bert-tiny")).task
    model, params = flaxbert.from_pretrained(tmp_path, task)
    objective = get_objective(name, model.config)
    batch = _batch(name, num_labels, np.random.RandomState(1))
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v) for k, v in batch.items()}).loss.item()
    loss_fn = jax.jit(lambda p, b: objective.loss(p, b, deterministic=True)[0])
    assert float(loss_fn(params, batch)) == pytest.approx(ref, abs=1e-5)
    # A padding row of weight 0 (an evaluation's last batch) leaves the loss as it was.
    padded = {k: np.concatenate([v, v[:1]]) for k, v in batch.items()}
    padded["example_weights"] = np.array([1, 1, 1, 0], np.float32)
    assert float(loss_fn(params, padded)) == pytest.approx(ref, abs=1e-5)


def test_task_batches_are_checked():
    objective = get_objective("token_classification", flaxbert.get_config("bert-tiny"))
    ids = np.ones((2, 5), np.int32)
    with pytest.raises(ValueError, match=r"needs batch key\(s\) \['labels'\]"):
        objective.check_batch({"input_ids": ids, "attention_mask": ids})
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 5\), got \(2,\)"):
        objective.check_batch({"input_ids": ids, "attention_mask": ids, "labels": ids[:, 0]})
