"""The one attention function, and the multi-head self-attention layer built on it.

Two implementations, chosen by `config.attention_impl`:
- `xla`: explicit einsum + fp32 softmax. The reference: it can return the probabilities and
  takes any key-padding mask.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` with padding given as
  key/value sequence lengths (cuDNN's fused kernel). That needs right-padded masks (ones then
  zeros); a row that is not is poisoned with NaN rather than silently attended wrongly. Where cuDNN
  cannot run (no CUDA GPU, or a float32 compute dtype) it falls back, with a logged warning, to
  XLA's implementation of the same call, so the semantics stay the same everywhere.

Packed rows (several examples per row, `flaxbert.packing`) carry `segment_ids`; `segment_mask`
turns them into a block-diagonal (batch, 1, q_len, kv_len) mask that both implementations take.
jax 0.10's public `jax.nn.dot_product_attention` has no segment-id or packed-offset arguments
(cuDNN's ragged `q_offsets`/`kv_offsets` exist only in the private
`jax._src.cudnn.fused_attention_stablehlo`), so the cuDNN path passes the block mask as its
`mask`, which jax turns into an additive bias for the fused kernel.
"""
from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.layers import peft, sharding
from flaxbert.layers.config import EncoderConfig

log = logging.getLogger(__name__)


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def cudnn_unavailable_reason(dtype) -> str | None:
    """Why the cuDNN kernel cannot run here, or None if it can."""
    if jax.default_backend() != "gpu":
        return f"cuDNN attention needs a CUDA GPU, the backend is {jax.default_backend()!r}"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cuDNN attention needs bfloat16/float16 inputs, got {jnp.dtype(dtype).name}"
    return None


def segment_mask(segment_ids, attention_mask=None):
    """(batch, len) segment ids (1, 2, ... per packed example, 0 = padding) -> (batch, 1, len,
    len) boolean mask: a query attends to the keys of its own segment only. Padding queries
    attend to nothing (their outputs are never read). `attention_mask`, if given, also masks keys.
    """
    segment_ids = jnp.asarray(segment_ids)
    keys = segment_ids > 0
    if attention_mask is not None:
        keys = keys & jnp.asarray(attention_mask).astype(bool)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & keys[:, None, :])[:, None]


def dot_product_attention(query, key, value, *, mask=None, bias=None, impl: str = "xla",
                          scale: float | None = None, dropout_rate: float = 0.0, dropout_rng=None,
                          return_probs: bool = False):
    """Scaled dot-product attention.

    query: (batch, q_len, heads, head_dim); key, value: (batch, kv_len, heads, head_dim).
    mask: (batch, kv_len), 1 where a key may be attended, or a full boolean mask
    broadcastable to (batch, heads, q_len, kv_len) (`segment_mask` for packed rows).
    bias: broadcastable to (batch, heads, q_len, kv_len), added to the scaled scores.
    scale: default head_dim ** -0.5.
    Dropout applies to the probabilities when `dropout_rng` is given. Returns (context like
    query, probabilities or None).
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if impl == "cudnn":
        if return_probs:
            raise ValueError("attention probabilities need attention_impl='xla'; cuDNN does not "
                             "materialise them")
        if mask is not None and mask.ndim not in (2, 4):
            raise ValueError("cuDNN attention takes a (batch, kv_len) padding mask or a "
                             f"(batch, heads|1, q_len, kv_len) full mask, got shape {mask.shape}")
        return _cudnn_attention(query, key, value, mask, bias, scale, dropout_rate,
                                dropout_rng), None
    if impl != "xla":
        raise ValueError(f"unknown attention implementation {impl!r}; use 'xla' or 'cudnn'")

    scores = jnp.einsum("btnh,bsnh->bnts", query * jnp.asarray(scale, query.dtype), key)
    scores = scores.astype(jnp.float32)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        full = mask[:, None, None, :] if mask.ndim == 2 else mask
        scores = jnp.where(full.astype(bool), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs_used = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(probs.dtype)
    else:
        probs_used = probs
    context = jnp.einsum("bnts,bsnh->btnh", probs_used, value)
    return context, (probs if return_probs else None)


def _cudnn_attention(query, key, value, mask, bias, scale, dropout_rate, dropout_rng):
    reason = cudnn_unavailable_reason(query.dtype)
    if reason is not None:
        _warn_once(f"{reason}; using XLA's implementation of the same masked attention instead.")
    if dropout_rng is not None and dropout_rate > 0.0:
        _warn_once("cuDNN attention has no dropout on attention probabilities: "
                   f"attention_probs_dropout_prob={dropout_rate} is not applied "
                   "(hidden-state dropout still is). Use attention_impl='xla' to keep it.")
    impl = "cudnn" if reason is None else "xla"
    if mask is not None and mask.ndim == 4:  # packed rows: the block mask becomes a bias
        return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask.astype(bool),
                                            scale=scale, implementation=impl)
    lengths = None
    if mask is not None:
        mask = mask.astype(jnp.int32)
        lengths = mask.sum(-1).astype(jnp.int32)
        positions = jnp.arange(mask.shape[-1], dtype=jnp.int32)
        right_padded = jnp.all(mask == (positions[None, :] < lengths[:, None]), axis=-1)
    out = jax.nn.dot_product_attention(
        query, key, value, bias=bias, key_value_seq_lengths=lengths, scale=scale,
        implementation=impl)
    if mask is not None:
        # A mask with holes cannot be expressed as lengths: make such rows loudly wrong (NaN).
        out = jnp.where(right_padded[:, None, None, None], out, jnp.nan)
    return out


def head_projection(cfg: EncoderConfig, name: str, heads: int, head_dim: int, *,
                    into_heads: bool = True) -> nn.Einsum:
    """hidden -> (heads, head_dim) (or back, into_heads=False) with logical axes.

    nn.Einsum initialises the kernel at its full (heads, head_dim) shape, so its logical axes hold
    at init under a mesh (DenseGeneral initialises a flattened 2-D kernel).
    """
    init = nn.initializers.normal(cfg.initializer_range)
    if into_heads:
        shape, equation = (cfg.hidden_size, heads, head_dim), "bse,enh->bsnh"
        kernel_axes, bias_axes = ("embed", "heads", "kv"), ("heads", "kv")
    else:
        shape, equation = (heads, head_dim, cfg.hidden_size), "bsnh,nhe->bse"
        kernel_axes, bias_axes = ("heads", "kv", "embed"), ("embed",)
    return nn.Einsum(shape, equation, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                     name=name, kernel_init=sharding.param_init(init, kernel_axes),
                     bias_init=sharding.param_init(nn.initializers.zeros, bias_axes))


class SelfAttention(nn.Module):
    """Multi-head self-attention: q/k/v projections to (heads, head_dim), attention, output
    projection. Families with position terms (DeBERTa) override `heads`, `scale` and `bias`;
    extra positional call arguments reach `bias`."""

    config: EncoderConfig
    deterministic: bool = True

    @property
    def heads(self) -> tuple[int, int]:
        return self.config.num_attention_heads, self.config.head_dim

    def scale(self) -> float:
        return self.heads[1] ** -0.5

    def bias(self, query, key, *extra):
        """Additive score bias (batch, heads, q_len, kv_len), or None."""
        return None

    def expand_mask(self, mask, impl: str):
        """The mask the attention function gets from a (batch, kv_len) padding mask (a full
        (batch, 1, q_len, kv_len) mask, as packed rows give, goes through unchanged)."""
        return mask

    @nn.compact
    def __call__(self, x, mask, *extra, output_attentions: bool = False):
        cfg = self.config
        heads, head_dim = self.heads

        def project(name):  # plus its LoRA term, when the config puts one there
            out = head_projection(cfg, name, heads, head_dim)(x) + peft.lora(
                cfg, name, (heads, head_dim), ("embed",), ("heads", "kv"), self.deterministic)(x)
            return sharding.constrain(out, sharding.HEADS)

        query, key, value = project("query"), project("key"), project("value")

        rate = cfg.attention_probs_dropout_prob
        rng = None if self.deterministic or rate == 0.0 else self.make_rng("dropout")
        # Probabilities exist only in the reference implementation.
        impl = "xla" if output_attentions else cfg.attention_impl
        if mask is not None and mask.ndim == 2:
            mask = self.expand_mask(mask, impl)
        context, probs = dot_product_attention(
            query, key, value, mask=mask, bias=self.bias(query, key, *extra), impl=impl,
            scale=self.scale(), dropout_rate=rate, dropout_rng=rng,
            return_probs=output_attentions)
        context = sharding.constrain(context, sharding.HEADS)
        out = head_projection(cfg, "out", heads, head_dim, into_heads=False)(context) + peft.lora(
            cfg, "output", (cfg.hidden_size,), ("heads", "kv"), ("embed",), self.deterministic)(
                context)
        return sharding.constrain(out, sharding.HIDDEN), probs
