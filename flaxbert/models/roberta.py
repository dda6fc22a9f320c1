"""RoBERTa (Liu et al., 2019): BERT's network with padding-aware positions and its own heads.

What differs from BERT: position ids count only non-padding tokens and start after padding_idx
(so 514 positions hold 512 tokens), no NSP head, a two-layer tanh classification head on <s>, and
an MLM head whose activation is always gelu. Byte-level BPE tokenization lives in
flaxbert.tokenizer.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from flaxbert.convert.spec import HFSpec
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.heads import FirstTokenClassifier, MaskedLMHead
from flaxbert.models import base, bert, registry


@dataclasses.dataclass(frozen=True)
class RobertaConfig(EncoderConfig):
    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings - self.pad_token_id - 1


class RobertaLMHead(MaskedLMHead):
    activation: str = "gelu"  # fixed in RoBERTa whatever hidden_act says


class RobertaBackbone(base.Backbone):
    def default_position_ids(self, input_ids):
        # As transformers: padding keeps position padding_idx; real tokens count up from it.
        pad = self.config.pad_token_id
        real = (input_ids != pad).astype(jnp.int32)
        return jnp.cumsum(real, axis=-1) * real + pad


TASK_MODELS = base.specialise(
    "Roberta", __name__, RobertaBackbone, drop=("pretraining", "next-sentence"),
    overrides={
        "masked-lm": {"mlm_head_cls": RobertaLMHead},
        "sequence-classification": {"head_cls": FirstTokenClassifier, "uses_pooler": False},
    })
RobertaModel = TASK_MODELS["base"]
RobertaForMaskedLM = TASK_MODELS["masked-lm"]
RobertaForSequenceClassification = TASK_MODELS["sequence-classification"]
RobertaForTokenClassification = TASK_MODELS["token-classification"]
RobertaForQuestionAnswering = TASK_MODELS["question-answering"]
RobertaForMultipleChoice = TASK_MODELS["multiple-choice"]
RobertaForSentenceEmbedding = TASK_MODELS["embedding"]

HF = HFSpec(
    model_type="roberta", class_prefix="Roberta", base_prefix="roberta",
    rules=bert.LAYER_RULES + (
        (r"mlm_head/norm", "lm_head.layer_norm"),
        (r"mlm_head/dense", "lm_head.dense"),
        (r"mlm_head", "lm_head"),
        (r"classifier/(dense|out_proj)", r"classifier.\1"),
        (r"(token_|choice_)classifier/dense", "classifier"),
        (r"qa_outputs/dense", "qa_outputs"),
    ),
    ignore=(r"lm_head\.decoder\.(weight|bias)",),
    head_prefixes=("lm_head.", "classifier.", "qa_outputs."),
    config_requirements=bert.HF.config_requirements,
)

FAMILY = registry.register_family(registry.Family(
    name="roberta", config_cls=RobertaConfig, task_models=TASK_MODELS, hf=HF))

registry.register("roberta-tiny", RobertaConfig(hidden_size=128, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=512))
registry.register("roberta-base", RobertaConfig())
registry.register("roberta-large", RobertaConfig(hidden_size=1024, num_hidden_layers=24,
                                                 num_attention_heads=16, intermediate_size=4096))
registry.register("distilroberta-base", RobertaConfig(num_hidden_layers=6))
