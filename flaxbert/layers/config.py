"""The frozen configuration every shared layer reads.

Field names follow transformers' configs, so a config.json maps onto a config with no renaming.
Each family subclasses `EncoderConfig` (adding only what is its own) and registers its sizes in
`flaxbert.models.registry`. Run-time choices (dtypes, attention implementation, scan, remat) are
fields too, so a variant is always `config.replace(...)`, never a code branch.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, ClassVar

import jax.numpy as jnp

ATTENTION_IMPLS = ("xla", "cudnn", "sparse")
POOLING = ("mean", "cls", "max")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "attention_out")
# Parameter-efficient fine-tuning (flaxbert.layers.peft): LoRA on the projections lora_targets
# names, or bottleneck adapters after both sub-layers (Houlsby) or after the feed-forward only
# (Pfeiffer).
PEFT_METHODS = ("none", "lora", "houlsby", "pfeiffer")
LORA_TARGETS = ("query", "key", "value", "output", "mlp_in", "mlp_out")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


# Bounds by field name, checked in every config class that has the field, so a family's own
# fields (ALBERT's groups, DeBERTa's head size, ...) are covered by naming them here. Every field
# with "dropout" in its name is a rate in [0, 1); every *_act / *_activation names an activation.
_AT_LEAST_ONE = (">= 1", lambda v: v >= 1)
_AT_LEAST_ZERO = (">= 0", lambda v: v >= 0)
FIELD_RANGES = {
    **dict.fromkeys(("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "num_labels", "embedding_size",
                     "num_hidden_groups", "inner_group_num", "attention_head_size",
                     "pooler_hidden_size", "conv_groups", "lora_rank", "adapter_size",
                     "attention_window"),
                    _AT_LEAST_ONE),
    **dict.fromkeys(("type_vocab_size", "pad_token_id", "initializer_range", "conv_kernel_size",
                     "mem_len", "reuse_len", "global_attention_tokens", "vocab_pad_multiple"),
                    _AT_LEAST_ZERO),
    **dict.fromkeys(("layer_norm_eps", "lora_alpha"), ("> 0", lambda v: v > 0)),
}
_RATE = ("in [0, 1)", lambda v: 0 <= v < 1)


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def accepts(hint, value) -> bool:
    """Whether `value` has the annotated type: a bool is not an int, "12" is not a number, an int
    is a float."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return (isinstance(value, (int, float) if hint is float else int)
                and not isinstance(value, bool))
    if typing.get_origin(hint) is tuple:
        return isinstance(value, tuple) and all(accepts(typing.get_args(hint)[0], v) for v in value)
    return isinstance(value, hint)


# Fields of ours that transformers' config.json does not carry.
FLAXBERT_FIELDS = ("num_labels", "id2label", "pooling", "normalize_embeddings", "dtype",
                   "param_dtype", "attention_impl", "attention_window",
                   "global_attention_tokens", "scan_layers", "remat_policy",
                   "vocab_pad_multiple", "peft",
                   "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "adapter_size",
                   "adapter_act")
PEFT_FIELDS = FLAXBERT_FIELDS[FLAXBERT_FIELDS.index("peft"):]


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
    # attention_impl="sparse": keys within attention_window positions on either side (half of
    # Longformer's attention_window, which counts both sides), plus the first
    # global_attention_tokens positions (CLS), which attend to and are attended by every token.
    attention_window: int = 256
    global_attention_tokens: int = 1
    scan_layers: bool = False
    remat_policy: str = "none"
    # The word-embedding table and the MLM bias get ceil(vocab_size / m) * m rows (0 or 1: none),
    # so the `vocab` axis divides over a tensor-parallel mesh axis (BERT's 30,522 rows do not
    # divide by 4). The extra rows are never looked up, logits are cut back to vocab_size inside
    # the heads, and conversion to transformers drops them.
    vocab_pad_multiple: int = 0
    # Parameter-efficient fine-tuning: W x + (lora_alpha / lora_rank) B A x on lora_targets, or
    # adapters h + up(act(down(h))) of width adapter_size.
    peft: str = "none"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("query", "value")
    adapter_size: int = 64
    adapter_act: str = "relu"
    # Why this family's attention cannot run attention_impl="sparse" (None: it can). Set by
    # families whose attention is not the shared one, or adds a (q_len, kv_len) bias.
    sparse_attention_unsupported: ClassVar[str | None] = None

    def __post_init__(self):
        def need(ok: bool, message: str):
            if not ok:
                raise ValueError(f"{type(self).__name__}: {message}")

        from flaxbert.layers.feed_forward import ACTIVATIONS  # it imports this module

        hints = _field_types(type(self))
        for field in dataclasses.fields(self):
            name, value = field.name, getattr(self, field.name)
            need(accepts(hints[name], value),
                 f"{name}={value!r} must be {field.type}, got {type(value).__name__}")
            if value is None:
                continue
            need(not isinstance(value, float) or math.isfinite(value),
                 f"{name}={value!r} must be finite")
            bound, ok = FIELD_RANGES.get(name) or (_RATE if "dropout" in name else ("", None))
            need(ok is None or ok(value), f"{name}={value!r} must be {bound}")
            # (MobileBERT's classifier_activation is a bool: whether its pooler has one.)
            need(not name.endswith(("_act", "_activation")) or not isinstance(value, str)
                 or not value or value in ACTIVATIONS,
                 f"{name}={value!r} is not an activation flaxbert has; choose one of "
                 f"{sorted(ACTIVATIONS)}")
        need(self.pad_token_id < self.vocab_size,
             f"pad_token_id={self.pad_token_id} must be < vocab_size={self.vocab_size}")
        need(self.hidden_size % self.num_attention_heads == 0,
             f"hidden_size={self.hidden_size} is not a multiple of "
             f"num_attention_heads={self.num_attention_heads}")
        need(self.attention_impl in ATTENTION_IMPLS,
             f"attention_impl={self.attention_impl!r}; choose one of {ATTENTION_IMPLS}")
        need(self.attention_impl != "sparse" or self.sparse_attention_unsupported is None,
             f"attention_impl='sparse' is not available: {self.sparse_attention_unsupported}; "
             "use 'xla' or 'cudnn'")
        need(self.remat_policy in REMAT_POLICIES,
             f"remat_policy={self.remat_policy!r}; choose one of {REMAT_POLICIES}")
        need(self.dtype in DTYPES, f"dtype={self.dtype!r}; choose one of {tuple(DTYPES)}")
        need(self.param_dtype in DTYPES,
             f"param_dtype={self.param_dtype!r}; choose one of {tuple(DTYPES)}")
        need(self.peft in PEFT_METHODS, f"peft={self.peft!r}; choose one of {PEFT_METHODS}")
        need(bool(self.lora_targets) and set(self.lora_targets) <= set(LORA_TARGETS),
             f"lora_targets={self.lora_targets!r}; choose one or more of {LORA_TARGETS}")
        need(self.pooling in POOLING, f"pooling={self.pooling!r}; choose one of {POOLING}")
        need(self.id2label is None or len(self.id2label) == self.num_labels,
             f"id2label has {0 if self.id2label is None else len(self.id2label)} labels "
             f"but num_labels={self.num_labels}")

    @property
    def embedding_width(self) -> int:
        """Width of the token embeddings (ALBERT/ELECTRA configs add `embedding_size`)."""
        return getattr(self, "embedding_size", None) or self.hidden_size

    @property
    def max_sequence_length(self) -> int:
        """Longest input the position table allows (RoBERTa-style offsets lower it)."""
        return self.max_position_embeddings

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the word-embedding table and MLM bias (vocab_size rounded up to
        vocab_pad_multiple)."""
        m = max(self.vocab_pad_multiple, 1)
        return -(-self.vocab_size // m) * m

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
