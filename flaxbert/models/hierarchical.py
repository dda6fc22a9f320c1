"""Hierarchical chunk encoding for long-document classification: any family's encoder runs on
each chunk of a document, each chunk's CLS embedding is kept, and a small pooling network over
the chunk embeddings (attention pooling, or one transformer layer from flaxbert.layers) feeds
the classifier.

    model = HierarchicalClassifier(config, max_chunks=8, chunk_pooling="attention")
    out = model.apply({"params": params}, input_ids, attention_mask)   # (batch, chunks, length)
    out.logits                                                         # (batch, num_labels)
    out.embeddings                                          # (batch, chunks, hidden): each CLS

Chunks whose attention mask is all zeros are missing (a short document's padding chunks): the
pooling masks them out exactly, so adding an empty chunk changes no logit.

Parameters: `encoder` (the family's "base" model, so a checkpoint's encoder loads into it
unchanged, see `with_encoder_params`) and `head` (`chunk_positions` and `chunk_layer` for the
transformer pooling, `attention` for attention pooling, then `classifier`), every one created
with logical axis names. transformers has no such class, so there is no transformers export:
the fine-tuned weights stay in the run's flaxbert (Orbax) checkpoints, read back with
`flaxbert.training.trainer.restore_params(workdir)`.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.layers import sharding
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.encoder import TransformerBlock
from flaxbert.layers.feed_forward import dense
from flaxbert.layers.heads import Classifier
from flaxbert.models import registry
from flaxbert.models.outputs import Output

CHUNK_POOLING = ("attention", "transformer")
CLS_POSITIONS = ("first", "last")  # "last": tokenizers that pad on the left and end with CLS


def _masked_softmax(scores, present):
    # finfo.min, not -inf: a row with no chunk at all stays finite (its output is never read).
    scores = jnp.where(present, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


class ChunkHead(nn.Module):
    """(batch, chunks, hidden) chunk embeddings and a (batch, chunks) presence mask ->
    (batch, num_labels) logits."""

    config: EncoderConfig
    max_chunks: int
    chunk_pooling: str = "attention"
    deterministic: bool = True

    @nn.compact
    def __call__(self, chunks, present):
        cfg = self.config
        present = present.astype(bool)
        if self.chunk_pooling == "transformer":
            positions = self.param("chunk_positions", sharding.param_init(
                nn.initializers.normal(cfg.initializer_range), ("positions", "embed")),
                (self.max_chunks, cfg.hidden_size), cfg.weights_dtype)
            x = chunks + positions[:chunks.shape[1]].astype(chunks.dtype)
            # The chunks are a short sequence: plain attention, whatever the tokens use.
            layer_cfg = cfg.replace(attention_impl="xla")
            x, _ = TransformerBlock(layer_cfg, self.deterministic, name="chunk_layer")(
                x, present.astype(jnp.int32))
            weights = present / jnp.maximum(present.sum(-1, keepdims=True), 1)
        else:
            hidden = jnp.tanh(dense(cfg, cfg.hidden_size, ("embed", "embed_proj"),
                                    "attention")(chunks))
            scores = dense(cfg, 1, ("embed_proj", "classes"), "attention_score")(hidden)[..., 0]
            weights, x = _masked_softmax(scores, present), chunks
        # jnp.where, not a product: a missing chunk's (finite but meaningless) state is dropped.
        document = jnp.einsum("bc,bce->be", weights.astype(x.dtype),
                              jnp.where(present[..., None], x, 0))
        return Classifier(cfg, cfg.num_labels, self.deterministic, cfg.classifier_dropout_prob,
                          name="classifier")(document)


class HierarchicalClassifier(nn.Module):
    """See the module docstring. Inputs (batch, chunks, length), chunks <= max_chunks."""

    config: EncoderConfig
    max_chunks: int = 8
    chunk_pooling: str = "attention"
    cls_position: str = "first"

    task: ClassVar[str] = "chunk-classification"
    input_rank: ClassVar[int] = 3

    def __post_init__(self):
        if self.chunk_pooling not in CHUNK_POOLING:
            raise ValueError(f"chunk_pooling={self.chunk_pooling!r}; choose one of "
                             f"{CHUNK_POOLING}")
        if self.cls_position not in CLS_POSITIONS:
            raise ValueError(f"cls_position={self.cls_position!r}; choose one of {CLS_POSITIONS}")
        if isinstance(self.max_chunks, bool) or not isinstance(self.max_chunks, int) or \
                self.max_chunks < 1:
            raise ValueError(f"max_chunks={self.max_chunks!r} must be a positive int")
        super().__post_init__()

    def encoder_model(self, name: str | None = None) -> nn.Module:
        return registry.family_of(self.config).task_models["base"](self.config, name=name)

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
                 deterministic: bool = True) -> Output:
        if input_ids.ndim != 3:
            raise ValueError(f"input_ids must be (batch, chunks, length), got {input_ids.shape}")
        batch, chunks, length = input_ids.shape
        if chunks > self.max_chunks:
            raise ValueError(f"{chunks} chunks, more than max_chunks={self.max_chunks}")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        flat = [None if x is None else x.reshape(batch * chunks, length)
                for x in (input_ids, attention_mask, token_type_ids)]
        hidden = self.encoder_model(name="encoder")(
            *flat, deterministic=deterministic).last_hidden_state
        cls = hidden[:, 0] if self.cls_position == "first" else hidden[:, -1]
        embeddings = cls.reshape(batch, chunks, -1)
        present = attention_mask.astype(bool).any(-1)
        logits = ChunkHead(self.config, self.max_chunks, self.chunk_pooling, deterministic,
                           name="head")(embeddings, present)
        return Output(logits=logits, embeddings=embeddings)

    def dummy_inputs(self, batch_size: int = 1, length: int = 8) -> dict:
        return {"input_ids": jnp.zeros((batch_size, self.max_chunks, length), jnp.int32)}


def with_encoder_params(model: HierarchicalClassifier, encoder_params, rng) -> dict:
    """The model's params with `encoder_params` (the family's "base" model's, e.g. from
    flaxbert.from_pretrained(dir, task="base")) and a freshly initialised head; only the
    small head is initialised, not the encoder again."""
    cfg = model.config
    head = ChunkHead(cfg, model.max_chunks, model.chunk_pooling, parent=None)
    head_params = head.init(
        rng, jnp.zeros((1, model.max_chunks, cfg.hidden_size), cfg.compute_dtype),
        jnp.ones((1, model.max_chunks), bool))["params"]
    return {"encoder": encoder_params, "head": nn.meta.unbox(head_params)}
