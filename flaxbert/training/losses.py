"""Pre-training losses as pure functions on arrays, each returning (loss, metrics).

No network runs here: `flaxbert.training.objectives` calls the models and passes their logits in.
Every loss is computed in float32 whatever dtype the logits arrive in (bf16 models included), and
every metric is a float32 scalar. Weighted means skip padding slots (weight 0) and return 0, not
NaN, for a batch with nothing to predict.

Each matches transformers' own loss where one exists (BertForPreTraining, AlbertForPreTraining,
ElectraForPreTraining, XLNetLMHeadModel); the distillation terms follow DistilBERT's training
script (KL at temperature T scaled by T^2, cosine embedding loss on the last hidden states).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from flaxbert.models.permutation import IGNORE

Metrics = dict[str, jnp.ndarray]


# Logits of positions that cannot be chosen (padding): far below any real logit, but finite, so
# a softmax gives them 0 and sums over them stay finite.
MASKED_LOGIT = -1e9

def _f32(x):
    return jnp.asarray(x).astype(jnp.float32)


def weighted_mean(values, weights):
    """sum(w * v) / sum(w), 0 where every weight is 0."""
    values, weights = _f32(values), _f32(weights)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-9)


def _check_shapes(name: str, **arrays) -> None:
    shapes = {k: jnp.shape(v) for k, v in arrays.items()}
    first = next(iter(shapes.values()))
    if any(s != first for s in shapes.values()):
        raise ValueError(f"{name}: shapes disagree: {shapes}")


def token_cross_entropy(logits, labels, weights, label_smoothing: float = 0.0):
    """Per-position softmax cross entropy (float32) and argmax accuracy, both weighted means.

    label_smoothing=e gives (1 - e) * CE + e * mean over the vocabulary of -log p, which is what
    torch.nn.CrossEntropyLoss(label_smoothing=e) computes."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
    if jnp.shape(logits)[:-1] != jnp.shape(labels):
        raise ValueError(f"logits {jnp.shape(logits)} do not match labels {jnp.shape(labels)} "
                         "(expected logits = labels' shape + (vocab,))")
    _check_shapes("token_cross_entropy", labels=labels, weights=weights)
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"labels must be integers, got dtype {jnp.result_type(labels)}")
    logits = _f32(logits)
    labels = jnp.where(_f32(weights) > 0, labels, 0)  # padding slots may hold any id
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    if label_smoothing:
        uniform = -jnp.mean(jax.nn.log_softmax(logits), axis=-1)
        ce = (1.0 - label_smoothing) * ce + label_smoothing * uniform
    correct = jnp.argmax(logits, axis=-1) == labels
    return weighted_mean(ce, weights), weighted_mean(correct, weights)


def masked_lm_loss(logits, masked_ids, masked_weights, *, label_smoothing: float = 0.0
                   ) -> tuple[jnp.ndarray, Metrics]:
    """Masked-LM cross entropy over the masked positions.

    logits (B, P, V) decoded at the masked positions, masked_ids (B, P) the original ids there,
    masked_weights (B, P) 1 for a real prediction and 0 for a padding slot. Returns the weighted
    mean and {"mlm_loss", "mlm_accuracy", "mlm_tokens"}, the last the number of predictions
    averaged (what an evaluation weights this batch's mlm_loss and mlm_accuracy by)."""
    loss, accuracy = token_cross_entropy(logits, masked_ids, masked_weights, label_smoothing)
    tokens = jnp.sum(masked_weights).astype(jnp.float32)
    return loss, {"mlm_loss": loss, "mlm_accuracy": accuracy, "mlm_tokens": tokens}


def sentence_pair_loss(logits, labels, prefix: str, weights=None) -> tuple[jnp.ndarray, Metrics]:
    """Two-way sentence-pair classification: next-sentence (prefix "nsp": 0 IsNext, 1 NotNext) or
    sentence order (prefix "sop": 0 in order, 1 swapped). logits (B, 2), labels (B,), optional
    row weights (B,). Returns the (weighted) mean cross entropy and {prefix + "_loss",
    prefix + "_accuracy"}."""
    if jnp.ndim(logits) != 2 or jnp.shape(logits)[:1] != jnp.shape(labels):
        raise ValueError(f"{prefix}: logits must be (batch, classes) and labels (batch,), got "
                         f"{jnp.shape(logits)} and {jnp.shape(labels)}")
    weights = jnp.ones(jnp.shape(labels)) if weights is None else weights
    loss, accuracy = token_cross_entropy(logits, labels, weights)
    return loss, {f"{prefix}_loss": loss, f"{prefix}_accuracy": accuracy}


def replaced_token_detection_loss(logits, is_replaced, attention_mask
                                  ) -> tuple[jnp.ndarray, Metrics]:
    """ELECTRA's discriminator loss: sigmoid binary cross entropy over the real tokens
    (attention_mask 1), as ElectraForPreTraining computes it. logits, is_replaced and
    attention_mask are (B, S). Metrics: rtd_loss, rtd_accuracy (logit > 0 is "replaced") and
    rtd_replaced_fraction (of the real tokens)."""
    _check_shapes("replaced_token_detection_loss", logits=logits, is_replaced=is_replaced,
                  attention_mask=attention_mask)
    labels = _f32(is_replaced)
    logits = _f32(logits)
    loss = weighted_mean(optax.losses.sigmoid_binary_cross_entropy(logits, labels), attention_mask)
    accuracy = weighted_mean((logits > 0) == (labels > 0.5), attention_mask)
    return loss, {"rtd_loss": loss, "rtd_accuracy": accuracy,
                  "rtd_replaced_fraction": weighted_mean(labels, attention_mask)}


def distillation_losses(student_logits, teacher_logits, weights, temperature: float,
                        student_hidden=None, teacher_hidden=None, attention_mask=None, *,
                        alpha_ce: float = 1.0, alpha_cos: float = 1.0
                        ) -> tuple[jnp.ndarray, Metrics]:
    """DistilBERT's two distillation terms.

    - `distill_ce_loss`: KL(teacher || student) of the softmaxes at `temperature`, summed over the
      vocabulary, scaled by T^2 and averaged over the positions with weight 1 (student and teacher
      logits (B, P, V) at the masked positions, weights (B, P)); the script's
      KLDivLoss(reduction="batchmean") over the masked rows.
    - `distill_cos_loss`: mean over real tokens (attention_mask 1) of 1 - cos(student, teacher)
      of the hidden states (B, S, H); the script's CosineEmbeddingLoss with target 1. Left out
      when the hidden states are None.

    Returns alpha_ce * ce + alpha_cos * cos and both unweighted terms as metrics."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    _check_shapes("distillation_losses (logits)", student=student_logits, teacher=teacher_logits)
    if jnp.shape(student_logits)[:-1] != jnp.shape(weights):
        raise ValueError(f"distillation weights {jnp.shape(weights)} do not match the logits "
                         f"{jnp.shape(student_logits)}")
    log_student = jax.nn.log_softmax(_f32(student_logits) / temperature)
    log_teacher = jax.nn.log_softmax(_f32(teacher_logits) / temperature)
    kl = optax.losses.kl_divergence_with_log_targets(log_student, log_teacher)
    ce = weighted_mean(kl, weights) * temperature ** 2
    metrics = {"distill_ce_loss": ce}
    loss = alpha_ce * ce
    if student_hidden is not None or teacher_hidden is not None:
        if student_hidden is None or teacher_hidden is None or attention_mask is None:
            raise ValueError("the cosine loss needs student_hidden, teacher_hidden and "
                             "attention_mask")
        if jnp.shape(student_hidden) != jnp.shape(teacher_hidden):
            raise ValueError(f"student hidden states {jnp.shape(student_hidden)} and teacher "
                             f"hidden states {jnp.shape(teacher_hidden)} differ; the cosine loss "
                             "needs the same hidden width")
        if jnp.shape(student_hidden)[:-1] != jnp.shape(attention_mask):
            raise ValueError(f"attention_mask {jnp.shape(attention_mask)} does not match the "
                             f"hidden states {jnp.shape(student_hidden)}")
        # torch's cosine_embedding_loss adds 1e-12 to the squared norms; clipping them there
        # differs only for vectors of norm ~1e-6.
        distance = optax.losses.cosine_distance(_f32(student_hidden), _f32(teacher_hidden),
                                         epsilon=1e-12)
        cos = weighted_mean(distance, attention_mask)
        metrics["distill_cos_loss"] = cos
        loss = loss + alpha_cos * cos
    return loss, metrics


def permutation_lm_loss(logits, labels) -> tuple[jnp.ndarray, Metrics]:
    """XLNet's permutation-LM cross entropy: logits (B, K, V) for the K predictions of each row,
    labels (B, K) with -100 where a row has fewer predictions (XLNetLMHeadModel's loss).
    Metrics: plm_loss, plm_accuracy."""
    labels = jnp.asarray(labels)
    loss, accuracy = token_cross_entropy(logits, labels, labels != IGNORE)
    return loss, {"plm_loss": loss, "plm_accuracy": accuracy}
