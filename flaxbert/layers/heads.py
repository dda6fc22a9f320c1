"""Heads shared by every family: pooler, masked-LM (tied decoder), classifiers, spans, pooling.

Families differ in *names* of these weights (handled by the converter), rarely in structure; where
they do (RoBERTa's two-layer classifier, DistilBERT's pre_classifier), the family passes its own
head module to the task model.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from flaxbert.layers import sharding
from flaxbert.layers.config import POOLING, EncoderConfig
from flaxbert.layers.feed_forward import activation, dense, layer_norm


class Pooler(nn.Module):
    """tanh(W x[:, 0] + b): BERT's pooled [CLS] representation."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, hidden):
        cfg = self.config
        return jnp.tanh(dense(cfg, cfg.hidden_size, ("embed", "embed_proj"), "dense")(hidden[:, 0]))


def gather_positions(hidden, positions):
    """hidden (B, S, E), positions (B, P) -> (B, P, E): run a head only where it is needed."""
    return jnp.take_along_axis(hidden, positions[..., None].astype(jnp.int32), axis=1)


class MaskedLMHead(nn.Module):
    """dense -> act -> LayerNorm -> logits against the (tied) word-embedding table, plus a bias.

    The transform maps to the embedding width (embedding_size for ALBERT/ELECTRA), so the decoder
    is always the transposed word-embedding table and owns no weight of its own.
    """

    config: EncoderConfig
    activation: str | None = None  # None: config.hidden_act (RoBERTa and ELECTRA fix "gelu")

    @nn.compact
    def __call__(self, hidden, embedding_table):
        cfg = self.config
        width = embedding_table.shape[-1]
        x = dense(cfg, width, ("embed", "embed_proj"), "dense")(hidden)
        x = activation(self.activation or cfg.hidden_act)(x)
        x = layer_norm(cfg, "norm", axis_name="embed_proj")(x)
        bias = self.param("bias", sharding.param_init(nn.initializers.zeros, ("vocab",)),
                          (cfg.padded_vocab_size,), cfg.weights_dtype)
        logits = jnp.einsum("...e,ve->...v", x, embedding_table.astype(cfg.compute_dtype))
        return vocab_logits(cfg, logits + bias.astype(cfg.compute_dtype))


def vocab_logits(cfg: EncoderConfig, logits):
    """Logits over the padded vocabulary (sharded like it) cut to the real `vocab_size`, so no
    loss, metric, sampler or pipeline ever sees a padding row."""
    logits = sharding.constrain(logits, ("act_batch", "act_length", "act_vocab")[-logits.ndim:])
    return logits[..., :cfg.vocab_size] if logits.shape[-1] != cfg.vocab_size else logits


class Classifier(nn.Module):
    """Optional dropout -> Dense(num_outputs). `rate=None` means no dropout layer."""

    config: EncoderConfig
    num_outputs: int
    deterministic: bool = True
    rate: float | None = None

    @nn.compact
    def __call__(self, x):
        if self.rate:
            x = nn.Dropout(self.rate, deterministic=self.deterministic)(x)
        return dense(self.config, self.num_outputs, ("embed", "classes"), "dense")(x)


# Sequence-level heads take the backbone's whole output and return logits, so each family can say
# which vector it classifies (pooled [CLS], raw first token, a summary) without the task changing.

class PooledClassifier(nn.Module):
    """BERT / ALBERT: dropout -> Dense on the pooler output."""

    config: EncoderConfig
    num_outputs: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, out):
        cfg = self.config
        x = nn.Dropout(cfg.classifier_dropout_prob, deterministic=self.deterministic)(out.pooler_output)
        return dense(cfg, self.num_outputs, ("embed", "classes"), "dense")(x)


class FirstTokenClassifier(nn.Module):
    """RoBERTa (tanh) / ELECTRA (gelu): dropout -> dense -> act -> dropout -> out_proj on token 0."""

    config: EncoderConfig
    num_outputs: int
    deterministic: bool = True
    activation: str = "tanh"

    @nn.compact
    def __call__(self, out):
        cfg = self.config
        drop = nn.Dropout(cfg.classifier_dropout_prob, deterministic=self.deterministic)
        x = drop(out.last_hidden_state[:, 0])
        x = activation(self.activation)(dense(cfg, cfg.hidden_size, ("embed", "embed_proj"), "dense")(x))
        return dense(cfg, self.num_outputs, ("embed", "classes"), "out_proj")(drop(x))


class SequenceSummary(nn.Module):
    """ELECTRA (multiple choice) / XLNet: pick a token (first / last / mean), then optional
    dropout -> projection -> activation -> dropout, as transformers' SequenceSummary does.
    Reads config.summary_type, summary_use_proj, summary_proj_to_labels, summary_activation,
    summary_first_dropout, summary_last_dropout."""

    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, hidden):
        cfg = self.config
        kind = cfg.summary_type
        if kind == "first":
            x = hidden[:, 0]
        elif kind == "last":
            x = hidden[:, -1]
        elif kind == "mean":
            x = hidden.mean(1)
        else:
            raise ValueError(f"summary_type={kind!r} is not supported; use first, last or mean")
        if cfg.summary_first_dropout:
            x = nn.Dropout(cfg.summary_first_dropout, deterministic=self.deterministic)(x)
        if cfg.summary_use_proj:
            width = (cfg.num_labels if cfg.summary_proj_to_labels and cfg.num_labels > 0
                     else cfg.hidden_size)
            x = dense(cfg, width, ("embed", "embed_proj"), "summary")(x)
        if cfg.summary_activation:
            x = activation(cfg.summary_activation)(x)
        if cfg.summary_last_dropout:
            x = nn.Dropout(cfg.summary_last_dropout, deterministic=self.deterministic)(x)
        return x


class DiscriminatorHead(nn.Module):
    """ELECTRA / DeBERTa-v3 replaced-token detection: dense -> act -> dense(1), one logit a token."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, hidden):
        cfg = self.config
        x = activation(cfg.hidden_act)(dense(cfg, cfg.hidden_size, ("embed", "embed_proj"), "dense")(hidden))
        return dense(cfg, 1, ("embed", "classes"), "dense_prediction")(x)[..., 0]


def pool(hidden, attention_mask, mode: str):
    """Sentence embedding from token states, as sentence-transformers' Pooling module computes it."""
    mask = attention_mask.astype(hidden.dtype)[..., None]
    if mode == "mean":
        return (hidden * mask).sum(1) / jnp.clip(mask.sum(1), 1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return jnp.where(mask > 0, hidden, jnp.finfo(hidden.dtype).min).max(1)
    raise ValueError(f"unknown pooling {mode!r}; choose one of {POOLING}")


def l2_normalize(x, eps: float = 1e-12):
    # Same clamp as torch.nn.functional.normalize.
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class SummaryClassifier(nn.Module):
    """ELECTRA / XLNet multiple choice: SequenceSummary, then Dense(num_outputs)."""

    config: EncoderConfig
    num_outputs: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, out):
        x = SequenceSummary(self.config, self.deterministic, name="sequence_summary")(
            out.last_hidden_state)
        return dense(self.config, self.num_outputs, ("embed", "classes"), "dense")(x)
