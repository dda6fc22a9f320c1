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

    @nn.compact
    def __call__(self, hidden, embedding_table):
        cfg = self.config
        width = embedding_table.shape[-1]
        x = dense(cfg, width, ("embed", "embed_proj"), "dense")(hidden)
        x = layer_norm(cfg, "norm", axis_name="embed_proj")(activation(cfg.hidden_act)(x))
        bias = self.param("bias", sharding.param_init(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), cfg.weights_dtype)
        logits = jnp.einsum("...e,ve->...v", x, embedding_table.astype(cfg.compute_dtype))
        logits = logits + bias.astype(cfg.compute_dtype)
        return sharding.constrain(logits, ("act_batch", "act_length", "act_vocab")[-logits.ndim:])


class Classifier(nn.Module):
    """dropout -> Dense(num_outputs): on the pooled output (sequence-level) or every token."""

    config: EncoderConfig
    num_outputs: int
    deterministic: bool = True
    dropout: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        if self.dropout:
            x = nn.Dropout(cfg.classifier_dropout_prob, deterministic=self.deterministic)(x)
        return dense(cfg, self.num_outputs, ("embed", "classes"), "dense")(x)


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
