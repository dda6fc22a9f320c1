"""ALBERT (Lan et al., 2019): factorised embeddings and cross-layer parameter sharing.

What differs from BERT: embeddings of width `embedding_size` projected to hidden_size (the shared
backbone does that whenever the widths differ), and `num_hidden_groups` groups of
`inner_group_num` layers whose parameters are reused: layer i runs group
i * num_hidden_groups // num_hidden_layers. Pre-training pairs MLM with sentence-order prediction
(SOP), a dropout + linear head over num_labels on the pooled output.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn

from flaxbert.convert.spec import HFSpec
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.encoder import TransformerBlock, rematerialised
from flaxbert.layers.heads import Classifier
from flaxbert.models import base, registry


@dataclasses.dataclass(frozen=True)
class AlbertConfig(EncoderConfig):
    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout: float | None = 0.1
    num_hidden_groups: int = 1
    inner_group_num: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.num_hidden_layers % self.num_hidden_groups:
            raise ValueError(f"AlbertConfig: num_hidden_layers={self.num_hidden_layers} is not a "
                             f"multiple of num_hidden_groups={self.num_hidden_groups}")
        if self.scan_layers:
            raise ValueError("AlbertConfig: scan_layers does not apply to ALBERT, whose layers "
                             "share parameters; leave it False")


class AlbertEncoder(nn.Module):
    """Runs the shared groups: each group's layers are created once and called many times."""

    config: AlbertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, *, output_hidden_states=False, output_attentions=False):
        cfg = self.config
        block = rematerialised(TransformerBlock, cfg)
        groups = [[block(cfg, self.deterministic, output_attentions, output_hidden_states,
                         name=f"group_{g}_layer_{j}") for j in range(cfg.inner_group_num)]
                  for g in range(cfg.num_hidden_groups)]
        hidden, probs = [], []
        for i in range(cfg.num_hidden_layers):
            for layer in groups[i * cfg.num_hidden_groups // cfg.num_hidden_layers]:
                x, (h, p) = layer(x, mask)
                hidden.append(h)
                probs.append(p)
        return (x, tuple(hidden) if output_hidden_states else None,
                tuple(probs) if output_attentions else None)


class AlbertBackbone(base.Backbone):
    encoder_cls = AlbertEncoder


class AlbertForPreTraining(base.ForPreTraining):
    backbone_cls = AlbertBackbone
    pair_output = "sop_logits"

    def pair_logits(self, pooled, deterministic):
        # Sentence-order prediction: dropout + linear over num_labels (2 for the paper's SOP).
        cfg = self.config
        return Classifier(cfg, cfg.num_labels, deterministic, cfg.classifier_dropout_prob,
                          name="nsp_head")(pooled)


TASK_MODELS = base.specialise("Albert", __name__, AlbertBackbone, drop=("next-sentence",),
                              replace={"pretraining": AlbertForPreTraining})
AlbertModel = TASK_MODELS["base"]
AlbertForMaskedLM = TASK_MODELS["masked-lm"]
AlbertForSequenceClassification = TASK_MODELS["sequence-classification"]
AlbertForTokenClassification = TASK_MODELS["token-classification"]
AlbertForQuestionAnswering = TASK_MODELS["question-answering"]
AlbertForMultipleChoice = TASK_MODELS["multiple-choice"]
AlbertForSentenceEmbedding = TASK_MODELS["embedding"]

_LAYER = r"backbone/encoder/group_(\d+)_layer_(\d+)"
_HF_LAYER = r"{base}encoder.albert_layer_groups.\1.albert_layers.\2"
HF = HFSpec(
    model_type="albert", class_prefix="Albert", base_prefix="albert",
    rules=(
        (rf"{_LAYER}/attention/(query|key|value)", rf"{_HF_LAYER}.attention.\3"),
        (rf"{_LAYER}/attention/out", rf"{_HF_LAYER}.attention.dense"),
        (rf"{_LAYER}/attention_norm", rf"{_HF_LAYER}.attention.LayerNorm"),
        (rf"{_LAYER}/mlp/wi", rf"{_HF_LAYER}.ffn"),
        (rf"{_LAYER}/mlp/wo", rf"{_HF_LAYER}.ffn_output"),
        (rf"{_LAYER}/mlp_norm", rf"{_HF_LAYER}.full_layer_layer_norm"),
        (r"backbone/embeddings_project", r"{base}encoder.embedding_hidden_mapping_in"),
        (r"backbone/embeddings/norm", r"{base}embeddings.LayerNorm"),
        (r"backbone/embeddings/(\w+)", r"{base}embeddings.\1"),
        (r"backbone/pooler/dense", r"{base}pooler"),
        (r"mlm_head/norm", "predictions.LayerNorm"),
        (r"mlm_head/dense", "predictions.dense"),
        (r"mlm_head", "predictions"),
        (r"nsp_head/dense", "sop_classifier.classifier"),
        (r"(token_|choice_)?classifier/dense", "classifier"),
        (r"qa_outputs/dense", "qa_outputs"),
    ),
    ignore=(r"predictions\.decoder\.(weight|bias)",),
    head_prefixes=("predictions.", "sop_classifier.", "classifier.", "qa_outputs."),
    config_renames=(("classifier_dropout_prob", "classifier_dropout"),),
    config_requirements=(("position_embedding_type", ("absolute",)),),
)

FAMILY = registry.register_family(registry.Family(
    name="albert", config_cls=AlbertConfig, task_models=TASK_MODELS, hf=HF))


def _albert(hidden: int, layers: int, heads: int) -> AlbertConfig:
    return AlbertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden)


for _name, _config in {
    "albert-tiny": AlbertConfig(embedding_size=64, hidden_size=128, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=512),
    "albert-base-v2": _albert(768, 12, 12),
    "albert-large-v2": _albert(1024, 24, 16),
    "albert-xlarge-v2": _albert(2048, 24, 16),
    "albert-xxlarge-v2": _albert(4096, 12, 64),
}.items():
    registry.register(_name, _config)
