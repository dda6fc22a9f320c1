"""MobileBERT (Sun et al., 2020): a thin, deep BERT whose layers work inside a bottleneck.

What differs from BERT, following transformers' MobileBertModel:
- Embeddings: word vectors of width embedding_size; with `trigram_input` each token's vector is
  concatenated with its right and left neighbours' (zeros past the ends), and a projection
  (`embedding_transformation`) takes the result to hidden_size before the position and type
  embeddings (hidden_size wide) are added.
- Each layer (with `use_bottleneck`) projects hidden_size down to intra_bottleneck_size (the
  "true hidden size" the attention and feed-forwards run at) and back up at its end, adding the
  layer's input. Queries and keys come from their own bottleneck (`key_query_shared_bottleneck`),
  from the input bottleneck (`use_bottleneck_attention`, values too) or from the full-width
  input; values otherwise come from the full-width input.
- `num_feedforward_networks` feed-forwards in a row, each with its residual norm.
- `normalization_type`: "no_norm" (x * weight + bias, no statistics) or "layer_norm".
- The masked-LM decoder is [tied word embeddings (embedding_size) | extra rows (hidden_size -
  embedding_size)] so that it reads the full hidden_size transform.
- The pooler is dense + tanh only with `classifier_activation`; otherwise token 0 as it is.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from flaxbert.convert.spec import HFSpec
from flaxbert.layers import peft, sharding
from flaxbert.layers.attention import dot_product_attention, head_projection, sparse_pattern_mask
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.embeddings import Embeddings, _lookup
from flaxbert.layers.encoder import Encoder
from flaxbert.layers.feed_forward import activation, dense, layer_norm
from flaxbert.models import base, registry

NORMALIZATION_TYPES = ("no_norm", "layer_norm")
# transformers builds the embeddings' and each layer's output norm without passing
# layer_norm_eps, so with normalization_type="layer_norm" those two use torch's default.
TORCH_DEFAULT_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class MobileBertConfig(EncoderConfig):
    hidden_size: int = 512
    num_hidden_layers: int = 24
    num_attention_heads: int = 4
    intermediate_size: int = 512
    hidden_act: str = "relu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.1
    embedding_size: int = 128
    trigram_input: bool = True
    use_bottleneck: bool = True
    intra_bottleneck_size: int = 128
    use_bottleneck_attention: bool = False
    key_query_shared_bottleneck: bool = True
    num_feedforward_networks: int = 4
    normalization_type: str = "no_norm"
    classifier_activation: bool = True

    def __post_init__(self):
        super().__post_init__()

        def need(ok: bool, message: str):
            if not ok:
                raise ValueError(f"MobileBertConfig: {message}")

        need(self.embedding_size >= 1 and self.embedding_size <= self.hidden_size,
             f"embedding_size={self.embedding_size} must be in [1, hidden_size="
             f"{self.hidden_size}] (the MLM decoder adds hidden_size - embedding_size rows)")
        need(self.intra_bottleneck_size >= 1,
             f"intra_bottleneck_size={self.intra_bottleneck_size} must be >= 1")
        need(self.num_feedforward_networks >= 1,
             f"num_feedforward_networks={self.num_feedforward_networks} must be >= 1")
        need(self.normalization_type in NORMALIZATION_TYPES,
             f"normalization_type={self.normalization_type!r}; choose one of "
             f"{NORMALIZATION_TYPES}")
        need(self.true_hidden_size % self.num_attention_heads == 0,
             f"the attention width {self.true_hidden_size} (intra_bottleneck_size with "
             f"use_bottleneck) is not a multiple of num_attention_heads="
             f"{self.num_attention_heads}")
        # transformers' query/key take true_hidden_size inputs; fed the full-width hidden state
        # (neither bottleneck option), they only fit when the two widths agree.
        need(not (self.use_bottleneck and not self.use_bottleneck_attention
                  and not self.key_query_shared_bottleneck)
             or self.intra_bottleneck_size == self.hidden_size,
             "use_bottleneck without use_bottleneck_attention or key_query_shared_bottleneck "
             f"feeds hidden_size={self.hidden_size} inputs to intra_bottleneck_size="
             f"{self.intra_bottleneck_size} queries; set one of the two")
        need(getattr(self, "vocab_pad_multiple", 0) <= 1,
             "vocab_pad_multiple is not supported: the MLM decoder's extra rows span the "
             "vocabulary unpadded")

    @property
    def true_hidden_size(self) -> int:
        """The width attention and the feed-forwards run at."""
        return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.true_hidden_size // self.num_attention_heads


class NoNorm(nn.Module):
    """x * scale + bias per feature: MobileBERT's replacement for LayerNorm (no statistics)."""

    config: MobileBertConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        scale = self.param("scale", sharding.param_init(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), cfg.weights_dtype)
        bias = self.param("bias", sharding.param_init(nn.initializers.zeros, (self.axis_name,)),
                          (x.shape[-1],), cfg.weights_dtype)
        return x * scale.astype(cfg.compute_dtype) + bias.astype(cfg.compute_dtype)


def norm(cfg: MobileBertConfig, name: str, epsilon: float | None = None):
    if cfg.normalization_type == "no_norm":
        return NoNorm(cfg, name=name)
    return layer_norm(cfg, name, epsilon=epsilon)


class MobileBertEmbeddings(Embeddings):
    """Word vectors (embedding_size), trigram concat, projection to hidden_size, + positions and
    token types (hidden_size), norm, dropout."""

    def lookup(self, input_ids, token_type_ids, position_ids):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)

        def table(num, width, axes, name):
            return nn.Embed(num, width, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                            name=name, embedding_init=sharding.param_init(init, axes))

        x = _lookup(table(cfg.vocab_size, cfg.embedding_size, ("vocab", "embed"),
                          "word_embeddings"), input_ids)
        if cfg.trigram_input:  # [next token, this token, previous token], zeros past the ends
            after = jnp.pad(x[:, 1:], ((0, 0), (0, 1), (0, 0)))
            before = jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0)))
            x = jnp.concatenate([after, x, before], axis=-1)
        projected = dense(cfg, cfg.hidden_size, ("embed_proj", "embed"), "transformation")(x)
        # transformers creates the projection even when it is unused (no trigram, equal
        # widths); it is created here too so checkpoints hold the same tensors.
        if cfg.trigram_input or cfg.embedding_size != cfg.hidden_size:
            x = projected
        if position_ids is None:
            position_ids = jnp.arange(input_ids.shape[-1])[None, :]
        x = x + _lookup(table(cfg.max_position_embeddings, cfg.hidden_size,
                              ("positions", "embed"), "position_embeddings"), position_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        return x + _lookup(table(cfg.type_vocab_size, cfg.hidden_size, ("types", "embed"),
                                 "token_type_embeddings"), token_type_ids)

    def normalize(self, x):
        return norm(self.config, "norm", epsilon=TORCH_DEFAULT_EPS)(x)


class MobileBertSelfAttention(nn.Module):
    """Attention with separate query, key and value inputs (of the widths the bottleneck options
    give), through the shared attention function; output projection to true_hidden_size."""

    config: MobileBertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, query_input, key_input, value_input, mask, *,
                 output_attentions: bool = False):
        cfg = self.config
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim

        def project(name, x):  # plus its LoRA term, when the config puts one there
            out = head_projection(cfg, name, heads, head_dim, width=x.shape[-1])(x) + peft.lora(
                cfg, name, (heads, head_dim), ("embed",), ("heads", "kv"), self.deterministic)(x)
            return sharding.constrain(out, sharding.HEADS)

        query = project("query", query_input)
        key = project("key", key_input)
        value = project("value", value_input)
        rate = cfg.attention_probs_dropout_prob
        rng = None if self.deterministic or rate == 0.0 else self.make_rng("dropout")
        impl = "xla" if output_attentions else cfg.attention_impl
        if output_attentions and cfg.attention_impl == "sparse":
            mask = sparse_pattern_mask(query.shape[1], cfg.attention_window,
                                       cfg.global_attention_tokens, mask)
        context, probs = dot_product_attention(
            query, key, value, mask=mask, impl=impl, dropout_rate=rate, dropout_rng=rng,
            return_probs=output_attentions, attention_window=cfg.attention_window,
            global_tokens=cfg.global_attention_tokens)
        context = sharding.constrain(context, sharding.HEADS)
        out = head_projection(cfg, "out", heads, head_dim, into_heads=False,
                              width=cfg.true_hidden_size)(context) + peft.lora(
            cfg, "output", (cfg.true_hidden_size,), ("heads", "kv"), ("embed",),
            self.deterministic)(context)
        return out, probs


class MobileBertFeedForward(nn.Module):
    """true_hidden -> intermediate -> act -> true_hidden (no dropout: transformers has none)."""

    config: MobileBertConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        width, inner = cfg.true_hidden_size, cfg.intermediate_size
        h = dense(cfg, inner, ("embed", "mlp"), "wi")(x) + peft.lora(
            cfg, "mlp_in", (inner,), ("embed",), ("mlp",), self.deterministic)(x)
        h = sharding.constrain(activation(cfg.hidden_act)(h), sharding.MLP)
        return dense(cfg, width, ("mlp", "embed"), "wo")(h) + peft.lora(
            cfg, "mlp_out", (width,), ("mlp",), ("embed",), self.deterministic)(h)


class Projection(nn.Module):
    """dense -> (dropout) -> norm(. + residual): the bottlenecks in and out of a layer."""

    config: MobileBertConfig
    features: int
    axes: tuple[str, str]
    deterministic: bool = True
    dropout: bool = False

    @nn.compact
    def __call__(self, x, residual=None):
        cfg = self.config
        x = dense(cfg, self.features, self.axes, "dense")(x)
        if self.dropout:
            x = nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)(x)
        return norm(cfg, "norm")(x if residual is None else x + residual)


class MobileBertLayer(nn.Module):
    """One MobileBERT layer. Same call and return convention as TransformerBlock, so the shared
    `Encoder` unrolls or scans it: returns (x, (x or None, probs or None))."""

    config: MobileBertConfig
    deterministic: bool = True
    output_attentions: bool = False
    collect_hidden: bool = False

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.config
        det = self.deterministic
        drop = nn.Dropout(cfg.hidden_dropout_prob, deterministic=det)
        down = ("embed", "embed_proj")  # hidden_size -> bottleneck: two different widths
        if cfg.use_bottleneck:
            layer_input = Projection(cfg, cfg.intra_bottleneck_size, down, det,
                                     name="bottleneck_input")(x)
            shared = None
            if cfg.key_query_shared_bottleneck:
                # Created even where use_bottleneck_attention leaves it unused, as transformers
                # does, so checkpoints hold the same tensors.
                shared = Projection(cfg, cfg.intra_bottleneck_size, down, det,
                                    name="bottleneck_attention")(x)
            if cfg.use_bottleneck_attention:
                query = key = value = layer_input
            elif shared is not None:
                query, key, value = shared, shared, x
            else:
                query = key = value = x
        else:
            query = key = value = layer_input = x
        attn, probs = MobileBertSelfAttention(cfg, det, name="attention")(
            query, key, value, mask, output_attentions=self.output_attentions)
        attn = checkpoint_name(attn, "attention_out")
        if not cfg.use_bottleneck:  # with the bottleneck, dropout comes at its end instead
            attn = drop(attn)
        h = norm(cfg, "attention_norm")(layer_input + peft.adapter(cfg, "attention")(attn))
        for j in range(cfg.num_feedforward_networks - 1):
            h = norm(cfg, f"ffn_{j}_norm")(h + MobileBertFeedForward(cfg, det, name=f"ffn_{j}")(h))
        out = MobileBertFeedForward(cfg, det, name="mlp")(h)
        if not cfg.use_bottleneck:
            out = drop(out)
        out = norm(cfg, "mlp_norm", epsilon=TORCH_DEFAULT_EPS)(h + peft.adapter(cfg, "mlp")(out))
        if cfg.use_bottleneck:
            out = Projection(cfg, cfg.hidden_size, down[::-1], det, dropout=True,
                             name="output_bottleneck")(out, x)
        out = sharding.constrain(out, sharding.HIDDEN)
        return out, (out if self.collect_hidden else None, probs)


class MobileBertEncoder(Encoder):
    block: type[nn.Module] = MobileBertLayer


class MobileBertPooler(nn.Module):
    """tanh(dense(token 0)) with classifier_activation, else token 0 as it is."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, hidden):
        cfg = self.config
        if not cfg.classifier_activation:
            return hidden[:, 0]
        return jnp.tanh(dense(cfg, cfg.hidden_size, ("embed", "embed_proj"), "dense")(hidden[:, 0]))


class MobileBertBackbone(base.Backbone):
    embeddings_cls = MobileBertEmbeddings
    encoder_cls = MobileBertEncoder
    pooler_cls = MobileBertPooler

    def packing_unsupported(self) -> str | None:
        if self.config.trigram_input:
            return "MobileBERT's trigram_input concatenates each token with its neighbours"
        return None


class MobileBertMaskedLMHead(nn.Module):
    """dense -> act -> LayerNorm (always LayerNorm, as transformers) -> logits against
    [tied word embeddings | `extra_output_rows`], plus a bias."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, hidden, embedding_table):
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, ("embed", "embed_proj"), "dense")(hidden)
        x = activation(cfg.hidden_act)(x)
        x = layer_norm(cfg, "norm", axis_name="embed_proj")(x)
        width = embedding_table.shape[-1]
        # transformers' `cls.predictions.dense.weight`, (hidden - embedding, vocab): the decoder
        # rows the embedding_size-wide tied table lacks.
        extra = self.param("extra_output_rows", sharding.param_init(
            nn.initializers.normal(cfg.initializer_range), ("embed_proj", "vocab")),
            (cfg.hidden_size - width, cfg.vocab_size), cfg.weights_dtype)
        bias = self.param("bias", sharding.param_init(nn.initializers.zeros, ("vocab",)),
                          (cfg.vocab_size,), cfg.weights_dtype)
        logits = (jnp.einsum("...e,ve->...v", x[..., :width],
                             embedding_table.astype(cfg.compute_dtype))
                  + jnp.einsum("...e,ev->...v", x[..., width:], extra.astype(cfg.compute_dtype))
                  + bias.astype(cfg.compute_dtype))
        return sharding.constrain(logits, ("act_batch", "act_length", "act_vocab")[-logits.ndim:])


_MLM = {"mlm_head_cls": MobileBertMaskedLMHead}
TASK_MODELS = base.specialise("MobileBert", __name__, MobileBertBackbone,
                              overrides={"masked-lm": _MLM, "pretraining": _MLM})
MobileBertModel = TASK_MODELS["base"]
MobileBertForPreTraining = TASK_MODELS["pretraining"]
MobileBertForMaskedLM = TASK_MODELS["masked-lm"]
MobileBertForNextSentencePrediction = TASK_MODELS["next-sentence"]
MobileBertForSequenceClassification = TASK_MODELS["sequence-classification"]
MobileBertForTokenClassification = TASK_MODELS["token-classification"]
MobileBertForQuestionAnswering = TASK_MODELS["question-answering"]
MobileBertForMultipleChoice = TASK_MODELS["multiple-choice"]
MobileBertForSentenceEmbedding = TASK_MODELS["embedding"]

_LAYER = r"backbone/encoder/layers_(\d+)"
_HF_LAYER = r"{base}encoder.layer.\1"
HF = HFSpec(
    model_type="mobilebert", class_prefix="MobileBert", base_prefix="mobilebert",
    rules=(
        (rf"{_LAYER}/attention/(query|key|value)", rf"{_HF_LAYER}.attention.self.\2"),
        (rf"{_LAYER}/attention/out", rf"{_HF_LAYER}.attention.output.dense"),
        (rf"{_LAYER}/attention_norm", rf"{_HF_LAYER}.attention.output.LayerNorm"),
        (rf"{_LAYER}/bottleneck_(input|attention)/dense", rf"{_HF_LAYER}.bottleneck.\2.dense"),
        (rf"{_LAYER}/bottleneck_(input|attention)/norm", rf"{_HF_LAYER}.bottleneck.\2.LayerNorm"),
        (rf"{_LAYER}/ffn_(\d+)/wi", rf"{_HF_LAYER}.ffn.\2.intermediate.dense"),
        (rf"{_LAYER}/ffn_(\d+)/wo", rf"{_HF_LAYER}.ffn.\2.output.dense"),
        (rf"{_LAYER}/ffn_(\d+)_norm", rf"{_HF_LAYER}.ffn.\2.output.LayerNorm"),
        (rf"{_LAYER}/mlp/wi", rf"{_HF_LAYER}.intermediate.dense"),
        (rf"{_LAYER}/mlp/wo", rf"{_HF_LAYER}.output.dense"),
        (rf"{_LAYER}/mlp_norm", rf"{_HF_LAYER}.output.LayerNorm"),
        (rf"{_LAYER}/output_bottleneck/dense", rf"{_HF_LAYER}.output.bottleneck.dense"),
        (rf"{_LAYER}/output_bottleneck/norm", rf"{_HF_LAYER}.output.bottleneck.LayerNorm"),
        (r"backbone/embeddings/norm", r"{base}embeddings.LayerNorm"),
        (r"backbone/embeddings/transformation", r"{base}embeddings.embedding_transformation"),
        (r"backbone/embeddings/(\w+)", r"{base}embeddings.\1"),
        (r"backbone/pooler/dense", r"{base}pooler.dense"),
        (r"mlm_head/dense", "cls.predictions.transform.dense"),
        (r"mlm_head/norm", "cls.predictions.transform.LayerNorm"),
        (r"mlm_head/extra_output_rows", "cls.predictions.dense.weight"),
        (r"mlm_head", "cls.predictions"),
        (r"nsp_head/dense", "cls.seq_relationship"),
        (r"(token_|choice_)?classifier/dense", "classifier"),
        (r"qa_outputs/dense", "qa_outputs"),
    ),
    ignore=(r"cls\.predictions\.decoder\.(weight|bias)",),
    head_prefixes=("cls.", "classifier.", "qa_outputs."),
)

FAMILY = registry.register_family(registry.Family(
    name="mobilebert", config_cls=MobileBertConfig, task_models=TASK_MODELS, hf=HF))

for _name, _config in {
    # transformers' MobileBertConfig defaults, which are google/mobilebert-uncased.
    "mobilebert-uncased": MobileBertConfig(),
    "mobilebert-tiny": MobileBertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        embedding_size=32, intra_bottleneck_size=32, num_feedforward_networks=2),
}.items():
    registry.register(_name, _config)
