"""XLNet (Yang et al., 2019): permutation language modelling with two-stream relative attention.

What differs from BERT (the rest comes from flaxbert.layers): no position table but Transformer-XL's
sinusoidal *relative* encodings with learned biases (r_w_bias, r_r_bias); segments enter attention
as a learned same/different-segment term (r_s_bias, seg_embed), so any token-type ids work; a
content stream h and, when `target_mapping` is given, a query stream g that starts from `mask_emb`
and sees only what `perm_mask` allows; a memory of earlier segments' states (`mems`) read as extra
keys and returned, stop-gradient, for the next segment; a tied LM head with its own bias;
SequenceSummary heads on the *last* token (XLNet pads on the left and ends with <cls>).

Everything matches transformers 5's modeling_xlnet.py except one layout: transformers keeps mems
time-major, (mem_len, batch, hidden); here they are batch-major, (batch, mem_len, hidden), like
every other array in flaxbert. Build permutation-LM inputs with flaxbert.models.permutation.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import ClassVar

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from flaxbert.convert.spec import HFSpec
from flaxbert.layers import peft, sharding
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.embeddings import _lookup, check_tokens
from flaxbert.layers.encoder import rematerialised
from flaxbert.layers.feed_forward import activation, layer_norm, projection
from flaxbert.layers.heads import SummaryClassifier, vocab_logits
from flaxbert.models import base, registry
from flaxbert.models.outputs import Output


@dataclasses.dataclass(frozen=True)
class XLNetConfig(EncoderConfig):
    """transformers' XLNetConfig. Its d_model, n_layer, n_head, d_inner, ff_activation and dropout
    are hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act and
    hidden_dropout_prob here. `dropout` is XLNet's only rate (it also drops attention probabilities
    and the position encodings), so attention_probs_dropout_prob is unused, as are
    max_position_embeddings (no length limit) and attention_impl (no fused kernel for relative
    attention). type_vocab_size=0: segment ids are only compared for equality, any id works."""

    vocab_size: int = 32000
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    type_vocab_size: int = 0
    pad_token_id: int = 5
    classifier_dropout: float = 0.0  # transformers' token classifier has no dropout
    attn_type: str = "bi"  # "uni": Transformer-XL's causal attention
    mem_len: int = 512  # states kept as memory; 0 keeps them all (transformers: 0 or null)
    reuse_len: int | None = None  # only the first reuse_len tokens of a segment are remembered
    use_mems_eval: bool = True  # return mems when deterministic (transformers' model.eval())
    use_mems_train: bool = False
    bi_data: bool = False  # the second half of the batch reads positions backwards
    clamp_len: int = -1
    same_length: bool = False  # "uni" only: every token attends to the same number of keys
    summary_type: str = "last"
    summary_use_proj: bool = True
    summary_activation: str = "tanh"  # "" for none (None would write transformers' default)
    summary_first_dropout: float = 0.0
    summary_last_dropout: float = 0.1
    summary_proj_to_labels: bool = False
    sparse_attention_unsupported = ("XLNet's two-stream relative attention is its own, not "
                                    "the shared one")

    def __post_init__(self):
        super().__post_init__()
        if self.attn_type not in ("bi", "uni"):
            raise ValueError(f"XLNetConfig: attn_type={self.attn_type!r}; choose 'bi' or 'uni'")

    @property
    def max_sequence_length(self) -> int:
        return sys.maxsize  # relative positions: any length


# ----------------------------------------------------------------------------- inputs

def _check_inputs(cfg, shape, attention_mask, input_mask, perm_mask, target_mapping, mems):
    batch, length = shape
    if attention_mask is not None and input_mask is not None:
        raise ValueError("pass attention_mask (1 = token) or input_mask (1 = padding), not both")
    for name, x, ok in (
            ("input_mask", input_mask, lambda s: s == shape),
            ("perm_mask (batch, length, length)", perm_mask, lambda s: s == (batch, length, length)),
            ("target_mapping (batch, num_predict, length)", target_mapping,
             lambda s: len(s) == 3 and s[0] == batch and s[2] == length)):
        if x is not None and not ok(jnp.shape(x)):
            raise ValueError(f"{name} has shape {jnp.shape(x)}; input_ids has {shape}")
    shapes = {jnp.shape(m) for m in mems or ()}
    if mems is not None and (len(mems) != cfg.num_hidden_layers or len(shapes) != 1 or any(
            len(s) != 3 or s[0] != batch or s[2] != cfg.hidden_size for s in shapes)):
        raise ValueError(f"mems must be {cfg.num_hidden_layers} arrays of one shape (batch, "
                         f"mem_len, hidden_size), batch-major unlike transformers; got {shapes}")
    if cfg.bi_data and batch % 2:
        raise ValueError(f"bi_data reads the second half of the batch backwards: the batch must "
                         f"be even, got {batch}")


def attention_masks(cfg, qlen, mlen, input_mask, perm_mask):
    """(content-stream, query-stream) masks, True where attention is blocked, (batch or 1, qlen,
    mlen + qlen). Memory is always visible; the content stream always sees its own token, the
    query stream (which predicts it) only where perm_mask allows."""
    query = jnp.arange(qlen)[:, None] + mlen  # absolute positions
    key = jnp.arange(mlen + qlen)[None, :]
    blocked = jnp.zeros((1, qlen, mlen + qlen), bool)
    if cfg.attn_type == "uni":  # transformers' create_mask
        blocked |= key > query
        if cfg.same_length:
            blocked |= (key < qlen) & (key < query - mlen)
    for mask in (None if input_mask is None else input_mask[:, None, :], perm_mask):
        if mask is not None:
            blocked = blocked | jnp.pad(mask > 0, [(0, 0), (0, 0), (mlen, 0)])
    return blocked & (key != query), blocked


def relative_positions(cfg, qlen, klen, batch):
    """Sinusoidal encodings of the distances klen .. -qlen+1 ("uni": .. 0), (batch, R, hidden);
    with bi_data the second half of the batch gets the negated distances."""
    inv_freq = 1.0 / 10000 ** (jnp.arange(0, cfg.hidden_size, 2, dtype=jnp.float32)
                               / cfg.hidden_size)
    end = -qlen if cfg.attn_type == "bi" else -1

    def encode(distances, n):
        if cfg.clamp_len > 0:
            distances = jnp.clip(distances, -cfg.clamp_len, cfg.clamp_len)
        angles = distances[:, None] * inv_freq
        enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
        return jnp.broadcast_to(enc, (n,) + enc.shape)

    forward = jnp.arange(klen, end, -1, dtype=jnp.float32)
    if not cfg.bi_data:
        return encode(forward, batch)
    return jnp.concatenate([encode(forward, batch // 2), encode(-forward, batch // 2)])


def rel_shift(x, klen):
    """(b, n, q, R) scores by distance -> (b, n, q, klen) by key: out[i, j] = x[i, j + q - i],
    transformers' reshape trick (cheap on accelerators; no gather)."""
    b, n, q, r = x.shape
    return x.reshape(b, n, r, q)[:, :, 1:].reshape(b, n, q, r - 1)[..., :klen]


def cache_memory(cfg, hidden, memory):
    """The next segment's memory for one layer: (old memory, this layer's input) trimmed."""
    if cfg.reuse_len:
        hidden = hidden[:, :cfg.reuse_len]
    if memory is not None:
        hidden = jnp.concatenate([memory.astype(hidden.dtype), hidden], axis=1)
    if cfg.mem_len:
        hidden = hidden[:, -cfg.mem_len:]
    return jax.lax.stop_gradient(hidden)


# ----------------------------------------------------------------------------- layers

class XLNetRelativeAttention(nn.Module):
    """Both streams' attention before the residual: content-, position- and segment-based scores.
    q, k, v, o, r are (hidden, heads, head_dim) as in transformers; the biases (heads, head_dim)."""

    config: XLNetConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, h, g, memory, mask_h, mask_g, pos_emb, segments, target_mapping):
        cfg = self.config
        dt, f32 = cfg.compute_dtype, jnp.float32
        init = nn.initializers.normal(cfg.initializer_range)
        shape = (cfg.num_attention_heads, cfg.head_dim)

        def param(name, dims, axes):
            return self.param(name, sharding.param_init(init, axes), dims, cfg.weights_dtype).astype(dt)

        w = {n: param(n, (cfg.hidden_size,) + shape, ("embed", "heads", "kv")) for n in "qkvor"}
        r_w_bias, r_r_bias, r_s_bias = (param(n, shape, ("heads", "kv"))
                                        for n in ("r_w_bias", "r_r_bias", "r_s_bias"))
        seg_embed = param("seg_embed", (2,) + shape, ("types", "heads", "kv"))

        # LoRA (config.peft): q serves both streams, k and v memory plus h; r has none.
        loras = {n: peft.lora(cfg, t, shape, ("embed",), ("heads", "kv"), self.deterministic, n)
                 for n, t in (("q", "query"), ("k", "key"), ("v", "value"))}
        lora_o = peft.lora(cfg, "output", (cfg.hidden_size,), ("heads", "kv"), ("embed",),
                           self.deterministic, "o")

        def heads(x, name):
            y = jnp.einsum("bsh,hnd->bsnd", x, w[name]) + loras.get(name, lambda x: 0.0)(x)
            return sharding.constrain(y, sharding.HEADS)

        keys = h if memory is None else jnp.concatenate([memory.astype(dt), h], axis=1)
        k_h, v_h, k_r = heads(keys, "k"), heads(keys, "v"), heads(pos_emb, "r")
        klen = keys.shape[1]

        def attend(q, blocked):
            score = jnp.einsum("bind,bjnd->bnij", q + r_w_bias, k_h, preferred_element_type=f32)
            score += rel_shift(jnp.einsum("bind,brnd->bnir", q + r_r_bias, k_r,
                                          preferred_element_type=f32), klen)
            if segments is not None:  # transformers: no segment term at all without token types
                ef = jnp.einsum("bind,snd->bnis", q + r_s_bias, seg_embed, preferred_element_type=f32)
                score += jnp.where(segments[:, None], ef[..., 1:], ef[..., :1])
            score = score * cfg.head_dim ** -0.5
            # -1e30 is subtracted, as transformers does: a row with every key blocked becomes
            # uniform, never NaN.
            score = jnp.where(blocked[:, None], score - 1e30, score)
            probs = jax.nn.softmax(score, axis=-1).astype(dt)
            # transformers returns the probabilities after dropout; so do we.
            probs = nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)(probs)
            return jnp.einsum("bnij,bjnd->bind", probs, v_h), probs

        def out(vec):
            return jnp.einsum("bind,hnd->bih", vec, w["o"]) + lora_o(vec)

        vec_h, probs_h = attend(heads(h, "q"), mask_h)
        if g is None:
            return out(vec_h), None, probs_h
        # The query stream attends at the positions target_mapping names, then maps back.
        tm = target_mapping.astype(dt)
        vec_g, probs_g = attend(jnp.einsum("bmnd,bml->blnd", heads(g, "q"), tm), mask_g)
        return out(vec_h), out(jnp.einsum("blnd,bml->bmnd", vec_g, tm)), (probs_h, probs_g)


class XLNetFeedForward(nn.Module):
    """layer_1 -> act -> dropout -> layer_2 -> dropout: the shared FeedForward plus the inner
    dropout transformers' XLNet applies after the activation."""

    config: XLNetConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        drop = nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)
        x = sharding.constrain(activation(cfg.hidden_act)(
            projection(cfg, "mlp_in", x, self.deterministic)), sharding.MLP)
        return drop(projection(cfg, "mlp_out", drop(x), self.deterministic))


class XLNetLayer(nn.Module):
    """One layer for both streams (same weights): post-LN attention, then post-LN feed-forward.
    Returns ((h, g), (this layer's new memory, its input states, its attention probabilities)),
    the per-layer part being what `nn.scan` stacks."""

    config: XLNetConfig
    deterministic: bool = True
    output_attentions: bool = False
    collect_hidden: bool = False
    cache_mems: bool = False

    @nn.compact
    def __call__(self, carry, memory, mask_h, mask_g, pos_emb, segments, target_mapping):
        cfg = self.config
        h, g = carry
        new_memory = cache_memory(cfg, h, memory) if self.cache_mems else None
        inputs = (h, g) if self.collect_hidden else None
        attn_h, attn_g, probs = XLNetRelativeAttention(cfg, self.deterministic, name="attention")(
            h, g, memory, mask_h, mask_g, pos_emb, segments, target_mapping)
        attn_h = checkpoint_name(attn_h, "attention_out")
        drop = nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)
        attention_norm, mlp_norm = layer_norm(cfg, "attention_norm"), layer_norm(cfg, "mlp_norm")
        mlp = XLNetFeedForward(cfg, self.deterministic, name="mlp")

        # Adapters (config.peft), like the shared block's: one module, both streams.
        attention_adapter, mlp_adapter = (
            peft.adapter(cfg, sublayer) for sublayer in ("attention", "mlp"))

        def finish(x, attn):
            x = attention_norm(x + attention_adapter(drop(attn)))
            return sharding.constrain(mlp_norm(x + mlp_adapter(mlp(x))), sharding.HIDDEN)

        carry = (finish(h, attn_h), None if g is None else finish(g, attn_g))
        return carry, (new_memory, inputs, probs if self.output_attentions else None)


class XLNetEncoder(nn.Module):
    """The layer stack, unrolled (layers_0..) or `nn.scan`ned (`layers`, memory scanned too)."""

    config: XLNetConfig
    deterministic: bool = True
    output_attentions: bool = False
    collect_hidden: bool = False
    cache_mems: bool = False

    @nn.compact
    def __call__(self, h, g, mems, *shared):
        cfg = self.config
        block = rematerialised(XLNetLayer, cfg)
        kwargs = dict(deterministic=self.deterministic, output_attentions=self.output_attentions,
                      collect_hidden=self.collect_hidden, cache_mems=self.cache_mems)
        if cfg.scan_layers:
            stack = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast if mems is None else 0,) + (nn.broadcast,) * len(shared),
                length=cfg.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            (h, g), stacked = stack(cfg, name="layers", **kwargs)(
                (h, g), None if mems is None else jnp.stack(mems), *shared)
            per_layer = [jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
                         for i in range(cfg.num_hidden_layers)]
        else:
            per_layer = []
            for i in range(cfg.num_hidden_layers):
                (h, g), out = block(cfg, name=f"layers_{i}", **kwargs)(
                    (h, g), None if mems is None else mems[i], *shared)
                per_layer.append(out)
        new_mems = tuple(out[0] for out in per_layer) if self.cache_mems else None
        hidden = None
        if self.collect_hidden:  # transformers: h0, g0, h1, g1, ... (h only without g)
            states = [out[1] for out in per_layer] + [(h, g)]
            hidden = tuple(x for pair in states for x in pair if x is not None)
        probs = tuple(out[2] for out in per_layer) if self.output_attentions else None
        return h, g, new_mems, hidden, probs


class XLNetBackbone(nn.Module):
    """Embeddings, masks, relative positions and segments -> the two-stream stack -> output."""

    config: XLNetConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, mems=None,
                 perm_mask=None, target_mapping=None, input_mask=None, use_mems=None,
                 output_hidden_states=False, output_attentions=False) -> Output:
        cfg = self.config
        check_tokens(cfg, input_ids, attention_mask, token_type_ids)
        _check_inputs(cfg, input_ids.shape, attention_mask, input_mask, perm_mask, target_mapping,
                      mems)
        if use_mems is None:
            use_mems = cfg.use_mems_eval if self.deterministic else cfg.use_mems_train
        batch, qlen = input_ids.shape
        mlen = 0 if mems is None else mems[0].shape[1]
        init = nn.initializers.normal(cfg.initializer_range)
        drop = nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)

        table = nn.Embed(cfg.padded_vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype,
                         param_dtype=cfg.weights_dtype, name="word_embeddings",
                         embedding_init=sharding.param_init(init, ("vocab", "embed")))
        mask_emb = self.param("mask_emb", sharding.param_init(init, (None, None, "embed")),
                              (1, 1, cfg.hidden_size), cfg.weights_dtype)
        h = sharding.constrain(drop(_lookup(table, input_ids, cfg.vocab_size)), sharding.HIDDEN)
        g = None
        if target_mapping is not None:
            g = drop(jnp.broadcast_to(mask_emb.astype(cfg.compute_dtype),
                                      (batch, target_mapping.shape[1], cfg.hidden_size)))

        if input_mask is None and attention_mask is not None:
            input_mask = 1 - attention_mask.astype(jnp.float32)
        mask_h, mask_g = attention_masks(cfg, qlen, mlen, input_mask, perm_mask)
        segments = None
        if token_type_ids is not None:  # "different segment" flags; memory counts as segment 0
            keys = jnp.pad(token_type_ids, ((0, 0), (mlen, 0)))
            segments = token_type_ids[:, :, None] != keys[:, None, :]
        pos_emb = drop(relative_positions(cfg, qlen, mlen + qlen, batch).astype(cfg.compute_dtype))

        h, g, new_mems, hidden, probs = XLNetEncoder(
            cfg, self.deterministic, output_attentions, output_hidden_states, use_mems,
            name="encoder")(h, g, mems, mask_h, mask_g, pos_emb, segments, target_mapping)
        # With a query stream, its states are the output (one a prediction).
        return Output(last_hidden_state=drop(h if g is None else g), mems=new_mems,
                           hidden_states=hidden, attentions=probs)

    def word_embedding_table(self):
        return nn.meta.unbox(self.variables["params"]["word_embeddings"]["embedding"])


# ----------------------------------------------------------------------------- task models

class XLNetTaskModel(base.TaskModel):
    """base.TaskModel with XLNet's extra inputs, all optional:
        mems: tuple of (batch, mem_len, hidden) arrays, one a layer (a previous output's `mems`);
        perm_mask (batch, length, length): 1 where token i may not attend to token j;
        target_mapping (batch, num_predict, length): one-hot rows, the positions to predict;
        input_mask: 1 - attention_mask (pass one of the two);
        use_mems: return `mems` (default: config.use_mems_eval if deterministic, else _train).
    There are no position_ids: positions are relative. Outputs add `mems`."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 mems=None, perm_mask=None, target_mapping=None, input_mask=None, use_mems=None,
                 deterministic=True, output_hidden_states=False, output_attentions=False,
                 **head_inputs) -> Output:
        if position_ids is not None:
            raise ValueError("XLNet has no position_ids: its positions are relative")
        tokens = (input_ids, attention_mask, token_type_ids, input_mask)
        if self.input_rank == 3:  # fold the choices into the batch
            check_tokens(self.config, input_ids, attention_mask, token_type_ids, rank=3)
            tokens = tuple(None if x is None else x.reshape(-1, x.shape[-1]) for x in tokens)
        backbone = XLNetBackbone(self.config, deterministic, name="backbone")
        out = backbone(*tokens[:3], input_mask=tokens[3], mems=mems, perm_mask=perm_mask,
                       target_mapping=target_mapping, use_mems=use_mems,
                       output_hidden_states=output_hidden_states,
                       output_attentions=output_attentions)
        result = self.head(backbone, out, tokens[1], deterministic, **head_inputs)
        if self.input_rank == 3:
            result["logits"] = result["logits"].reshape(input_ids.shape[:2])
        return Output(**result, mems=out.mems, hidden_states=out.hidden_states,
                           attentions=out.attentions)

    def dummy_inputs(self, batch_size: int = 1, length: int = 8) -> dict:
        if self.config.bi_data and batch_size % 2:  # bi_data splits the batch in halves
            batch_size += 1
        return super().dummy_inputs(batch_size, length)


class TiedLMHead(nn.Module):
    """transformers' lm_loss: logits against the word-embedding table plus a bias, no transform."""

    config: XLNetConfig

    @nn.compact
    def __call__(self, hidden, embedding_table):
        cfg = self.config
        bias = self.param("bias", sharding.param_init(nn.initializers.zeros, ("vocab",)),
                          (cfg.padded_vocab_size,), cfg.weights_dtype)
        logits = jnp.einsum("...e,ve->...v", hidden, embedding_table.astype(cfg.compute_dtype))
        return vocab_logits(cfg, logits + bias.astype(cfg.compute_dtype))


class XLNetLMHeadModel(XLNetTaskModel):
    """Logits over the vocabulary for every token, or, with target_mapping, for each prediction."""

    task: ClassVar[str] = "lm"

    def head(self, backbone, out, attention_mask, deterministic):
        return dict(logits=TiedLMHead(self.config, name="lm_head")(
            out.last_hidden_state, backbone.word_embedding_table()))


def _task(generic: type[base.TaskModel], name: str, **attrs) -> type[XLNetTaskModel]:
    """XLNet's version of a generic task: its inputs, the generic head."""
    return type(name, (XLNetTaskModel, generic), {"__module__": __name__, **attrs})


XLNetModel = _task(base.EncoderModel, "XLNetModel")
XLNetForSequenceClassification = _task(base.ForSequenceClassification,
                                       "XLNetForSequenceClassification",
                                       head_cls=SummaryClassifier)
XLNetForTokenClassification = _task(base.ForTokenClassification, "XLNetForTokenClassification")
XLNetForQuestionAnsweringSimple = _task(base.ForQuestionAnswering,
                                        "XLNetForQuestionAnsweringSimple")
XLNetForMultipleChoice = _task(base.ForMultipleChoice, "XLNetForMultipleChoice",
                               head_cls=SummaryClassifier)
TASK_MODELS = {cls.task: cls for cls in (
    XLNetModel, XLNetLMHeadModel, XLNetForSequenceClassification, XLNetForTokenClassification,
    XLNetForQuestionAnsweringSimple, XLNetForMultipleChoice)}


# ----------------------------------------------------------------------------- transformers naming

_LAYER = r"backbone/encoder/layers_(\d+)"
# q, k, v, o, r, the biases, seg_embed and mask_emb are bare tensors in transformers (no .weight):
# these rules match the whole parameter path and name the tensor itself, layout unchanged.
HF = HFSpec(
    model_type="xlnet", class_prefix="XLNet", base_prefix="transformer",
    rules=(
        (rf"{_LAYER}/attention/(q|k|v|o|r|r_w_bias|r_r_bias|r_s_bias|seg_embed)",
         r"{base}layer.\1.rel_attn.\2"),
        (rf"{_LAYER}/attention_norm", r"{base}layer.\1.rel_attn.layer_norm"),
        (rf"{_LAYER}/mlp/wi", r"{base}layer.\1.ff.layer_1"),
        (rf"{_LAYER}/mlp/wo", r"{base}layer.\1.ff.layer_2"),
        (rf"{_LAYER}/mlp_norm", r"{base}layer.\1.ff.layer_norm"),
        (r"backbone/word_embeddings", r"{base}word_embedding"),
        (r"backbone/mask_emb", r"{base}mask_emb"),
        (r"lm_head", "lm_loss"),
        (r"(choice_)?classifier/sequence_summary/summary", "sequence_summary.summary"),
        (r"(choice_)?classifier/dense", "logits_proj"),
        (r"token_classifier/dense", "classifier"),
        (r"qa_outputs/dense", "qa_outputs"),
    ),
    ignore=(r"lm_loss\.weight",),
    task_classes=(("base", "Model"), ("lm", "LMHeadModel"),
                  ("sequence-classification", "ForSequenceClassification"),
                  ("token-classification", "ForTokenClassification"),
                  ("question-answering", "ForQuestionAnsweringSimple"),
                  ("multiple-choice", "ForMultipleChoice")),
    head_prefixes=("lm_loss.", "sequence_summary.", "logits_proj.", "classifier.", "qa_outputs."),
    config_renames=(("d_model", "hidden_size"), ("n_layer", "num_hidden_layers"),
                    ("n_head", "num_attention_heads"), ("d_inner", "intermediate_size"),
                    ("ff_activation", "hidden_act"), ("dropout", "hidden_dropout_prob")),
    config_omit=("max_position_embeddings", "type_vocab_size", "attention_probs_dropout_prob"),
    config_null_values=(("mem_len", 0),),
)

FAMILY = registry.register_family(registry.Family(
    name="xlnet", config_cls=XLNetConfig, task_models=TASK_MODELS, hf=HF))

for _name, _config in {
    "xlnet-tiny": XLNetConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=512),
    "xlnet-base-cased": XLNetConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    intermediate_size=3072),
    "xlnet-large-cased": XLNetConfig(),
}.items():
    registry.register(_name, _config)
