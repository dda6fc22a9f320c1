"""The one attention function, and the multi-head self-attention layer built on it.

Three implementations, chosen by `config.attention_impl`:
- `xla`: explicit einsum + fp32 softmax. The reference: it can return the probabilities and
  takes any key-padding mask.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` with padding given as
  key/value sequence lengths (cuDNN's fused kernel). That needs right-padded masks (ones then
  zeros); a row that is not is poisoned with NaN rather than silently attended wrongly. Where cuDNN
  cannot run (no CUDA GPU, or a float32 compute dtype) it falls back, with a logged warning, to
  XLA's implementation of the same call, so the semantics stay the same everywhere.

- `sparse`: Longformer's pattern (Beltagy et al., 2020) computed in blocks, so that memory and
  FLOPs grow linearly with length. Each query attends to the keys within `attention_window`
  positions on either side (|q - k| <= window: the window is exact, it is not rounded), and the
  first `global_attention_tokens` positions (CLS) attend to, and are attended by, every token.
  The tiling is internal: the length is padded to a multiple of block = min(window, length), each
  query block scores its own and both neighbouring key blocks (3 x block keys, of which the
  2 x window + 1 band is kept) plus the global keys, and the padding is cut off again. Results
  equal `xla` given `sparse_pattern_mask` (the band, global rows and columns, and the padding).

Packed rows (several examples per row, `flaxbert.packing`) carry `segment_ids`; `segment_mask`
turns them into a block-diagonal (batch, 1, q_len, kv_len) mask that both implementations take.
jax 0.10's public `jax.nn.dot_product_attention` has no segment-id or packed-offset arguments
(cuDNN's ragged `q_offsets`/`kv_offsets` exist only in the private
`jax._src.cudnn.fused_attention_stablehlo`), so the cuDNN path passes the block mask as its
`mask`, which jax turns into an additive bias for the fused kernel. `sparse` reads the blocks
it needs from that mask, so it honours packing, but the (len, len) mask itself is then built by
the caller (`segment_mask`): packing long rows gives up the linear memory.
"""
from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def sparse_pattern_mask(length: int, attention_window: int, global_tokens: int,
                        attention_mask=None):
    """The (batch or 1, 1, length, length) boolean mask under which `xla` attention equals
    `sparse`: the band |q - k| <= attention_window, the first `global_tokens` rows and columns,
    and (if given) the (batch, length) key padding mask or a full 4-D mask. A dense reference,
    (length, length) by construction: for tests and for returning probabilities."""
    positions = np.arange(length)
    allowed = ((np.abs(positions[:, None] - positions[None, :]) <= attention_window)
               | (positions[:, None] < global_tokens) | (positions[None, :] < global_tokens))
    allowed = jnp.asarray(allowed)[None, None]
    if attention_mask is None:
        return allowed
    attention_mask = jnp.asarray(attention_mask).astype(bool)
    if attention_mask.ndim == 2:
        return allowed & attention_mask[:, None, None, :]
    return allowed & attention_mask


def dot_product_attention(query, key, value, *, mask=None, bias=None, impl: str = "xla",
                          scale: float | None = None, dropout_rate: float = 0.0, dropout_rng=None,
                          return_probs: bool = False, attention_window: int | None = None,
                          global_tokens: int = 0):
    """Scaled dot-product attention.

    query: (batch, q_len, heads, head_dim); key, value: (batch, kv_len, heads, head_dim).
    mask: (batch, kv_len), 1 where a key may be attended, or a full boolean mask
    broadcastable to (batch, heads, q_len, kv_len) (`segment_mask` for packed rows).
    bias: broadcastable to (batch, heads, q_len, kv_len), added to the scaled scores.
    scale: default head_dim ** -0.5.
    attention_window, global_tokens: the `sparse` pattern (see the module docstring); required
    and used only by impl="sparse".
    Dropout applies to the probabilities when `dropout_rng` is given. Returns (context like
    query, probabilities or None).
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if impl == "sparse":
        if return_probs:
            raise ValueError("sparse attention never materialises the (q_len, kv_len) "
                             "probabilities; SelfAttention returns them through 'xla' with "
                             "sparse_pattern_mask")
        if bias is not None:
            raise ValueError("sparse attention takes no additive score bias (it would be a "
                             "(q_len, kv_len) tensor); use attention_impl='xla'")
        if attention_window is None or attention_window < 1:
            raise ValueError(f"sparse attention needs attention_window >= 1, got "
                             f"{attention_window!r}")
        if query.shape[1] != key.shape[1]:
            raise ValueError(f"sparse attention is self-attention: q_len {query.shape[1]} != "
                             f"kv_len {key.shape[1]}")
        length = query.shape[1]
        if mask is not None and not (mask.ndim == 2 and mask.shape[-1] == length or
                                     mask.ndim == 4 and mask.shape[-2:] == (length, length)):
            raise ValueError("sparse attention takes a (batch, kv_len) padding mask or a "
                             f"(batch, heads|1, q_len, kv_len) full mask with q_len = kv_len = "
                             f"{length}, got shape {mask.shape}")
        rng = dropout_rng if dropout_rate > 0.0 else None
        return _sparse_attention(query, key, value, mask, scale, attention_window,
                                 global_tokens, dropout_rate, rng), None
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
        raise ValueError(f"unknown attention implementation {impl!r}; use 'xla', 'cudnn' or "
                         "'sparse'")

    scores = jnp.einsum("btnh,bsnh->bnts", query * jnp.asarray(scale, query.dtype), key)
    scores = scores.astype(jnp.float32)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    if mask is not None:
        full = mask[:, None, None, :] if mask.ndim == 2 else mask
        scores = jnp.where(full.astype(bool), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
    probs_used = _dropout(probs, dropout_rate, dropout_rng)
    context = jnp.einsum("bnts,bsnh->btnh", probs_used, value)
    return context, (probs if return_probs else None)


def _dropout(probs, rate: float, rng):
    if rng is None or rate == 0.0:
        return probs
    keep = jax.random.bernoulli(rng, 1.0 - rate, probs.shape)
    return jnp.where(keep, probs / (1.0 - rate), 0.0).astype(probs.dtype)


def _masked_softmax(scores, allowed, dtype):
    scores = jnp.where(allowed, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1).astype(dtype)


def _neighbour_blocks(x, blocks: int):
    """(batch, blocks * block, ...) -> (batch, blocks, 3 * block, ...): for each block, the
    previous, its own and the next block (zeros beyond the ends)."""
    block = x.shape[1] // blocks
    widths = [(0, 0)] * x.ndim
    widths[1] = (block, block)
    x = jnp.pad(x, widths).reshape(x.shape[0], blocks + 2, block, *x.shape[2:])
    return jnp.concatenate([x[:, shift:shift + blocks] for shift in range(3)], axis=2)


def _sparse_attention(query, key, value, mask, scale, window, global_tokens, dropout_rate,
                      dropout_rng):
    batch, length, heads, _ = query.shape
    block = min(window, length)
    blocks = -(-length // block)
    padded = blocks * block
    num_global = min(global_tokens, length)

    def pad_length(x, axis=1):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, padded - length)
        return jnp.pad(x, widths)

    query = query * jnp.asarray(scale, query.dtype)
    query_blocks = pad_length(query).reshape(batch, blocks, block, *query.shape[2:])
    key_band, value_band = (_neighbour_blocks(pad_length(x), blocks) for x in (key, value))

    # Which (query, key) pairs of the blocked layout the pattern keeps, from positions alone
    # (static): the band, minus keys outside the sequence and the global keys, which are scored
    # once, apart, for every query.
    query_pos = np.arange(padded).reshape(blocks, block)
    key_pos = query_pos[:, :1, None] - block + np.arange(3 * block)[None, None, :]
    band = ((np.abs(query_pos[:, :, None] - key_pos) <= window)
            & (key_pos >= num_global) & (key_pos >= 0) & (key_pos < length))
    band = jnp.asarray(band)[None, None]  # (1, 1, blocks, block, 3 * block)
    global_cols = jnp.ones((1, 1, 1, 1, num_global), bool)
    global_rows = jnp.ones((1, 1, num_global, length), bool)
    if mask is not None and mask.ndim == 2:
        keys_kept = mask.astype(bool)
        band = band & _neighbour_blocks(pad_length(keys_kept), blocks)[:, None, :, None, :]
        global_cols = global_cols & keys_kept[:, None, None, None, :num_global]
        global_rows = global_rows & keys_kept[:, None, None, :]
    elif mask is not None:  # a full mask: take the blocks the pattern reads
        full = mask.astype(bool)
        rows = jnp.pad(full, [(0, 0), (0, 0), (0, padded - length), (0, 0)])
        rows = rows.reshape(*full.shape[:2], blocks, block, length)
        cols = jnp.pad(rows, [(0, 0)] * 4 + [(block, padded - length + block)])
        cols = cols.reshape(*rows.shape[:4], blocks + 2, block)
        index = np.arange(blocks)
        # Advanced indices on axes 2 and 4 move to the front: (blocks, batch, heads, block, block).
        picked = jnp.concatenate([cols[:, :, index, :, index + shift] for shift in range(3)], -1)
        band = band & jnp.moveaxis(picked, 0, 2)
        global_cols = global_cols & rows[..., :num_global]
        global_rows = global_rows & full[:, :, :num_global, :]

    scores = jnp.einsum("bcqnh,bcknh->bncqk", query_blocks, key_band)
    allowed = band
    if num_global:
        global_scores = jnp.einsum("bcqnh,bgnh->bncqg", query_blocks, key[:, :num_global])
        scores = jnp.concatenate([global_scores, scores], axis=-1)
        lead = jnp.broadcast_shapes(global_cols.shape[:-1], band.shape[:-1])
        allowed = jnp.concatenate([jnp.broadcast_to(global_cols, lead + (num_global,)),
                                   jnp.broadcast_to(band, lead + band.shape[-1:])], axis=-1)
    if dropout_rng is not None:
        local_rng, global_rng = jax.random.split(dropout_rng)
    else:
        local_rng = global_rng = None
    probs = _dropout(_masked_softmax(scores, allowed, query.dtype), dropout_rate, local_rng)
    context = jnp.einsum("bncqk,bcknh->bcqnh", probs[..., num_global:], value_band)
    if num_global:
        context = context + jnp.einsum("bncqg,bgnh->bcqnh", probs[..., :num_global],
                                       value[:, :num_global])
    context = context.reshape(batch, padded, *query.shape[2:])[:, :length]
    if not num_global:
        return context
    # The global rows attend to every key: (global, length) scores, linear in length.
    row_scores = jnp.einsum("bgnh,bsnh->bngs", query[:, :num_global], key)
    row_probs = _dropout(_masked_softmax(row_scores, global_rows, query.dtype), dropout_rate,
                         global_rng)
    global_context = jnp.einsum("bngs,bsnh->bgnh", row_probs, value)
    return context.at[:, :num_global].set(global_context)


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
                    into_heads: bool = True, width: int | None = None) -> nn.Einsum:
    """hidden -> (heads, head_dim) (or back, into_heads=False) with logical axes. `width` is the
    hidden side's size where it is not hidden_size (MobileBERT's bottleneck).

    nn.Einsum initialises the kernel at its full (heads, head_dim) shape, so its logical axes hold
    at init under a mesh (DenseGeneral initialises a flattened 2-D kernel).
    """
    init = nn.initializers.normal(cfg.initializer_range)
    width = cfg.hidden_size if width is None else width
    if into_heads:
        shape, equation = (width, heads, head_dim), "bse,enh->bsnh"
        kernel_axes, bias_axes = ("embed", "heads", "kv"), ("heads", "kv")
    else:
        shape, equation = (heads, head_dim, width), "bsnh,nhe->bse"
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
        # Probabilities exist only in the reference implementation; for a sparse config it
        # gets the equivalent dense mask, so the outputs stay those of the sparse pattern.
        impl = "xla" if output_attentions else cfg.attention_impl
        if mask is not None and mask.ndim == 2:
            mask = self.expand_mask(mask, impl)
        if output_attentions and cfg.attention_impl == "sparse":
            mask = sparse_pattern_mask(x.shape[1], cfg.attention_window,
                                       cfg.global_attention_tokens, mask)
        context, probs = dot_product_attention(
            query, key, value, mask=mask, bias=self.bias(query, key, *extra), impl=impl,
            scale=self.scale(), dropout_rate=rate, dropout_rng=rng,
            return_probs=output_attentions, attention_window=cfg.attention_window,
            global_tokens=cfg.global_attention_tokens)
        context = sharding.constrain(context, sharding.HEADS)
        out = head_projection(cfg, "out", heads, head_dim, into_heads=False)(context) + peft.lora(
            cfg, "output", (cfg.hidden_size,), ("heads", "kv"), ("embed",), self.deterministic)(
                context)
        return sharding.constrain(out, sharding.HIDDEN), probs
