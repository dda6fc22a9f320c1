"""ELECTRA (Clark et al., 2020): a generator (masked LM) and a discriminator (replaced-token
detection) over one shared embedding.

What differs from BERT: embeddings of width `embedding_size` projected to hidden_size, no pooler,
the discriminator head (one logit a token; transformers' ElectraForPreTraining), a gelu
two-layer classification head, SequenceSummary for multiple choice, and `ElectraPair`, the
generator + discriminator with shared embeddings that RTD pre-training trains.
"""
from __future__ import annotations

import dataclasses
import logging

import flax.linen as nn
import jax
import numpy as np

from flaxbert.convert.spec import HFSpec
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.embeddings import Embeddings
from flaxbert.layers.heads import FirstTokenClassifier, MaskedLMHead, SummaryClassifier
from flaxbert.models import base, bert, registry
from flaxbert.models.outputs import Output

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ElectraConfig(EncoderConfig):
    embedding_size: int = 128
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    # SequenceSummary (multiple choice), as transformers' ElectraConfig.
    summary_type: str = "first"
    summary_use_proj: bool = True
    summary_activation: str | None = "gelu"
    summary_first_dropout: float = 0.0
    summary_last_dropout: float = 0.1
    summary_proj_to_labels: bool = False


class ElectraGeneratorHead(MaskedLMHead):
    activation: str = "gelu"  # fixed in ELECTRA whatever hidden_act says


class ElectraClassifier(FirstTokenClassifier):
    activation: str = "gelu"


class ElectraForPreTraining(base.ForReplacedTokenDetection):
    """The discriminator (transformers' ElectraForPreTraining)."""


_NO_POOLER = {"uses_pooler": False}
TASK_MODELS = base.specialise(
    "Electra", __name__, drop=("next-sentence",),
    replace={"pretraining": ElectraForPreTraining},
    overrides={"base": _NO_POOLER, "embedding": _NO_POOLER,
               "masked-lm": {"mlm_head_cls": ElectraGeneratorHead},
               "sequence-classification": {"head_cls": ElectraClassifier, **_NO_POOLER},
               "multiple-choice": {"head_cls": SummaryClassifier, **_NO_POOLER}})
ElectraModel = TASK_MODELS["base"]
ElectraForMaskedLM = TASK_MODELS["masked-lm"]
ElectraForSequenceClassification = TASK_MODELS["sequence-classification"]
ElectraForTokenClassification = TASK_MODELS["token-classification"]
ElectraForQuestionAnswering = TASK_MODELS["question-answering"]
ElectraForMultipleChoice = TASK_MODELS["multiple-choice"]
ElectraForSentenceEmbedding = TASK_MODELS["embedding"]


class ElectraPair(nn.Module):
    """Generator and discriminator sharing one embedding module (token, position, type, LN), as
    in the paper. Params: {"embeddings", "generator", "discriminator"}; `split`/`join` convert to
    and from the two separate task models' params (what transformers checkpoints hold)."""

    generator_config: ElectraConfig
    discriminator_config: ElectraConfig

    def setup(self):
        gen, disc = self.generator_config, self.discriminator_config
        for field in ("vocab_size", "padded_vocab_size", "embedding_size",
                      "max_position_embeddings", "type_vocab_size"):
            if getattr(gen, field) != getattr(disc, field):
                raise ValueError(f"ElectraPair: generator {field}={getattr(gen, field)} differs "
                                 f"from the discriminator's {getattr(disc, field)}; shared "
                                 "embeddings need them equal")
        self.embeddings = Embeddings(disc)
        self.generator = ElectraForMaskedLM(gen, shared_embeddings=self.embeddings)
        self.discriminator = ElectraForPreTraining(disc, shared_embeddings=self.embeddings)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
                 masked_positions=None, deterministic=True):
        """Both networks on the same ids (used for init); training feeds the discriminator the
        generator's samples instead, via `generate` and `discriminate`."""
        gen = self.generate(input_ids, attention_mask, token_type_ids,
                            masked_positions=masked_positions, deterministic=deterministic)
        disc = self.discriminate(input_ids, attention_mask, token_type_ids,
                                 deterministic=deterministic)
        return gen, disc

    def generate(self, input_ids, attention_mask=None, token_type_ids=None, *,
                 masked_positions=None, deterministic=True) -> Output:
        return self.generator(input_ids, attention_mask, token_type_ids,
                              masked_positions=masked_positions, deterministic=deterministic)

    def discriminate(self, input_ids, attention_mask=None, token_type_ids=None, *,
                     deterministic=True) -> Output:
        return self.discriminator(input_ids, attention_mask, token_type_ids,
                                  deterministic=deterministic)

    def dummy_inputs(self, batch_size: int = 1, length: int = 8) -> dict:
        return {"input_ids": jax.numpy.zeros((batch_size, length), jax.numpy.int32)}

    @staticmethod
    def split(params: dict) -> tuple[dict, dict]:
        """Pair params -> (generator params, discriminator params), each with the embeddings."""
        def model(name):
            part = dict(params[name])
            part["backbone"] = {"embeddings": params["embeddings"], **part.get("backbone", {})}
            return part
        return model("generator"), model("discriminator")

    @staticmethod
    def join(generator_params: dict, discriminator_params: dict) -> dict:
        """(generator params, discriminator params) -> pair params; the discriminator's
        embeddings are kept (warned if the generator's differ, i.e. were not shared)."""
        gen_emb = generator_params["backbone"]["embeddings"]
        disc_emb = discriminator_params["backbone"]["embeddings"]
        same = jax.tree_util.tree_all(jax.tree_util.tree_map(
            lambda a, b: a.shape == b.shape and np.array_equal(a, b), gen_emb, disc_emb))
        if not same:
            log.warning("generator and discriminator embeddings differ; the pair keeps the "
                        "discriminator's")

        def strip(p):
            rest = {k: v for k, v in p["backbone"].items() if k != "embeddings"}
            return {**{k: v for k, v in p.items() if k != "backbone"}, "backbone": rest}
        return {"embeddings": disc_emb, "generator": strip(generator_params),
                "discriminator": strip(discriminator_params)}


_LAYER_RULES = tuple((p, t) for p, t in bert.LAYER_RULES if "pooler" not in p)
HF = HFSpec(
    model_type="electra", class_prefix="Electra", base_prefix="electra",
    rules=_LAYER_RULES + (
        (r"backbone/embeddings_project", r"{base}embeddings_project"),
        (r"discriminator_head/(dense|dense_prediction)", r"discriminator_predictions.\1"),
        (r"mlm_head/norm", "generator_predictions.LayerNorm"),
        (r"mlm_head/dense", "generator_predictions.dense"),
        (r"mlm_head", "generator_lm_head"),
        (r"classifier/(dense|out_proj)", r"classifier.\1"),
        (r"choice_classifier/sequence_summary/summary", "sequence_summary.summary"),
        (r"(token_|choice_)classifier/dense", "classifier"),
        (r"qa_outputs/dense", "qa_outputs"),
    ),
    ignore=(r"generator_lm_head\.weight",),
    head_prefixes=("discriminator_predictions.", "generator_", "classifier.", "sequence_summary.",
                   "qa_outputs."),
    config_requirements=bert.HF.config_requirements,
)

FAMILY = registry.register_family(registry.Family(
    name="electra", config_cls=ElectraConfig, task_models=TASK_MODELS, hf=HF))


def _electra(emb: int, hidden: int, layers: int, heads: int) -> ElectraConfig:
    return ElectraConfig(embedding_size=emb, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=4 * hidden)


for _name, _config in {
    "electra-tiny": ElectraConfig(embedding_size=64, hidden_size=128, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=512),
    "electra-tiny-generator": ElectraConfig(embedding_size=64, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=1, intermediate_size=128),
    "electra-small-discriminator": _electra(128, 256, 12, 4),
    "electra-small-generator": _electra(128, 256, 12, 4),
    "electra-base-discriminator": _electra(768, 768, 12, 12),
    "electra-base-generator": _electra(768, 256, 12, 4),
    "electra-large-discriminator": _electra(1024, 1024, 24, 16),
    "electra-large-generator": _electra(1024, 256, 24, 4),
}.items():
    registry.register(_name, _config)
