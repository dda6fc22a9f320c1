"""BERT (Devlin et al., 2018): the reference family; everything it uses lives in flaxbert.layers.

Google's released sizes (the 2020 "well-read students" miniatures included) are registered here.
"""
from __future__ import annotations

import dataclasses

from flaxbert.convert.spec import HFSpec
from flaxbert.layers.config import EncoderConfig
from flaxbert.models import base, registry


@dataclasses.dataclass(frozen=True)
class BertConfig(EncoderConfig):
    """BERT needs nothing beyond the shared encoder fields."""


TASK_MODELS = base.specialise("Bert", __name__)
BertModel = TASK_MODELS["base"]
BertForPreTraining = TASK_MODELS["pretraining"]
BertForMaskedLM = TASK_MODELS["masked-lm"]
BertForNextSentencePrediction = TASK_MODELS["next-sentence"]
BertForSequenceClassification = TASK_MODELS["sequence-classification"]
BertForTokenClassification = TASK_MODELS["token-classification"]
BertForQuestionAnswering = TASK_MODELS["question-answering"]
BertForMultipleChoice = TASK_MODELS["multiple-choice"]
BertForSentenceEmbedding = TASK_MODELS["embedding"]

_LAYER = r"backbone/encoder/layers_(\d+)"
# The encoder-layer names BERT, RoBERTa and ELECTRA share in transformers.
LAYER_RULES = (
    (rf"{_LAYER}/attention/(query|key|value)", r"{base}encoder.layer.\1.attention.self.\2"),
    (rf"{_LAYER}/attention/out", r"{base}encoder.layer.\1.attention.output.dense"),
    (rf"{_LAYER}/attention_norm", r"{base}encoder.layer.\1.attention.output.LayerNorm"),
    (rf"{_LAYER}/mlp/wi", r"{base}encoder.layer.\1.intermediate.dense"),
    (rf"{_LAYER}/mlp/wo", r"{base}encoder.layer.\1.output.dense"),
    (rf"{_LAYER}/mlp_norm", r"{base}encoder.layer.\1.output.LayerNorm"),
    (r"backbone/embeddings/norm", r"{base}embeddings.LayerNorm"),
    (r"backbone/embeddings/(\w+)", r"{base}embeddings.\1"),
    (r"backbone/pooler/dense", r"{base}pooler.dense"),
)
HF = HFSpec(
    model_type="bert", class_prefix="Bert", base_prefix="bert",
    rules=LAYER_RULES + (
        (r"mlm_head/dense", "cls.predictions.transform.dense"),
        (r"mlm_head/norm", "cls.predictions.transform.LayerNorm"),
        (r"mlm_head", "cls.predictions"),
        (r"nsp_head/dense", "cls.seq_relationship"),
        (r"(token_|choice_)?classifier/dense", "classifier"),
        (r"qa_outputs/dense", "qa_outputs"),
    ),
    ignore=(r"cls\.predictions\.decoder\.(weight|bias)",),
    head_prefixes=("cls.", "classifier.", "qa_outputs."),
    config_requirements=(("position_embedding_type", ("absolute",)), ("is_decoder", (False,)),
                         ("add_cross_attention", (False,))),
)

FAMILY = registry.register_family(registry.Family(
    name="bert", config_cls=BertConfig, task_models=TASK_MODELS, hf=HF))


def _google(layers: int, hidden: int, heads: int, vocab_size: int = 30522) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=4 * hidden)


for _name, _config in {
    "bert-tiny": _google(2, 128, 2),
    "bert-mini": _google(4, 256, 4),
    "bert-small": _google(4, 512, 8),
    "bert-medium": _google(8, 512, 8),
    "bert-base-uncased": _google(12, 768, 12),
    "bert-base-cased": _google(12, 768, 12, vocab_size=28996),
    "bert-large-uncased": _google(24, 1024, 16),
    "bert-large-cased": _google(24, 1024, 16, vocab_size=28996),
}.items():
    registry.register(_name, _config)
