"""The one attention function, and the multi-head self-attention layer built on it.

Two implementations, chosen by `config.attention_impl`:
- `xla`: explicit einsum + fp32 softmax. The reference: it can return the probabilities and
  takes any key-padding mask.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` with padding given as
  key/value sequence lengths (cuDNN's fused kernel). That needs right-padded masks (ones then
  zeros); a row that is not is poisoned with NaN rather than silently attended wrongly. Where cuDNN
  cannot run (no CUDA GPU, or a float32 compute dtype) it falls back, with a logged warning, to
  XLA's implementation of the same call, so the semantics stay the same everywhere.
"""
from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.layers import sharding
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


def dot_product_attention(query, key, value, *, mask=None, bias=None, impl: str = "xla",
                          dropout_rate: float = 0.0, dropout_rng=None, return_probs: bool = False):
    """Scaled dot-product attention.

    query: (batch, q_len, heads, head_dim); key, value: (batch, kv_len, heads, head_dim).
    mask: (batch, kv_len), 1 where a key may be attended. bias: broadcastable to
    (batch, heads, q_len, kv_len), added to the scores. Dropout applies to the probabilities when
    `dropout_rng` is given. Returns (context like query, probabilities or None).
    """
    if impl == "cudnn":
        if return_probs:
            raise ValueError("attention probabilities need attention_impl='xla'; cuDNN does not "
                             "materialise them")
        return _cudnn_attention(query, key, value, mask, bias, dropout_rate, dropout_rng), None
    if impl != "xla":
        raise ValueError(f"unknown attention implementation {impl!r}; use 'xla' or 'cudnn'")

    scale = query.shape[-1] ** -0.5
    scores = jnp.einsum("btnh,bsnh->bnts", query * jnp.asarray(scale, query.dtype), key)
    scores = scores.astype(jnp.float32)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        scores = jnp.where(mask[:, None, None, :].astype(bool), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs_used = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(probs.dtype)
    else:
        probs_used = probs
    context = jnp.einsum("bnts,bsnh->btnh", probs_used, value)
    return context, (probs if return_probs else None)


def _cudnn_attention(query, key, value, mask, bias, dropout_rate, dropout_rng):
    reason = cudnn_unavailable_reason(query.dtype)
    if reason is not None:
        _warn_once(f"{reason}; using XLA's implementation of the same masked attention instead.")
    if dropout_rng is not None and dropout_rate > 0.0:
        _warn_once("cuDNN attention has no dropout on attention probabilities: "
                   f"attention_probs_dropout_prob={dropout_rate} is not applied "
                   "(hidden-state dropout still is). Use attention_impl='xla' to keep it.")
    lengths = None
    if mask is not None:
        mask = mask.astype(jnp.int32)
        lengths = mask.sum(-1).astype(jnp.int32)
        positions = jnp.arange(mask.shape[-1], dtype=jnp.int32)
        right_padded = jnp.all(mask == (positions[None, :] < lengths[:, None]), axis=-1)
    out = jax.nn.dot_product_attention(
        query, key, value, bias=bias, key_value_seq_lengths=lengths,
        implementation="cudnn" if reason is None else "xla")
    if mask is not None:
        # A mask with holes cannot be expressed as lengths: make such rows loudly wrong (NaN).
        out = jnp.where(right_padded[:, None, None, None], out, jnp.nan)
    return out


class SelfAttention(nn.Module):
    """Multi-head self-attention: q/k/v projections to (heads, head_dim), attention, output projection."""

    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, *, output_attentions: bool = False, bias=None):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        heads, head_dim, width = cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size

        def projection(name, shape, equation, kernel_axes, bias_axes):
            # nn.Einsum initialises the kernel at its full (heads, head_dim) shape, so its logical
            # axes hold at init under a mesh (DenseGeneral initialises a flattened 2-D kernel).
            return nn.Einsum(shape, equation, dtype=cfg.compute_dtype,
                             param_dtype=cfg.weights_dtype, name=name,
                             kernel_init=sharding.param_init(init, kernel_axes),
                             bias_init=sharding.param_init(nn.initializers.zeros, bias_axes))

        def to_heads(name):
            return projection(name, (width, heads, head_dim), "bse,enh->bsnh",
                              ("embed", "heads", "kv"), ("heads", "kv"))

        query = sharding.constrain(to_heads("query")(x), sharding.HEADS)
        key = sharding.constrain(to_heads("key")(x), sharding.HEADS)
        value = sharding.constrain(to_heads("value")(x), sharding.HEADS)

        rate = cfg.attention_probs_dropout_prob
        rng = None if self.deterministic or rate == 0.0 else self.make_rng("dropout")
        # Probabilities exist only in the reference implementation.
        impl = "xla" if output_attentions else cfg.attention_impl
        context, probs = dot_product_attention(
            query, key, value, mask=mask, bias=bias, impl=impl, dropout_rate=rate,
            dropout_rng=rng, return_probs=output_attentions)
        context = sharding.constrain(context, sharding.HEADS)
        out = projection("out", (heads, head_dim, width), "bsnh,nhe->bse",
                         ("heads", "kv", "embed"), ("embed",))(context)
        return sharding.constrain(out, sharding.HIDDEN), probs
