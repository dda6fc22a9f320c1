"""DeBERTa v2/v3 (He et al., 2020; 2021): disentangled attention over relative positions.

What differs from BERT: attention scores add content->position (c2p) and position->content (p2c)
terms against a shared table of relative-position embeddings (log-bucketed with
`position_buckets`, optionally LayerNorm'd, optionally projected by the content q/k weights when
`share_att_key`); the scale is sqrt(head_dim * (1 + number of position terms)); absolute
positions are optional (`position_biased_input`); padded positions are zeroed after the
embeddings and masked as queries too; a convolution follows the first layer when
`conv_kernel_size` > 0 (v2-xlarge); the sequence head is a ContextPooler; v3's replaced-token
detection head is the shared one ELECTRA uses.

transformers' "enhanced mask decoder" is its `z_steps` loop, fixed at 0 there (never run), so the
masked-LM head here is exactly its legacy `cls.predictions` head (or `lm_predictions` when
legacy=False), with no extra decoding pass.
"""
from __future__ import annotations

import dataclasses
import sys

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from flaxbert.convert.spec import TASK_CLASSES, HFSpec
from flaxbert.layers import peft, sharding
from flaxbert.layers.attention import SelfAttention, head_projection
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.embeddings import Embeddings
from flaxbert.layers.encoder import Encoder, TransformerBlock
from flaxbert.layers.feed_forward import activation, dense, layer_norm
from flaxbert.models import base, bert, registry


@dataclasses.dataclass(frozen=True)
class DebertaV2Config(EncoderConfig):
    # Defaults are transformers' DebertaV2Config defaults, so a config.json that omits a field
    # means the same here.
    vocab_size: int = 128100
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_buckets: int = -1
    pos_att_type: tuple[str, ...] | str | None = None
    norm_rel_ebd: str = "none"
    share_att_key: bool = False
    position_biased_input: bool = True
    attention_head_size: int | None = None
    embedding_size: int | None = None
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    pooler_hidden_size: int | None = None
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    cls_dropout: float | None = None
    legacy: bool = True
    sparse_attention_unsupported = ("DeBERTa's disentangled attention adds a relative-position "
                                    "bias to every (query, key) score")

    def __post_init__(self):
        # config.json writes pos_att_type as "p2c|c2p" or a list; keep a tuple.
        types = self.pos_att_type
        if isinstance(types, str):
            types = [t for t in types.lower().replace(" ", "").split("|") if t]
        object.__setattr__(self, "pos_att_type", tuple(types or ()))
        super().__post_init__()
        unknown = set(self.pos_att_type) - {"c2p", "p2c"}
        if unknown:
            raise ValueError(f"DebertaV2Config: pos_att_type {sorted(unknown)} not supported; "
                             "use c2p and/or p2c")
        if self.scan_layers and self.conv_kernel_size > 0:
            raise ValueError("DebertaV2Config: scan_layers cannot express the convolution after "
                             "the first layer (conv_kernel_size > 0)")

    @property
    def head_dim(self) -> int:
        return self.attention_head_size or self.hidden_size // self.num_attention_heads

    @property
    def max_relative(self) -> int:
        return self.max_relative_positions if self.max_relative_positions >= 1 else \
            self.max_position_embeddings

    @property
    def attention_span(self) -> int:
        """Half the number of relative-position embeddings."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative

    @property
    def max_sequence_length(self) -> int:
        # Relative positions are bucketed, so only an absolute table limits the length.
        return self.max_position_embeddings if self.position_biased_input else sys.maxsize


def relative_positions(length: int, buckets: int, max_position: int) -> np.ndarray:
    """(length, length) relative positions q - k, log-bucketed as transformers does.

    A static constant (lengths are static under jit). The bucketing runs in float32 numpy,
    mirroring torch's float32 arithmetic, so boundary cases round the same way.
    """
    rel = np.arange(length)[:, None] - np.arange(length)[None, :]
    if buckets <= 0 or max_position <= 0:
        return rel.astype(np.int32)
    mid = buckets // 2
    sign = np.sign(rel).astype(np.float32)
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float32)
    log_pos = np.ceil(np.log(abs_pos / np.float32(mid))
                      / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)) + mid
    return np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign).astype(np.int32)


class DisentangledAttention(SelfAttention):
    """Self-attention plus c2p / p2c terms; its extra arguments are (rel_table, rel_positions)."""

    @property
    def heads(self) -> tuple[int, int]:
        return self.config.num_attention_heads, self.config.head_dim

    def scale(self) -> float:
        factor = 1 + len(self.config.pos_att_type)
        return (self.heads[1] * factor) ** -0.5

    def expand_mask(self, mask, impl):
        # transformers masks padded queries as well as keys (mask_i * mask_j). cuDNN takes
        # lengths only; padded query rows then differ, which nothing downstream reads.
        if impl == "cudnn":
            return mask
        return (mask[:, None, :, None] * mask[:, None, None, :]).astype(bool)

    def _project(self, name, table):
        """Apply an existing q/k projection (shared with the content stream) to the table."""
        params = nn.meta.unbox(self.variables["params"])
        p, dtype = params[name], self.config.compute_dtype
        out = jnp.einsum("re,enh->rnh", table.astype(dtype), p["kernel"].astype(dtype)) + \
            p["bias"].astype(dtype)
        if f"{name}_lora" in params:  # LoRA changes the projection, so both of its uses
            out = out + peft.apply_lora_params(self.config, params[f"{name}_lora"], table)
        return out

    def bias(self, query, key, rel_table=None, rel_pos=None):
        cfg = self.config
        if rel_table is None or not cfg.pos_att_type:
            return None
        table = nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)(rel_table)
        span = cfg.attention_span
        heads, head_dim = self.heads
        scale = jnp.asarray(self.scale(), query.dtype)
        score = 0.0
        if "c2p" in cfg.pos_att_type:
            pos_key = (self._project("key", table) if cfg.share_att_key else
                       head_projection(cfg, "pos_key", heads, head_dim)(table[None])[0])
            c2p = jnp.einsum("btnh,rnh->bntr", query, pos_key)
            index = jnp.clip(rel_pos + span, 0, 2 * span - 1)
            score = score + jnp.take_along_axis(
                c2p, jnp.broadcast_to(index, c2p.shape[:2] + index.shape), axis=-1) * scale
        if "p2c" in cfg.pos_att_type:
            pos_query = (self._project("query", table) if cfg.share_att_key else
                         head_projection(cfg, "pos_query", heads, head_dim)(table[None])[0])
            p2c = jnp.einsum("bsnh,rnh->bnsr", key, pos_query)
            # Row j (a key) gathers at -rel(j, i) + span for each query i, then transposes.
            index = jnp.clip(-rel_pos + span, 0, 2 * span - 1)
            gathered = jnp.take_along_axis(
                p2c, jnp.broadcast_to(index, p2c.shape[:2] + index.shape), axis=-1)
            score = score + jnp.swapaxes(gathered, -1, -2) * scale
        return sharding.constrain(score, ("act_batch", "act_heads", "act_length", None))


class DebertaBlock(TransformerBlock):
    attention: type[nn.Module] = DisentangledAttention


class DebertaEncoder(Encoder):
    """The shared stack, fed the relative-position table, plus the optional post-layer-0 conv."""

    block: type[nn.Module] = DebertaBlock

    @nn.compact
    def __call__(self, x, mask, *, output_hidden_states=False, output_attentions=False):
        cfg = self.config
        extras = ()
        if cfg.relative_attention:
            size = 2 * cfg.attention_span
            table = nn.Embed(size, cfg.hidden_size, dtype=cfg.compute_dtype,
                             param_dtype=cfg.weights_dtype, name="rel_embeddings",
                             embedding_init=sharding.param_init(
                                 nn.initializers.normal(cfg.initializer_range),
                                 ("positions", "embed")))(jnp.arange(size))
            if "layer_norm" in [t.strip() for t in cfg.norm_rel_ebd.lower().split("|")]:
                table = layer_norm(cfg, "rel_norm")(table)
            extras = (table, jnp.asarray(relative_positions(x.shape[1], cfg.position_buckets,
                                                            cfg.max_relative)))
        return self.stack(x, mask, *extras, output_hidden_states=output_hidden_states,
                          output_attentions=output_attentions)

    def works_between_layers(self) -> bool:
        return self.config.conv_kernel_size > 0

    def after_layer(self, index, encoder_input, x, mask):
        cfg = self.config
        if index != 0 or cfg.conv_kernel_size <= 0:
            return x
        k = cfg.conv_kernel_size
        keep = (jnp.ones(x.shape[:2], x.dtype) if mask is None else mask.astype(x.dtype))[..., None]
        out = nn.Conv(cfg.hidden_size, (k,), padding=[((k - 1) // 2, (k - 1) // 2)],
                      feature_group_count=cfg.conv_groups, dtype=cfg.compute_dtype,
                      param_dtype=cfg.weights_dtype, name="conv",
                      kernel_init=sharding.param_init(
                          nn.initializers.normal(cfg.initializer_range),
                          ("conv_width", "embed_proj", "embed")),
                      bias_init=sharding.param_init(nn.initializers.zeros, ("embed",)))(
                          encoder_input) * keep
        out = activation(cfg.conv_act)(
            nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)(out))
        return layer_norm(cfg, "conv_norm")(x + out) * keep


class DebertaEmbeddings(Embeddings):
    """The shared embeddings, projected to hidden_size (no bias) before the LayerNorm when
    narrower; absolute positions only with position_biased_input."""

    def normalize(self, x):
        cfg = self.config
        if cfg.embedding_width != cfg.hidden_size:
            x = dense(cfg, cfg.hidden_size, ("embed_proj", "embed"), "embed_proj",
                      use_bias=False)(x)
        return layer_norm(cfg, "norm")(x)


class DebertaBackbone(base.Backbone):
    embeddings_cls = DebertaEmbeddings
    encoder_cls = DebertaEncoder

    def embed(self, input_ids, attention_mask, token_type_ids, position_ids):
        x = super().embed(input_ids, attention_mask, token_type_ids, position_ids)
        # Padded positions are zeroed; dropout after or before this is the same.
        return x if attention_mask is None else x * attention_mask[..., None].astype(x.dtype)


class ContextPoolerClassifier(nn.Module):
    """token 0 -> dropout -> pooler dense -> act -> dropout (cls_dropout) -> Dense(num_outputs)."""

    config: DebertaV2Config
    num_outputs: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, out):
        cfg = self.config
        width = cfg.pooler_hidden_size or cfg.hidden_size
        x = nn.Dropout(cfg.pooler_dropout, deterministic=self.deterministic)(
            out.last_hidden_state[:, 0])
        x = activation(cfg.pooler_hidden_act)(dense(cfg, width, ("embed", "embed_proj"), "pooler")(x))
        rate = cfg.hidden_dropout_prob if cfg.cls_dropout is None else cfg.cls_dropout
        x = nn.Dropout(rate, deterministic=self.deterministic)(x)
        return dense(cfg, self.num_outputs, ("embed", "classes"), "dense")(x)


class DebertaV2ForReplacedTokenDetection(base.ForReplacedTokenDetection):
    """DeBERTa-v3's discriminator (no transformers class; its weights are `mask_predictions.*`,
    which transformers' loaders skip)."""

    backbone_cls = DebertaBackbone


_NO_POOLER = {"uses_pooler": False}
_CLS = {"head_cls": ContextPoolerClassifier, **_NO_POOLER}
TASK_MODELS = base.specialise(
    "DebertaV2", __name__, DebertaBackbone, drop=("next-sentence",),
    replace={"pretraining": DebertaV2ForReplacedTokenDetection},
    overrides={"base": _NO_POOLER, "embedding": _NO_POOLER,
               "sequence-classification": _CLS, "multiple-choice": _CLS})
DebertaV2Model = TASK_MODELS["base"]
DebertaV2ForMaskedLM = TASK_MODELS["masked-lm"]
DebertaV2ForSequenceClassification = TASK_MODELS["sequence-classification"]
DebertaV2ForTokenClassification = TASK_MODELS["token-classification"]
DebertaV2ForQuestionAnswering = TASK_MODELS["question-answering"]
DebertaV2ForMultipleChoice = TASK_MODELS["multiple-choice"]
DebertaV2ForSentenceEmbedding = TASK_MODELS["embedding"]

_LAYER = r"backbone/encoder/layers_(\d+)"
_HF_ATTN = r"{base}encoder.layer.\1.attention.self"


def _mlm_rules(config) -> tuple[tuple[str, str], ...]:
    if config.legacy:
        return ((r"mlm_head/dense", "cls.predictions.transform.dense"),
                (r"mlm_head/norm", "cls.predictions.transform.LayerNorm"),
                (r"mlm_head", "cls.predictions"))
    return ((r"mlm_head/dense", "lm_predictions.lm_head.dense"),
            (r"mlm_head/norm", "lm_predictions.lm_head.LayerNorm"),
            (r"mlm_head", "lm_predictions.lm_head"))


HF = HFSpec(
    model_type="deberta-v2", class_prefix="DebertaV2", base_prefix="deberta",
    rules=(
        (rf"{_LAYER}/attention/(query|key|value)", rf"{_HF_ATTN}.\2_proj"),
        (rf"{_LAYER}/attention/pos_(query|key)", rf"{_HF_ATTN}.pos_\2_proj"),
        *[(p, t) for p, t in bert.LAYER_RULES
          if "attention/(query" not in p and "pooler" not in p and "embeddings/" not in p],
        (r"backbone/embeddings/norm", r"{base}embeddings.LayerNorm"),
        (r"backbone/embeddings/(\w+)", r"{base}embeddings.\1"),
        (r"backbone/encoder/rel_embeddings", r"{base}encoder.rel_embeddings"),
        (r"backbone/encoder/rel_norm", r"{base}encoder.LayerNorm"),
        (r"backbone/encoder/conv", r"{base}encoder.conv.conv"),
        (r"backbone/encoder/conv_norm", r"{base}encoder.conv.LayerNorm"),
        (r"(choice_)?classifier/pooler", "pooler.dense"),
        (r"(token_|choice_)?classifier/dense", "classifier"),
        (r"qa_outputs/dense", "qa_outputs"),
        (r"discriminator_head/dense", "mask_predictions.dense"),
        (r"discriminator_head/dense_prediction", "mask_predictions.classifier"),
    ),
    config_rules=_mlm_rules,
    layouts=((r".*/conv/kernel", (2, 1, 0)),),  # flax (width, in, out) <-> torch (out, in, width)
    ignore=(r"cls\.predictions\.decoder\.(weight|bias)",),
    task_classes=tuple((t, "ForReplacedTokenDetection" if t == "pretraining" else s)
                       for t, s in TASK_CLASSES),
    head_prefixes=("cls.", "lm_predictions.", "pooler.", "classifier.", "qa_outputs.",
                   "mask_predictions."),
)

FAMILY = registry.register_family(registry.Family(
    name="deberta-v2", config_cls=DebertaV2Config, task_models=TASK_MODELS, hf=HF))


def _v3(hidden: int, layers: int, heads: int) -> DebertaV2Config:
    return DebertaV2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, relative_attention=True, position_buckets=256,
        norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=("p2c", "c2p"),
        position_biased_input=False, pooler_hidden_size=hidden)


for _name, _config in {
    "deberta-v3-tiny": _v3(128, 2, 2).replace(position_buckets=16),
    "deberta-v3-xsmall": _v3(384, 12, 6),
    "deberta-v3-small": _v3(768, 6, 12),
    "deberta-v3-base": _v3(768, 12, 12),
    "deberta-v3-large": _v3(1024, 24, 16),
    "deberta-v2-xlarge": _v3(1536, 24, 24).replace(conv_kernel_size=3, conv_act="gelu"),
}.items():
    registry.register(_name, _config)
