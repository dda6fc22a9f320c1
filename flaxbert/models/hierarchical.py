"""Hierarchical chunk encoding for long-document classification: any family's encoder runs on
each chunk of a document, each chunk's CLS embedding is kept, and a small pooling network over
the chunk embeddings (attention pooling, or one transformer layer from flaxbert.layers) feeds
the classifier.

    model = HierarchicalClassifier(config, max_chunks=8, chunk_pooling="attention")
    out = model.apply({"params": params}, input_ids, attention_mask)   # (batch, chunks, length)
    out.logits                                                         # (batch, num_labels)
    out.embeddings                                          # (batch, chunks, hidden): each CLS

Chunks whose attention mask is all zeros are missing (a short document's padding chunks): the
pooling masks them out exactly, so adding an empty chunk changes no logit.

Parameters: `encoder` (the family's "base" model, so a checkpoint's encoder loads into it
unchanged, see `with_encoder_params`) and `head` (`chunk_positions` and `chunk_layer` for the
transformer pooling, `attention` for attention pooling, then `classifier`), every one created
with logical axis names.

transformers has no such class, so a saved model is a transformers base-model directory (the
encoder: config.json with the labels, model.safetensors, tokenizer files; AutoModel loads it)
plus two files of its own: chunk_head.safetensors (the head's tensors, named by their path in
`params["head"]`) and chunk_config.json (max_chunks, chunk_pooling, cls_position, chunk_length,
stride, id2label: what the model and the chunking of its inputs need).

    model.save_pretrained("out", params)
    model, params = HierarchicalClassifier.from_pretrained("out")
    flaxbert.pipeline("text-classification", "out")("a long text ...")
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.layers import sharding
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.encoder import TransformerBlock
from flaxbert.layers.feed_forward import dense
from flaxbert.layers.heads import Classifier
from flaxbert.models import registry
from flaxbert.models.outputs import Output

CHUNK_POOLING = ("attention", "transformer")
CLS_POSITIONS = ("first", "last")  # "last": tokenizers that pad on the left and end with CLS
CHUNK_CONFIG = "chunk_config.json"
CHUNK_HEAD = "chunk_head.safetensors"
FORMAT = "flaxbert-hierarchical-classifier"


def chunk_cls(hidden, cls_position: str):
    """(rows, length, hidden) encoder states -> (rows, hidden): each chunk's CLS state."""
    return hidden[:, 0] if cls_position == "first" else hidden[:, -1]


def _masked_softmax(scores, present):
    # finfo.min, not -inf: a row with no chunk at all stays finite (its output is never read).
    scores = jnp.where(present, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


class ChunkHead(nn.Module):
    """(batch, chunks, hidden) chunk embeddings and a (batch, chunks) presence mask ->
    (batch, num_labels) logits."""

    config: EncoderConfig
    max_chunks: int
    chunk_pooling: str = "attention"
    deterministic: bool = True

    @nn.compact
    def __call__(self, chunks, present):
        cfg = self.config
        present = present.astype(bool)
        if self.chunk_pooling == "transformer":
            positions = self.param("chunk_positions", sharding.param_init(
                nn.initializers.normal(cfg.initializer_range), ("positions", "embed")),
                (self.max_chunks, cfg.hidden_size), cfg.weights_dtype)
            x = chunks + positions[:chunks.shape[1]].astype(chunks.dtype)
            # The chunks are a short sequence: plain attention, whatever the tokens use.
            layer_cfg = cfg.replace(attention_impl="xla")
            x, _ = TransformerBlock(layer_cfg, self.deterministic, name="chunk_layer")(
                x, present.astype(jnp.int32))
            weights = present / jnp.maximum(present.sum(-1, keepdims=True), 1)
        else:
            hidden = jnp.tanh(dense(cfg, cfg.hidden_size, ("embed", "embed_proj"),
                                    "attention")(chunks))
            scores = dense(cfg, 1, ("embed_proj", "classes"), "attention_score")(hidden)[..., 0]
            weights, x = _masked_softmax(scores, present), chunks
        # jnp.where, not a product: a missing chunk's (finite but meaningless) state is dropped.
        document = jnp.einsum("bc,bce->be", weights.astype(x.dtype),
                              jnp.where(present[..., None], x, 0))
        return Classifier(cfg, cfg.num_labels, self.deterministic, cfg.classifier_dropout_prob,
                          name="classifier")(document)


class HierarchicalClassifier(nn.Module):
    """See the module docstring. Inputs (batch, chunks, length), chunks <= max_chunks."""

    config: EncoderConfig
    max_chunks: int = 8
    chunk_pooling: str = "attention"
    cls_position: str = "first"
    # How documents were cut into chunks (what a saved model tells its pipeline): tokens a
    # chunk, special tokens included (None: not recorded), and tokens two consecutive chunks share.
    chunk_length: int | None = None
    stride: int = 0

    task: ClassVar[str] = "chunk-classification"
    input_rank: ClassVar[int] = 3

    def __post_init__(self):
        if self.chunk_pooling not in CHUNK_POOLING:
            raise ValueError(f"chunk_pooling={self.chunk_pooling!r}; choose one of "
                             f"{CHUNK_POOLING}")
        if self.cls_position not in CLS_POSITIONS:
            raise ValueError(f"cls_position={self.cls_position!r}; choose one of {CLS_POSITIONS}")
        if isinstance(self.max_chunks, bool) or not isinstance(self.max_chunks, int) or \
                self.max_chunks < 1:
            raise ValueError(f"max_chunks={self.max_chunks!r} must be a positive int")
        super().__post_init__()

    @nn.nowrap  # these helpers also serve an unbound model (saving, pipelines)
    def encoder_model(self, name: str | None = None) -> nn.Module:
        return registry.family_of(self.config).task_models["base"](self.config, name=name)

    @nn.nowrap
    def head_model(self, deterministic: bool = True) -> ChunkHead:
        """The pooling head alone (`params["head"]`), applied to (batch, chunks, hidden)."""
        return ChunkHead(self.config, self.max_chunks, self.chunk_pooling, deterministic,
                         parent=None)

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
                 deterministic: bool = True) -> Output:
        if input_ids.ndim != 3:
            raise ValueError(f"input_ids must be (batch, chunks, length), got {input_ids.shape}")
        batch, chunks, length = input_ids.shape
        if chunks > self.max_chunks:
            raise ValueError(f"{chunks} chunks, more than max_chunks={self.max_chunks}")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        flat = [None if x is None else x.reshape(batch * chunks, length)
                for x in (input_ids, attention_mask, token_type_ids)]
        hidden = self.encoder_model(name="encoder")(
            *flat, deterministic=deterministic).last_hidden_state
        embeddings = chunk_cls(hidden, self.cls_position).reshape(batch, chunks, -1)
        present = attention_mask.astype(bool).any(-1)
        logits = ChunkHead(self.config, self.max_chunks, self.chunk_pooling, deterministic,
                           name="head")(embeddings, present)
        return Output(logits=logits, embeddings=embeddings)

    def dummy_inputs(self, batch_size: int = 1, length: int = 8) -> dict:
        return {"input_ids": jnp.zeros((batch_size, self.max_chunks, length), jnp.int32)}

    @nn.nowrap
    def chunk_settings(self) -> dict:
        """What chunk_config.json records besides the labels."""
        return {"max_chunks": self.max_chunks, "chunk_pooling": self.chunk_pooling,
                "cls_position": self.cls_position, "chunk_length": self.chunk_length,
                "stride": self.stride}

    @nn.nowrap
    def save_pretrained(self, path: str | os.PathLike, params: dict, *, overwrite: bool = False,
                        extra_files=()) -> Path:
        """Write the directory the module docstring describes (atomically; an existing `path`
        is refused unless overwrite=True); `extra_files` (the tokenizer's) are copied in."""
        return save_chunk_model(path, self, params, overwrite=overwrite, extra_files=extra_files)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **config_overrides
                        ) -> tuple[HierarchicalClassifier, dict]:
        """(model, params) of a directory `save_pretrained` wrote; `config_overrides` go to the
        encoder's config (dtype=..., attention_impl=...), as in flaxbert.from_pretrained."""
        return load_chunk_model(path, **config_overrides)


def with_encoder_params(model: HierarchicalClassifier, encoder_params, rng) -> dict:
    """The model's params with `encoder_params` (the family's "base" model's, e.g. from
    flaxbert.from_pretrained(dir, task="base")) and a freshly initialised head; only the
    small head is initialised, not the encoder again."""
    head_params = _init_head(model, rng)
    return {"encoder": encoder_params, "head": nn.meta.unbox(head_params)}


def _init_head(model: HierarchicalClassifier, rng):
    cfg = model.config
    return model.head_model().init(
        rng, jnp.zeros((1, model.max_chunks, cfg.hidden_size), cfg.compute_dtype),
        jnp.ones((1, model.max_chunks), bool))["params"]


# ----------------------------------------------------------------------------- saved directories

def is_chunk_directory(path: str | os.PathLike) -> bool:
    return (Path(path) / CHUNK_CONFIG).is_file()


def save_chunk_model(path: str | os.PathLike, model: HierarchicalClassifier, params: dict, *,
                     overwrite: bool = False, extra_files=()) -> Path:
    """See HierarchicalClassifier.save_pretrained."""
    from safetensors.numpy import save_file

    from flaxbert.convert import save_pretrained
    from flaxbert.convert.hf import check_params
    from flaxbert.io import atomic_directory, check_destination
    check_destination(path, overwrite)  # before any work, as every writer does
    params = jax.device_get(nn.meta.unbox(params))
    check_params(model, params)  # names, shapes, dtype and finiteness of encoder and head
    labels = model.config.id2label or tuple(f"LABEL_{i}" for i in range(model.config.num_labels))
    settings = {"format": FORMAT, **model.chunk_settings(), "num_labels": model.config.num_labels,
                "id2label": {str(i): name for i, name in enumerate(labels)}}
    with atomic_directory(path, overwrite) as tmp:
        save_pretrained(tmp, model.encoder_model(), params["encoder"], format="hf",
                        overwrite=True, extra_files=extra_files)
        head = traverse_util.flatten_dict(params["head"], sep=".")
        save_file({k: np.ascontiguousarray(v) for k, v in head.items()}, tmp / CHUNK_HEAD,
                  metadata={"format": FORMAT})
        (tmp / CHUNK_CONFIG).write_text(json.dumps(settings, indent=2) + "\n")
    return Path(path)


def read_chunk_config(path: str | os.PathLike) -> dict:
    """chunk_config.json's settings, checked: one error naming the file and the field."""
    from flaxbert.io import read_json
    file = Path(path) / CHUNK_CONFIG
    saved = read_json(file)
    if saved.get("format") != FORMAT:
        raise ValueError(f"{file}: 'format' must be {FORMAT!r}, got {saved.get('format')!r:.80}")

    def count(v, least):
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    checks = {"max_chunks": lambda v: count(v, 1), "chunk_pooling": lambda v: v in CHUNK_POOLING,
              "cls_position": lambda v: v in CLS_POSITIONS,
              "chunk_length": lambda v: v is None or count(v, 1), "stride": lambda v: count(v, 0)}
    for field, ok in checks.items():
        if field not in saved or not ok(saved[field]):
            raise ValueError(f"{file}: field {field!r} is missing or invalid "
                             f"({saved.get(field)!r:.80})")
    return {field: saved[field] for field in checks}


def load_chunk_head(path: str | os.PathLike, model: HierarchicalClassifier) -> dict:
    """`params["head"]` from a directory's chunk_head.safetensors, checked against `model`."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from flaxbert.convert.hf import check_tensor
    file = Path(path) / CHUNK_HEAD
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; {path} is not a complete chunk model")
    try:
        tensors = load_file(file)
    except SafetensorError as e:
        raise ValueError(f"{file} is not a readable safetensors file: {e}") from None
    expected = traverse_util.flatten_dict(jax.eval_shape(lambda: nn.meta.unbox(
        _init_head(model, jax.random.key(0)))), sep=".")
    missing, extra = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected)
    if missing or extra:
        raise ValueError(f"{file}: tensors do not match a {model.chunk_pooling!r} head: missing "
                         f"{missing[:5]}, unexpected {extra[:5]}")
    for name, like in expected.items():
        if tensors[name].shape != like.shape:
            raise ValueError(f"{file}: tensor {name!r} has shape {tensors[name].shape}, expected "
                             f"{like.shape} (hidden_size {model.config.hidden_size}, "
                             f"num_labels {model.config.num_labels})")
        check_tensor(f"{file}: tensor {name!r}", tensors[name])
    return traverse_util.unflatten_dict(
        {k: jnp.asarray(v, expected[k].dtype) for k, v in tensors.items()}, sep=".")


def load_chunk_model(path: str | os.PathLike, **config_overrides
                     ) -> tuple[HierarchicalClassifier, dict]:
    """See HierarchicalClassifier.from_pretrained."""
    from flaxbert.convert import from_pretrained
    settings = read_chunk_config(path)
    encoder, encoder_params = from_pretrained(path, task="base", **config_overrides)
    model = HierarchicalClassifier(encoder.config, **settings)
    return model, {"encoder": encoder_params, "head": load_chunk_head(path, model)}
