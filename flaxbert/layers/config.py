"""The frozen configuration every shared layer reads.

Field names follow transformers' configs, so a config.json maps onto a config with no renaming.
Each family subclasses `EncoderConfig` (adding only what is its own) and registers its sizes in
`flaxbert.models.registry`. Run-time choices (dtypes, attention implementation, scan, remat) are
fields too, so a variant is always `config.replace(...)`, never a code branch.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

ATTENTION_IMPLS = ("xla", "cudnn")
POOLING = ("mean", "cls", "max")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "attention_out")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# Fields of ours that transformers' config.json does not carry.
FLAXBERT_FIELDS = ("num_labels", "id2label", "pooling", "normalize_embeddings", "dtype",
                   "param_dtype", "attention_impl", "scan_layers", "remat_policy")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    # Heads.
    num_labels: int = 2
    id2label: tuple[str, ...] | None = None
    problem_type: str | None = None
    classifier_dropout: float | None = None
    pooling: str = "mean"  # sentence embeddings: mean | cls | max
    normalize_embeddings: bool = False
    # Run-time choices: compute dtype, parameter dtype, attention kernel, layer stacking.
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "xla"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        def need(ok: bool, message: str):
            if not ok:
                raise ValueError(f"{type(self).__name__}: {message}")

        need(self.hidden_size % self.num_attention_heads == 0,
             f"hidden_size={self.hidden_size} is not a multiple of "
             f"num_attention_heads={self.num_attention_heads}")
        need(self.attention_impl in ATTENTION_IMPLS,
             f"attention_impl={self.attention_impl!r}; choose one of {ATTENTION_IMPLS}")
        need(self.remat_policy in REMAT_POLICIES,
             f"remat_policy={self.remat_policy!r}; choose one of {REMAT_POLICIES}")
        need(self.dtype in DTYPES, f"dtype={self.dtype!r}; choose one of {tuple(DTYPES)}")
        need(self.param_dtype in DTYPES,
             f"param_dtype={self.param_dtype!r}; choose one of {tuple(DTYPES)}")
        need(self.pooling in POOLING, f"pooling={self.pooling!r}; choose one of {POOLING}")
        need(self.num_labels >= 1, f"num_labels={self.num_labels} must be >= 1")
        need(self.id2label is None or len(self.id2label) == self.num_labels,
             f"id2label has {0 if self.id2label is None else len(self.id2label)} labels "
             f"but num_labels={self.num_labels}")
        for name in ("num_hidden_layers", "vocab_size", "intermediate_size", "max_position_embeddings"):
            need(getattr(self, name) > 0, f"{name}={getattr(self, name)} must be > 0")

    @property
    def embedding_width(self) -> int:
        """Width of the token embeddings (ALBERT/ELECTRA configs add `embedding_size`)."""
        return getattr(self, "embedding_size", None) or self.hidden_size

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position table allows (RoBERTa-style offsets lower it)."""
        return self.max_position_embeddings

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weights_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def classifier_dropout_prob(self) -> float:
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

    def replace(self, **changes: Any) -> "EncoderConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        if "num_labels" in changes and "id2label" not in changes:
            changes["id2label"] = None  # the old label names no longer apply
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
