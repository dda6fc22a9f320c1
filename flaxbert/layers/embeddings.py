"""Token + position + token-type embeddings, LayerNorm and dropout, with input validation.

Validation happens here because every family's inputs pass through it. Shape, rank and dtype are
checked at trace time. Token ids are checked eagerly when the arrays are concrete; under `jit`
they cannot be, so an out-of-range id looks up NaN (never a plausible wrong vector).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.layers import sharding
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.feed_forward import layer_norm


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_ids(name: str, ids, limit: int, limit_name: str) -> None:
    """Raise if a concrete id array has values outside [0, limit)."""
    if ids is None or not _is_concrete(ids) or np.size(ids) == 0:
        return
    ids = np.asarray(ids)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= limit:
        bad = high if high >= limit else low
        raise ValueError(f"{name} contains {bad}, outside [0, {limit}) ({limit_name}={limit})")


def check_tokens(cfg: EncoderConfig, input_ids, attention_mask=None, token_type_ids=None,
                 position_ids=None, rank: int = 2, segment_ids=None) -> None:
    """Validate a batch of token inputs of shape (batch, length) (rank 3 for multiple choice).

    `segment_ids` (packed rows, see flaxbert.packing) need explicit `position_ids`: the default
    positions would count on across the examples of a row."""
    shape = jnp.shape(input_ids)
    if len(shape) != rank:
        layout = "(batch, length)" if rank == 2 else "(batch, num_choices, length)"
        raise ValueError(f"input_ids must have rank {rank} {layout}, got shape {shape}")
    if not jnp.issubdtype(jnp.result_type(input_ids), jnp.integer):
        raise TypeError(f"input_ids must be integers, got dtype {jnp.result_type(input_ids)}")
    if shape[-1] == 0:
        raise ValueError(f"input_ids has length 0 (shape {shape}); every sequence needs at least "
                         "one token (a tokenizer adds [CLS] and [SEP] even to empty text)")
    if shape[-1] > cfg.max_sequence_length and position_ids is None:
        raise ValueError(f"sequence length {shape[-1]} exceeds the {cfg.max_sequence_length} "
                         f"positions this model has (max_position_embeddings="
                         f"{cfg.max_position_embeddings})")
    if segment_ids is not None and position_ids is None:
        raise ValueError("segment_ids (packed rows) need position_ids that restart at each "
                         "example; flaxbert.packing.pack_examples makes both")
    for name, arr in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                      ("position_ids", position_ids), ("segment_ids", segment_ids)):
        if arr is not None and jnp.shape(arr) != shape:
            raise ValueError(f"{name} has shape {jnp.shape(arr)}, input_ids has {shape}")
        if arr is not None and not (jnp.issubdtype(jnp.result_type(arr), jnp.integer)
                                    or jnp.result_type(arr) == jnp.bool_):
            raise TypeError(f"{name} must be integer or bool, got dtype {jnp.result_type(arr)}")
    check_ids("input_ids", input_ids, cfg.vocab_size, "vocab_size")
    if token_type_ids is not None and cfg.type_vocab_size > 0:  # else ignored (DistilBERT)
        check_ids("token_type_ids", token_type_ids, cfg.type_vocab_size, "type_vocab_size")
    if position_ids is not None:
        check_ids("position_ids", position_ids, cfg.max_position_embeddings,
                  "max_position_embeddings")
    if segment_ids is not None and _is_concrete(segment_ids) and np.size(segment_ids) \
            and int(np.min(segment_ids)) < 0:
        raise ValueError(f"segment_ids contains {int(np.min(segment_ids))}; use 0 for padding "
                         "and 1, 2, ... for the examples of a row")


def _lookup(table: nn.Embed, ids, limit: int | None = None):
    # Negative ids would wrap around, and ids >= `limit` would read a padding row of a padded
    # vocabulary (vocab_pad_multiple): send them past the end, where the lookup fills NaN.
    bad = ids < 0 if limit is None or limit >= table.num_embeddings else (ids < 0) | (ids >= limit)
    ids = jnp.where(bad, table.num_embeddings, ids)
    return table(ids)


class Embeddings(nn.Module):
    """Sum of word, absolute position (unless config.position_biased_input is False, as DeBERTa
    allows) and (when type_vocab_size > 0) token-type embeddings at `config.embedding_width`
    (ALBERT and ELECTRA embed narrower than hidden_size), then LayerNorm and dropout."""

    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, position_ids=None,
                 deterministic: bool | None = None):
        # `deterministic` may come per call: a module shared by two backbones (ELECTRA) is
        # created once but runs in training and in evaluation.
        deterministic = self.deterministic if deterministic is None else deterministic
        x = self.normalize(self.lookup(input_ids, token_type_ids, position_ids))
        x = nn.Dropout(self.config.hidden_dropout_prob, deterministic=deterministic)(x)
        return sharding.constrain(x, sharding.HIDDEN)

    def normalize(self, x):
        """LayerNorm of the summed embeddings; DeBERTa projects to hidden_size first."""
        return layer_norm(self.config, "norm")(x)

    def lookup(self, input_ids, token_type_ids, position_ids):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)

        def table(num, axes, name):
            return nn.Embed(num, cfg.embedding_width, dtype=cfg.compute_dtype,
                            param_dtype=cfg.weights_dtype, name=name,
                            embedding_init=sharding.param_init(init, axes))

        x = _lookup(table(cfg.padded_vocab_size, ("vocab", "embed"), "word_embeddings"),
                    input_ids, cfg.vocab_size)
        if getattr(cfg, "position_biased_input", True):
            if position_ids is None:
                position_ids = jnp.arange(input_ids.shape[-1])[None, :]
            x = x + _lookup(table(cfg.max_position_embeddings, ("positions", "embed"),
                                  "position_embeddings"), position_ids)
        if cfg.type_vocab_size > 0:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = x + _lookup(table(cfg.type_vocab_size, ("types", "embed"),
                                  "token_type_embeddings"), token_type_ids)
        return x

    def word_embedding_table(self):
        return nn.meta.unbox(self.variables["params"]["word_embeddings"]["embedding"])
