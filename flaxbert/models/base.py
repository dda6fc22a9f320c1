"""Task models shared by every family: a backbone plus one head.

Each head has its own flax name (`mlm_head`, `nsp_head`, `classifier` for sequences,
`token_classifier`, `choice_classifier`, `qa_outputs`), even where transformers reuses one
("classifier"), so a family's naming rules can map each head's structure unambiguously.

A family supplies its backbone (and, where a head differs in structure, its own head module) via
`specialise`; the task wrappers here are the same for all. Parameter names inside are
family-neutral (`backbone`, `mlm_head`, `classifier`, ...); `flaxbert.convert` maps them to each
family's transformers names.

Every task model is called as
    model.apply({"params": params}, input_ids, attention_mask, token_type_ids, position_ids,
                deterministic=True, output_hidden_states=False, output_attentions=False, ...)
and returns an `Output` with transformers' names. Dropout runs only with deterministic=False
(pass rngs={"dropout": key}).
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from flaxbert.layers.attention import segment_mask
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.embeddings import Embeddings, check_tokens
from flaxbert.layers.encoder import Encoder
from flaxbert.layers.feed_forward import dense
from flaxbert.layers.heads import (Classifier, DiscriminatorHead, MaskedLMHead,
                                   PooledClassifier, Pooler, gather_positions, l2_normalize, pool)
from flaxbert.models.outputs import Output


class Backbone(nn.Module):
    """Embeddings -> (E -> H projection) -> encoder stack -> optional pooler.

    Families override the class attributes. `shared_embeddings` lets two backbones use one
    embedding module (ELECTRA's generator and discriminator).
    """

    config: EncoderConfig
    deterministic: bool = True
    add_pooling_layer: bool = True
    shared_embeddings: nn.Module | None = None

    embeddings_cls: ClassVar[type[nn.Module]] = Embeddings
    encoder_cls: ClassVar[type[nn.Module]] = Encoder
    pooler_cls: ClassVar[type[nn.Module]] = Pooler

    def default_position_ids(self, input_ids):
        """None means 0..S-1; RoBERTa-style families override."""
        return None

    def packing_unsupported(self) -> str | None:
        """What in this config mixes neighbouring tokens before the encoder (so would cross
        packed examples), or None. MobileBERT's trigram embeddings override it."""
        return None

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 segment_ids=None, pool_positions=None, output_hidden_states: bool = False,
                 output_attentions: bool = False) -> Output:
        """`segment_ids` (batch, length): packed rows (flaxbert.packing), 1, 2, ... per example
        and 0 for padding; attention then stays within each example. `pool_positions`
        (batch, P): pool each packed example's first token instead of token 0 of the row;
        pooler_output is then (batch, P, hidden)."""
        cfg = self.config
        check_tokens(cfg, input_ids, attention_mask, token_type_ids, position_ids,
                     segment_ids=segment_ids)
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids)
        encoder = self.encoder_cls(cfg, self.deterministic, name="encoder")
        mask = attention_mask
        if segment_ids is not None:
            if self.packing_unsupported():
                raise ValueError(f"{self.packing_unsupported()}, which would cross packed "
                                 "examples; run this config unpacked")
            if getattr(encoder, "works_between_layers", lambda: False)():
                raise ValueError(f"{type(encoder).__name__} mixes neighbouring tokens between "
                                 "layers (a convolution), which would cross packed examples; "
                                 "run this config unpacked")
            mask = segment_mask(segment_ids, attention_mask)
            if attention_mask is None:
                attention_mask = (segment_ids > 0).astype(jnp.int32)
        x = self.embed(input_ids, attention_mask, token_type_ids, position_ids)
        if x.shape[-1] != cfg.hidden_size:  # ALBERT, ELECTRA: narrow embeddings
            x = dense(cfg, cfg.hidden_size, ("embed_proj", "embed"), "embeddings_project")(x)
        embedded = x
        x, hidden, probs = encoder(x, mask, output_hidden_states=output_hidden_states,
                                   output_attentions=output_attentions)
        pooled = None
        if self.add_pooling_layer and pool_positions is None:
            pooled = self.pooler_cls(cfg, name="pooler")(x)
        elif self.add_pooling_layer:  # each example's first token as a row of its own
            first = gather_positions(x, pool_positions).reshape(-1, 1, x.shape[-1])
            pooled = self.pooler_cls(cfg, name="pooler")(first).reshape(*pool_positions.shape, -1)
        return Output(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=None if hidden is None else (embedded,) + hidden,
            attentions=probs)

    def embed(self, input_ids, attention_mask, token_type_ids, position_ids):
        return self.embedding_module()(input_ids, token_type_ids, position_ids, self.deterministic)

    def embedding_module(self) -> nn.Module:
        if self.shared_embeddings is not None:
            return self.shared_embeddings
        return self.embeddings_cls(self.config, self.deterministic, name="embeddings")

    def word_embedding_table(self):
        if self.shared_embeddings is not None:
            return self.shared_embeddings.word_embedding_table()
        return nn.meta.unbox(self.variables["params"]["embeddings"]["word_embeddings"]["embedding"])


class TaskModel(nn.Module):
    """Runs the family's backbone (named `backbone`), then the task's `head`.

    Subclasses write only `head(backbone, out, attention_mask, deterministic, **head_inputs)`,
    returning a dict of outputs; extra keyword arguments of `__call__` (e.g. masked_positions)
    go to it.
    """

    config: EncoderConfig
    shared_embeddings: nn.Module | None = None  # see Backbone

    backbone_cls: ClassVar[type[Backbone]] = Backbone
    task: ClassVar[str] = "base"
    uses_pooler: ClassVar[bool] = True
    input_rank: ClassVar[int] = 2  # 3 for multiple choice: (batch, num_choices, length)

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 deterministic=True, output_hidden_states=False, output_attentions=False,
                 segment_ids=None, **head_inputs) -> Output:
        inputs = (input_ids, attention_mask, token_type_ids, position_ids)
        if self.input_rank == 3:  # fold the choices into the batch
            if segment_ids is not None:
                raise ValueError("segment_ids (packed rows) do not apply to multiple choice")
            check_tokens(self.config, *inputs, rank=3)
            inputs = tuple(None if x is None else x.reshape(-1, x.shape[-1]) for x in inputs)
        backbone = self.backbone_cls(self.config, deterministic, add_pooling_layer=self.uses_pooler,
                                     shared_embeddings=self.shared_embeddings, name="backbone")
        # Only packed calls pass segment_ids, so backbones without them keep their signature.
        packed = {} if segment_ids is None else {"segment_ids": segment_ids}
        if head_inputs.get("example_positions") is not None and self.uses_pooler:
            packed["pool_positions"] = head_inputs["example_positions"]
        out = backbone(*inputs, output_hidden_states=output_hidden_states,
                       output_attentions=output_attentions, **packed)
        result = self.head(backbone, out, inputs[1], deterministic, **head_inputs)
        if self.input_rank == 3:
            result["logits"] = result["logits"].reshape(input_ids.shape[:2])
        return Output(**result, hidden_states=out.hidden_states, attentions=out.attentions)

    def head(self, backbone, out: Output, attention_mask, deterministic) -> dict:
        raise NotImplementedError

    def dummy_inputs(self, batch_size: int = 1, length: int = 8) -> dict:
        """Inputs of the right rank for init / eval_shape."""
        shape = (batch_size,) + (2,) * (self.input_rank - 2) + (length,)
        return {"input_ids": jnp.zeros(shape, jnp.int32)}


class EncoderModel(TaskModel):
    """The bare backbone: last_hidden_state, pooler_output (transformers' `<Family>Model`)."""

    task: ClassVar[str] = "base"

    def head(self, backbone, out, attention_mask, deterministic):
        return dict(last_hidden_state=out.last_hidden_state, pooler_output=out.pooler_output)


class ForMaskedLM(TaskModel):
    """Masked-LM logits; with `masked_positions` (B, P) only those positions are decoded."""

    task: ClassVar[str] = "masked-lm"
    uses_pooler: ClassVar[bool] = False
    mlm_head_cls: ClassVar[Any] = MaskedLMHead

    def mlm_logits(self, backbone, hidden, masked_positions):
        if masked_positions is not None:
            hidden = gather_positions(hidden, masked_positions)
        return self.mlm_head_cls(self.config, name="mlm_head")(hidden,
                                                               backbone.word_embedding_table())

    def head(self, backbone, out, attention_mask, deterministic, masked_positions=None):
        return dict(logits=self.mlm_logits(backbone, out.last_hidden_state, masked_positions))


class ForPreTraining(ForMaskedLM):
    """MLM + a sentence-pair head on the pooled output: next-sentence (BERT), sentence order (ALBERT)."""

    task: ClassVar[str] = "pretraining"
    uses_pooler: ClassVar[bool] = True
    pair_output: ClassVar[str] = "seq_relationship_logits"  # ALBERT: "sop_logits"

    def pair_logits(self, pooled, deterministic):
        return Classifier(self.config, 2, name="nsp_head")(pooled)

    def head(self, backbone, out, attention_mask, deterministic, masked_positions=None):
        return {"prediction_logits": self.mlm_logits(backbone, out.last_hidden_state,
                                                     masked_positions),
                self.pair_output: self.pair_logits(out.pooler_output, deterministic)}


class ForNextSentencePrediction(ForPreTraining):
    task: ClassVar[str] = "next-sentence"

    def head(self, backbone, out, attention_mask, deterministic):
        return dict(logits=self.pair_logits(out.pooler_output, deterministic))


class ForSequenceClassification(TaskModel):
    """num_labels logits for the sequence; num_labels=1 is regression."""

    task: ClassVar[str] = "sequence-classification"
    head_cls: ClassVar[Any] = PooledClassifier

    def head(self, backbone, out, attention_mask, deterministic, example_positions=None):
        """`example_positions` (batch, P): packed rows; logits (batch, P, num_labels), each
        example classified from its own first token (and pooled output) as if alone."""
        classifier = self.head_cls(self.config, self.config.num_labels, deterministic,
                                   name="classifier")
        if example_positions is None:
            return dict(logits=classifier(out))
        first = gather_positions(out.last_hidden_state, example_positions)
        pooled = out.pooler_output
        alone = Output(last_hidden_state=first.reshape(-1, 1, first.shape[-1]),
                       pooler_output=None if pooled is None else
                       pooled.reshape(-1, pooled.shape[-1]))
        return dict(logits=classifier(alone).reshape(*example_positions.shape, -1))


class ForTokenClassification(TaskModel):
    task: ClassVar[str] = "token-classification"
    uses_pooler: ClassVar[bool] = False

    def head(self, backbone, out, attention_mask, deterministic):
        cfg = self.config
        return dict(logits=Classifier(cfg, cfg.num_labels, deterministic, cfg.classifier_dropout_prob,
                                      name="token_classifier")(out.last_hidden_state))


class ForQuestionAnswering(TaskModel):
    """Extractive QA: start and end logits over the tokens."""

    task: ClassVar[str] = "question-answering"
    uses_pooler: ClassVar[bool] = False

    def head(self, backbone, out, attention_mask, deterministic):
        rate = getattr(self.config, "qa_dropout", None)  # DistilBERT drops out before the span head
        logits = Classifier(self.config, 2, deterministic, rate,
                            name="qa_outputs")(out.last_hidden_state)
        return dict(start_logits=logits[..., 0], end_logits=logits[..., 1])


class ForMultipleChoice(TaskModel):
    """Inputs (batch, num_choices, length) -> logits (batch, num_choices)."""

    task: ClassVar[str] = "multiple-choice"
    input_rank: ClassVar[int] = 3
    head_cls: ClassVar[Any] = PooledClassifier

    def head(self, backbone, out, attention_mask, deterministic):
        return dict(logits=self.head_cls(self.config, 1, deterministic,
                                         name="choice_classifier")(out))


class ForReplacedTokenDetection(TaskModel):
    """Replaced-token detection (ELECTRA's discriminator, DeBERTa-v3): one logit a token that it
    was replaced (`logits`, (batch, length)). Families register it as their "pretraining" task."""

    task: ClassVar[str] = "pretraining"
    uses_pooler: ClassVar[bool] = False

    def head(self, backbone, out, attention_mask, deterministic):
        return dict(logits=DiscriminatorHead(self.config, name="discriminator_head")(
            out.last_hidden_state))


class ForSentenceEmbedding(TaskModel):
    """Sentence embeddings: `config.pooling` over the tokens, L2-normalised if configured."""

    task: ClassVar[str] = "embedding"

    def head(self, backbone, out, attention_mask, deterministic):
        hidden = out.last_hidden_state
        mask = jnp.ones(hidden.shape[:2], jnp.int32) if attention_mask is None else attention_mask
        emb = pool(hidden, mask, self.config.pooling)
        if self.config.normalize_embeddings:
            emb = l2_normalize(emb)
        return dict(embeddings=emb, last_hidden_state=hidden)


GENERIC_TASKS: dict[str, type[TaskModel]] = {
    cls.task: cls for cls in (EncoderModel, ForPreTraining, ForMaskedLM, ForNextSentencePrediction,
                              ForSequenceClassification, ForTokenClassification,
                              ForQuestionAnswering, ForMultipleChoice, ForSentenceEmbedding)
}
TASKS = tuple(GENERIC_TASKS)


def specialise(prefix: str, module: str, backbone_cls: type[Backbone] = Backbone,
               overrides: dict[str, dict[str, Any]] | None = None,
               replace: dict[str, type[TaskModel]] | None = None,
               drop: tuple[str, ...] = ()) -> dict[str, type[TaskModel]]:
    """A family's task classes: each generic task with the family's backbone and class overrides.

    `overrides[task]` sets class attributes (a head class, uses_pooler, ...), `replace[task]`
    substitutes a class written in the family file, `drop` removes tasks the family lacks.
    Classes are named like transformers' (prefix + "ForMaskedLM", prefix + "Model").
    """
    overrides, replace = overrides or {}, replace or {}
    classes = {}
    for task, generic in GENERIC_TASKS.items():
        if task in drop:
            continue
        if task in replace:
            classes[task] = replace[task]
            continue
        name = prefix + ("Model" if generic is EncoderModel else generic.__name__)
        attrs = {"backbone_cls": backbone_cls, "__module__": module, **overrides.get(task, {})}
        classes[task] = type(name, (generic,), attrs)
    return classes
