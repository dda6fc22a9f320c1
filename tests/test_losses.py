"""flaxbert.training.losses against transformers' own losses (BertForPreTraining,
AlbertForPreTraining, ElectraForPreTraining, XLNetLMHeadModel) computed on the same logits, and
against torch's KLDivLoss / CosineEmbeddingLoss / CrossEntropyLoss where transformers has none."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from conftest import TINY_HF, token_batch
from flaxbert.models import permutation
from flaxbert.training import losses

TOL = 1e-5
# Called jitted, as a train step calls them (one compile each, not one per eager op).
masked_lm_loss = jax.jit(losses.masked_lm_loss, static_argnames="label_smoothing")
sentence_pair_loss = jax.jit(losses.sentence_pair_loss, static_argnames="prefix")
replaced_token_detection_loss = jax.jit(losses.replaced_token_detection_loss)
distillation_losses = jax.jit(losses.distillation_losses,
                              static_argnames=("temperature", "alpha_ce", "alpha_cos"))
permutation_lm_loss = jax.jit(losses.permutation_lm_loss)


def masked_slots(mask, slots=3, seed=0):
    """Distinct masked positions among each row's real tokens (never [CLS] at 0); the last slot
    of row 0 is a padding slot (position 0, id 0, weight 0)."""
    rs = np.random.RandomState(seed)
    positions = np.stack([np.sort(rs.choice(np.arange(1, int(m.sum())), slots, replace=False))
                          for m in mask])
    weights = np.ones(positions.shape, np.float32)
    positions[0, -1], weights[0, -1] = 0, 0.0
    return positions.astype(np.int32), weights


def labels_at(positions, weights, ids, length):
    """transformers' labels: the ids at the real masked positions, -100 elsewhere."""
    labels = np.full((len(ids), length), -100)
    for b in range(len(ids)):
        for p, w, i in zip(positions[b], weights[b], ids[b]):
            if w:
                labels[b, p] = i
    return labels


@pytest.mark.parametrize("cls,prefix,label_arg,output", [
    ("BertForPreTraining", "nsp", "next_sentence_label", "seq_relationship_logits"),
    ("AlbertForPreTraining", "sop", "sentence_order_label", "sop_logits"),
])
def test_mlm_plus_pair_loss_matches_transformers_pretraining(cls, prefix, label_arg, output):
    config_cls = transformers.BertConfig if cls.startswith("Bert") else transformers.AlbertConfig
    extra = {} if cls.startswith("Bert") else {"embedding_size": 16}
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config_cls(**TINY_HF, **extra)).eval()
    ids, mask, types = token_batch(batch=4, length=12)
    positions, weights = masked_slots(mask)
    masked_ids = np.random.RandomState(1).randint(1, 99, positions.shape) * (weights > 0)
    pair_label = np.array([0, 1, 1, 0])
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types),
                    labels=torch.tensor(labels_at(positions, weights, masked_ids, 12)),
                    **{label_arg: torch.tensor(pair_label)})
    logits = np.take_along_axis(out.prediction_logits.numpy(), positions[..., None], axis=1)
    mlm, mlm_metrics = masked_lm_loss(logits, masked_ids, weights)
    pair, pair_metrics = sentence_pair_loss(getattr(out, output).numpy(), pair_label,
                                                   prefix)
    assert abs(float(mlm + pair) - out.loss.item()) < TOL
    assert set(mlm_metrics) == {"mlm_loss", "mlm_accuracy", "mlm_tokens"}
    assert set(pair_metrics) == {f"{prefix}_loss", f"{prefix}_accuracy"}
    pair_ref = F.cross_entropy(getattr(out, output), torch.tensor(pair_label)).item()
    assert abs(float(pair_metrics[f"{prefix}_loss"]) - pair_ref) < TOL


def test_replaced_token_detection_matches_electra_for_pretraining():
    torch.manual_seed(0)
    model = transformers.ElectraForPreTraining(
        transformers.ElectraConfig(**TINY_HF, embedding_size=16)).eval()
    ids, mask, types = token_batch(batch=4, length=12)
    replaced = (np.random.RandomState(2).rand(4, 12) < 0.3).astype(np.int64) * mask
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types), labels=torch.tensor(replaced))
    loss, metrics = replaced_token_detection_loss(out.logits.numpy(), replaced, mask)
    assert abs(float(loss) - out.loss.item()) < TOL
    assert float(metrics["rtd_replaced_fraction"]) == pytest.approx(replaced.sum() / mask.sum())
    predicted = out.logits.numpy() > 0
    expected = ((predicted == (replaced > 0)) * mask).sum() / mask.sum()
    assert float(metrics["rtd_accuracy"]) == pytest.approx(expected, abs=1e-6)


def test_permutation_lm_loss_matches_xlnet_lm_head_model():
    torch.manual_seed(0)
    model = transformers.XLNetLMHeadModel(transformers.XLNetConfig(
        vocab_size=99, d_model=32, n_layer=2, n_head=4, d_inner=37)).eval()
    ids = np.random.RandomState(3).randint(7, 99, (3, 12))
    ids[2, :3] = 5  # left padding
    # K=2 with num_predict=6: row 2 (9 ordinary tokens) predicts 5, so its last label is -100.
    plm = permutation.partial_prediction_batch(ids, 0, K=2, pad_token_id=5, num_predict=6)
    assert (plm["labels"] == -100).any()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(plm["input_ids"]),
                    perm_mask=torch.tensor(plm["perm_mask"]),
                    target_mapping=torch.tensor(plm["target_mapping"]),
                    labels=torch.tensor(plm["labels"]))
    loss, metrics = permutation_lm_loss(out.logits.numpy(), plm["labels"])
    assert abs(float(loss) - out.loss.item()) < TOL
    assert float(metrics["plm_loss"]) == float(loss)


def test_distillation_terms_match_the_distilbert_recipe_formulas():
    rs = np.random.RandomState(4)
    student, teacher = rs.randn(2, 3, 4, 50).astype(np.float32) * 3
    weights = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], np.float32)
    s_hidden, t_hidden = rs.randn(2, 3, 6, 16).astype(np.float32)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    T = 2.0
    loss, metrics = distillation_losses(student, teacher, weights, T, s_hidden, t_hidden,
                                               mask, alpha_ce=5.0, alpha_cos=1.0)
    # DistilBERT's distiller: rows selected by the mask, KLDivLoss(batchmean) * T^2 ...
    rows = weights.reshape(-1) > 0
    s_rows = torch.tensor(student.reshape(-1, 50)[rows])
    t_rows = torch.tensor(teacher.reshape(-1, 50)[rows])
    ce = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s_rows / T, -1),
                                                   F.softmax(t_rows / T, -1)).item() * T ** 2
    # ... and CosineEmbeddingLoss(target=1) over the real tokens' hidden states.
    real = mask.reshape(-1) > 0
    s_tok, t_tok = (torch.tensor(h.reshape(-1, 16)[real]) for h in (s_hidden, t_hidden))
    cos = torch.nn.CosineEmbeddingLoss()(s_tok, t_tok, torch.ones(len(s_tok))).item()
    assert abs(float(metrics["distill_ce_loss"]) - ce) < TOL
    assert abs(float(metrics["distill_cos_loss"]) - cos) < TOL
    assert abs(float(loss) - (5.0 * ce + cos)) < 1e-4
    same, same_metrics = distillation_losses(student, student, weights, T, s_hidden,
                                                    s_hidden, mask)
    assert abs(float(same_metrics["distill_ce_loss"])) < 1e-6
    assert abs(float(same_metrics["distill_cos_loss"])) < 1e-6
    only_ce, only_metrics = distillation_losses(student, teacher, weights, T)
    assert set(only_metrics) == {"distill_ce_loss"} and float(only_ce) == pytest.approx(ce, abs=TOL)


def test_label_smoothing_matches_torch_cross_entropy():
    rs = np.random.RandomState(5)
    logits = rs.randn(2, 3, 20).astype(np.float32) * 2
    labels = rs.randint(0, 20, (2, 3))
    weights = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    loss, _ = masked_lm_loss(logits, labels, weights, label_smoothing=0.1)
    keep = weights.reshape(-1) > 0
    ref = F.cross_entropy(torch.tensor(logits.reshape(-1, 20)[keep]),
                          torch.tensor(labels.reshape(-1)[keep]), label_smoothing=0.1).item()
    assert abs(float(loss) - ref) < TOL
    plain, _ = masked_lm_loss(logits, labels, weights)
    assert float(loss) != pytest.approx(float(plain), abs=1e-3)


def test_accuracy_counts_only_real_slots_and_empty_batches_give_zero():
    labels = np.array([[1, 2, 3]])
    logits = np.eye(5, dtype=np.float32)[[[1, 0, 3]]] * 10  # right, wrong, right (padding)
    _, metrics = masked_lm_loss(logits, labels, np.array([[1.0, 1.0, 0.0]]))
    assert float(metrics["mlm_accuracy"]) == 0.5
    loss, metrics = masked_lm_loss(logits, labels, np.zeros((1, 3), np.float32))
    assert float(loss) == 0.0 and float(metrics["mlm_accuracy"]) == 0.0
    loss, _ = permutation_lm_loss(logits, np.full((1, 3), -100))
    assert float(loss) == 0.0


def test_bfloat16_logits_are_scored_in_float32():
    rs = np.random.RandomState(6)
    logits = jnp.asarray(rs.randn(2, 4, 300) * 4, jnp.bfloat16)
    labels = rs.randint(0, 300, (2, 4))
    weights = np.ones((2, 4), np.float32)
    loss, metrics = masked_lm_loss(logits, labels, weights)
    assert loss.dtype == jnp.float32 and all(m.dtype == jnp.float32 for m in metrics.values())
    ref = F.cross_entropy(torch.tensor(np.asarray(logits.astype(jnp.float32))).reshape(-1, 300),
                          torch.tensor(labels).reshape(-1)).item()
    assert abs(float(loss) - ref) < TOL  # exact on the bf16 values, no bf16 arithmetic
    rtd, _ = replaced_token_detection_loss(logits[..., 0], np.zeros((2, 4)), weights)
    assert rtd.dtype == jnp.float32


def test_bad_inputs_are_named():
    logits = np.zeros((2, 3, 10), np.float32)
    with pytest.raises(ValueError, match="do not match labels"):
        losses.masked_lm_loss(logits, np.zeros((2, 4), int), np.ones((2, 4)))
    with pytest.raises(ValueError, match="shapes disagree"):
        losses.masked_lm_loss(logits, np.zeros((2, 3), int), np.ones((2, 4)))
    with pytest.raises(TypeError, match="labels must be integers"):
        losses.masked_lm_loss(logits, np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="label_smoothing=1.0"):
        losses.masked_lm_loss(logits, np.zeros((2, 3), int), np.ones((2, 3)), label_smoothing=1.0)
    with pytest.raises(ValueError, match=r"nsp: logits must be \(batch, classes\)"):
        losses.sentence_pair_loss(np.zeros((2, 2)), np.zeros(3, int), "nsp")
    with pytest.raises(ValueError, match="temperature=0"):
        losses.distillation_losses(logits, logits, np.ones((2, 3)), 0)
    with pytest.raises(ValueError, match="needs the same hidden width"):
        losses.distillation_losses(logits, logits, np.ones((2, 3)), 2.0, np.zeros((2, 5, 8)),
                                   np.zeros((2, 5, 16)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="shapes disagree"):
        losses.replaced_token_detection_loss(np.zeros((2, 5)), np.zeros((2, 5)), np.ones((2, 4)))
