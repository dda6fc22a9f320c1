"""Task models shared by every family: a backbone plus one head.

A family supplies its backbone (and, where a head differs in structure, its own head module); the
task wrappers here are the same for all. Parameter names inside are family-neutral (`backbone`,
`mlm_head`, `classifier`, ...); `flaxbert.convert` maps them to each family's transformers names.

Every task model is called as
    model.apply({"params": params}, input_ids, attention_mask, token_type_ids, position_ids,
                deterministic=True, output_hidden_states=False, output_attentions=False, ...)
and returns an `Output` with transformers' names. Dropout runs only with deterministic=False
(pass rngs={"dropout": key}).
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.embeddings import Embeddings, check_tokens
from flaxbert.layers.encoder import Encoder
from flaxbert.layers.heads import Classifier, MaskedLMHead, Pooler, gather_positions, l2_normalize, pool
from flaxbert.models.outputs import Output


class Backbone(nn.Module):
    """Embeddings -> encoder stack -> optional pooler. Families override the class attributes."""

    config: EncoderConfig
    deterministic: bool = True
    add_pooling_layer: bool = True

    embeddings_cls: ClassVar[type[nn.Module]] = Embeddings
    encoder_cls: ClassVar[type[nn.Module]] = Encoder
    pooler_cls: ClassVar[type[nn.Module]] = Pooler

    def default_position_ids(self, input_ids):
        """None means 0..S-1; RoBERTa-style families override."""
        return None

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 output_hidden_states: bool = False, output_attentions: bool = False) -> Output:
        cfg = self.config
        check_tokens(cfg, input_ids, attention_mask, token_type_ids, position_ids)
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids)
        embedded = self.embeddings_cls(cfg, self.deterministic, name="embeddings")(
            input_ids, token_type_ids, position_ids)
        x, hidden, probs = self.encoder_cls(cfg, self.deterministic, name="encoder")(
            embedded, attention_mask, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions)
        return Output(
            last_hidden_state=x,
            pooler_output=self.pooler_cls(cfg, name="pooler")(x) if self.add_pooling_layer else None,
            hidden_states=None if hidden is None else (embedded,) + hidden,
            attentions=probs)

    def word_embedding_table(self):
        return nn.meta.unbox(self.variables["params"]["embeddings"]["word_embeddings"]["embedding"])


class TaskModel(nn.Module):
    """Builds the family's backbone under the name `backbone` and runs it."""

    config: EncoderConfig

    backbone_cls: ClassVar[type[Backbone]] = Backbone
    task: ClassVar[str] = "base"
    uses_pooler: ClassVar[bool] = True
    input_rank: ClassVar[int] = 2

    def encode(self, input_ids, attention_mask, token_type_ids, position_ids, deterministic,
               output_hidden_states, output_attentions) -> tuple[Backbone, Output]:
        backbone = self.backbone_cls(self.config, deterministic,
                                     add_pooling_layer=self.uses_pooler, name="backbone")
        out = backbone(input_ids, attention_mask, token_type_ids, position_ids,
                       output_hidden_states=output_hidden_states,
                       output_attentions=output_attentions)
        return backbone, out

    def dummy_inputs(self, batch_size: int = 1, length: int = 8) -> dict:
        """Inputs of the right rank for init / eval_shape."""
        shape = (batch_size,) + (2,) * (self.input_rank - 2) + (length,)
        return {"input_ids": jnp.zeros(shape, jnp.int32)}


def _trunk(out: Output) -> dict:
    return dict(hidden_states=out.hidden_states, attentions=out.attentions)


class EncoderModel(TaskModel):
    """The bare backbone: last_hidden_state, pooler_output (transformers' `<Family>Model`)."""

    task: ClassVar[str] = "base"

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 deterministic=True, output_hidden_states=False, output_attentions=False):
        return self.encode(input_ids, attention_mask, token_type_ids, position_ids, deterministic,
                           output_hidden_states, output_attentions)[1]


class ForMaskedLM(TaskModel):
    """Masked-LM logits; with `masked_positions` (B, P) only those positions are decoded."""

    task: ClassVar[str] = "masked-lm"
    uses_pooler: ClassVar[bool] = False
    mlm_head_cls: ClassVar[type[nn.Module]] = MaskedLMHead

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 masked_positions=None, deterministic=True, output_hidden_states=False,
                 output_attentions=False):
        backbone, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                                    deterministic, output_hidden_states, output_attentions)
        x = out.last_hidden_state
        if masked_positions is not None:
            x = gather_positions(x, masked_positions)
        logits = self.mlm_head_cls(self.config, name="mlm_head")(x, backbone.word_embedding_table())
        return Output(logits=logits, **_trunk(out))


class ForPreTraining(ForMaskedLM):
    """MLM + next-sentence (BERT) or sentence-order (ALBERT) logits from the pooled output."""

    task: ClassVar[str] = "pretraining"
    uses_pooler: ClassVar[bool] = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 masked_positions=None, deterministic=True, output_hidden_states=False,
                 output_attentions=False):
        backbone, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                                    deterministic, output_hidden_states, output_attentions)
        x = out.last_hidden_state
        if masked_positions is not None:
            x = gather_positions(x, masked_positions)
        logits = self.mlm_head_cls(self.config, name="mlm_head")(x, backbone.word_embedding_table())
        pair = Classifier(self.config, 2, dropout=False, name="nsp_head")(out.pooler_output)
        return Output(prediction_logits=logits, seq_relationship_logits=pair, **_trunk(out))


class ForNextSentencePrediction(TaskModel):
    task: ClassVar[str] = "next-sentence"

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 deterministic=True, output_hidden_states=False, output_attentions=False):
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                             deterministic, output_hidden_states, output_attentions)
        logits = Classifier(self.config, 2, dropout=False, name="nsp_head")(out.pooler_output)
        return Output(logits=logits, **_trunk(out))


class ForSequenceClassification(TaskModel):
    """num_labels logits from the pooled output; num_labels=1 is regression."""

    task: ClassVar[str] = "sequence-classification"

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 deterministic=True, output_hidden_states=False, output_attentions=False):
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                             deterministic, output_hidden_states, output_attentions)
        logits = Classifier(self.config, self.config.num_labels, deterministic,
                            name="classifier")(out.pooler_output)
        return Output(logits=logits, **_trunk(out))


class ForTokenClassification(TaskModel):
    task: ClassVar[str] = "token-classification"
    uses_pooler: ClassVar[bool] = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 deterministic=True, output_hidden_states=False, output_attentions=False):
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                             deterministic, output_hidden_states, output_attentions)
        logits = Classifier(self.config, self.config.num_labels, deterministic,
                            name="classifier")(out.last_hidden_state)
        return Output(logits=logits, **_trunk(out))


class ForQuestionAnswering(TaskModel):
    """Extractive QA: start and end logits over the tokens."""

    task: ClassVar[str] = "question-answering"
    uses_pooler: ClassVar[bool] = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 deterministic=True, output_hidden_states=False, output_attentions=False):
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                             deterministic, output_hidden_states, output_attentions)
        logits = Classifier(self.config, 2, dropout=False, name="qa_outputs")(out.last_hidden_state)
        return Output(start_logits=logits[..., 0], end_logits=logits[..., 1], **_trunk(out))


class ForMultipleChoice(TaskModel):
    """Inputs (batch, num_choices, length) -> logits (batch, num_choices)."""

    task: ClassVar[str] = "multiple-choice"
    input_rank: ClassVar[int] = 3

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 deterministic=True, output_hidden_states=False, output_attentions=False):
        check_tokens(self.config, input_ids, attention_mask, token_type_ids, position_ids, rank=3)
        batch, choices, length = input_ids.shape

        def flat(x):
            return None if x is None else x.reshape(batch * choices, length)

        _, out = self.encode(flat(input_ids), flat(attention_mask), flat(token_type_ids),
                             flat(position_ids), deterministic, output_hidden_states,
                             output_attentions)
        logits = Classifier(self.config, 1, deterministic, name="classifier")(out.pooler_output)
        return Output(logits=logits.reshape(batch, choices), **_trunk(out))


class ForSentenceEmbedding(TaskModel):
    """Sentence embeddings: `config.pooling` over the tokens, L2-normalised if configured."""

    task: ClassVar[str] = "embedding"
    # The pooler is unused, but kept so the weights round-trip with transformers' bare model.
    uses_pooler: ClassVar[bool] = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 deterministic=True, output_hidden_states=False, output_attentions=False):
        _, out = self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                             deterministic, output_hidden_states, output_attentions)
        mask = jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None else attention_mask
        emb = pool(out.last_hidden_state, mask, self.config.pooling)
        if self.config.normalize_embeddings:
            emb = l2_normalize(emb)
        return Output(embeddings=emb, last_hidden_state=out.last_hidden_state, **_trunk(out))


TASK_MODELS: dict[str, type[TaskModel]] = {
    cls.task: cls for cls in (EncoderModel, ForPreTraining, ForMaskedLM, ForNextSentencePrediction,
                              ForSequenceClassification, ForTokenClassification,
                              ForQuestionAnswering, ForMultipleChoice, ForSentenceEmbedding)
}
TASKS = tuple(TASK_MODELS)
