"""DistilBERT (Sanh et al., 2019): a 6-layer BERT without token types or pooler.

What differs from BERT: no token-type embeddings and no pooler; sequence heads classify [CLS]
through `pre_classifier` + ReLU; dropout before the span head; transformers' config names
(dim, n_layers, ...). Also the recipe's student initialisation from a BERT teacher.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from flaxbert.convert.spec import HFSpec
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.feed_forward import dense
from flaxbert.models import base, registry


@dataclasses.dataclass(frozen=True)
class DistilBertConfig(EncoderConfig):
    num_hidden_layers: int = 6
    type_vocab_size: int = 0
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    sinusoidal_pos_embds: bool = False  # weights are stored either way; only init differs


class DistilBertClassifier(nn.Module):
    """[CLS] -> pre_classifier -> ReLU -> dropout -> Dense(num_outputs)."""

    config: DistilBertConfig
    num_outputs: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, out):
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, ("embed", "embed_proj"), "pre_classifier")(
            out.last_hidden_state[:, 0])
        x = nn.Dropout(cfg.seq_classif_dropout, deterministic=self.deterministic)(jax.nn.relu(x))
        return dense(cfg, self.num_outputs, ("embed", "classes"), "dense")(x)


_CLS = {"head_cls": DistilBertClassifier, "uses_pooler": False}
TASK_MODELS = base.specialise(
    "DistilBert", __name__, drop=("pretraining", "next-sentence"),
    overrides={"base": {"uses_pooler": False}, "embedding": {"uses_pooler": False},
               "sequence-classification": _CLS, "multiple-choice": _CLS})
DistilBertModel = TASK_MODELS["base"]
DistilBertForMaskedLM = TASK_MODELS["masked-lm"]
DistilBertForSequenceClassification = TASK_MODELS["sequence-classification"]
DistilBertForTokenClassification = TASK_MODELS["token-classification"]
DistilBertForQuestionAnswering = TASK_MODELS["question-answering"]
DistilBertForMultipleChoice = TASK_MODELS["multiple-choice"]
DistilBertForSentenceEmbedding = TASK_MODELS["embedding"]

_LAYER = r"backbone/encoder/layers_(\d+)"
HF = HFSpec(
    model_type="distilbert", class_prefix="DistilBert", base_prefix="distilbert",
    rules=(
        # query / key / value -> q_lin / k_lin / v_lin
        (rf"{_LAYER}/attention/(q|k|v)\w*", r"{base}transformer.layer.\1.attention.\2_lin"),
        (rf"{_LAYER}/attention/out", r"{base}transformer.layer.\1.attention.out_lin"),
        (rf"{_LAYER}/attention_norm", r"{base}transformer.layer.\1.sa_layer_norm"),
        (rf"{_LAYER}/mlp/wi", r"{base}transformer.layer.\1.ffn.lin1"),
        (rf"{_LAYER}/mlp/wo", r"{base}transformer.layer.\1.ffn.lin2"),
        (rf"{_LAYER}/mlp_norm", r"{base}transformer.layer.\1.output_layer_norm"),
        (r"backbone/embeddings/norm", r"{base}embeddings.LayerNorm"),
        (r"backbone/embeddings/(\w+)", r"{base}embeddings.\1"),
        (r"mlm_head/dense", "vocab_transform"),
        (r"mlm_head/norm", "vocab_layer_norm"),
        (r"mlm_head", "vocab_projector"),
        (r"(choice_)?classifier/pre_classifier", "pre_classifier"),
        (r"(token_|choice_)?classifier/dense", "classifier"),
        (r"qa_outputs/dense", "qa_outputs"),
    ),
    ignore=(r"vocab_projector\.weight",),
    head_prefixes=("vocab_", "pre_classifier.", "classifier.", "qa_outputs."),
    config_renames=(("dim", "hidden_size"), ("n_layers", "num_hidden_layers"),
                    ("n_heads", "num_attention_heads"), ("hidden_dim", "intermediate_size"),
                    ("dropout", "hidden_dropout_prob"),
                    ("attention_dropout", "attention_probs_dropout_prob"),
                    ("activation", "hidden_act")),
)

FAMILY = registry.register_family(registry.Family(
    name="distilbert", config_cls=DistilBertConfig, task_models=TASK_MODELS, hf=HF))

registry.register("distilbert-tiny", DistilBertConfig(hidden_size=128, num_hidden_layers=2,
                                                      num_attention_heads=2, intermediate_size=512))
registry.register("distilbert-base-uncased", DistilBertConfig())
registry.register("distilbert-base-cased", DistilBertConfig(vocab_size=28996))


def student_from_teacher(teacher: nn.Module, teacher_params: dict, *, layers=None):
    """A DistilBERT masked-LM initialised from a BERT teacher, as in the DistilBERT recipe.

    Takes the teacher's word and position embeddings, every second layer (or `layers`, a list of
    teacher layer indices) and, when the teacher has one, its MLM head. Returns (model, params).
    """
    from flaxbert.layers.encoder import stack_layers, unstack_layers
    tcfg = teacher.config
    if registry.family_of(tcfg).name not in ("bert", "distilbert"):
        raise ValueError(f"a DistilBERT student needs a BERT-shaped teacher, got "
                         f"{registry.family_of(tcfg).name}")
    layers = list(range(0, tcfg.num_hidden_layers, 2)) if layers is None else list(layers)
    if not layers or max(layers) >= tcfg.num_hidden_layers or min(layers) < 0:
        raise ValueError(f"layers {layers} are not teacher layers 0..{tcfg.num_hidden_layers - 1}")
    shared = {f.name for f in dataclasses.fields(EncoderConfig)} - {"type_vocab_size"}
    config = DistilBertConfig(**{k: v for k, v in tcfg.to_dict().items() if k in shared}).replace(
        num_hidden_layers=len(layers))
    params = unstack_layers(teacher_params) if tcfg.scan_layers else teacher_params
    embeddings = {k: v for k, v in params["backbone"]["embeddings"].items()
                  if k != "token_type_embeddings"}
    encoder = {f"layers_{i}": params["backbone"]["encoder"][f"layers_{t}"]
               for i, t in enumerate(layers)}
    student = {"backbone": {"embeddings": embeddings, "encoder": encoder}}
    model = TASK_MODELS["masked-lm"](config)
    if "mlm_head" in params:
        student["mlm_head"] = params["mlm_head"]
    else:
        from flaxbert import init_params
        student["mlm_head"] = init_params(model)["mlm_head"]
    if config.scan_layers:
        student = stack_layers(student)
    return model, jax.tree_util.tree_map(lambda x: x, student)
