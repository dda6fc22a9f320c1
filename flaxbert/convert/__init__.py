"""Loading and saving: transformers checkpoint directories and flaxbert's own (Orbax) format."""
from __future__ import annotations

import os
from pathlib import Path

import flax.linen as nn

from flaxbert.convert.hf import load_hf, save_hf
from flaxbert.convert.native import is_native, load_native, save_native
from flaxbert.convert.positions import extend_position_embeddings  # noqa: F401


def from_pretrained(path: str | os.PathLike, task: str | None = None, *,
                    allow_nonfinite: bool = False, **config_overrides):
    """(model, params) from a local checkpoint directory.

    `path` is a transformers directory (config.json + model.safetensors, a sharded
    model.safetensors.index.json, or pytorch_model.bin, which needs torch) or a flaxbert directory
    (flaxbert.json + Orbax params). `task` picks the head ("masked-lm", "sequence-classification",
    ...; see flaxbert.TASKS); by default it follows config.json's `architectures` (a
    sentence-transformers layout gives "embedding"). Heads the checkpoint lacks are initialised
    fresh, with a warning, when `task` differs from the saved one. `config_overrides` replace config
    fields, e.g. num_labels=3, dtype="bfloat16", attention_impl="cudnn", scan_layers=True.

    Every parameter tensor must be floating point and finite; a tensor holding NaN/inf is refused
    by name unless `allow_nonfinite=True` (to inspect a run that diverged, say). Index entries
    must stay inside `path`.
    """
    if is_native(path):
        return load_native(path, task, allow_nonfinite=allow_nonfinite, **config_overrides)
    return load_hf(path, task, allow_nonfinite=allow_nonfinite, **config_overrides)


def save_pretrained(path: str | os.PathLike, model: nn.Module, params: dict, *,
                    format: str = "hf", overwrite: bool = False,
                    max_shard_size: int | str = "50GB", extra_files=()) -> Path:
    """Write `params` as a transformers directory (format="hf") or flaxbert's own (format="flax").

    The hf directory loads with transformers' AutoModelFor<Task>.from_pretrained with no missing or
    unexpected keys; checkpoints larger than `max_shard_size` are sharded as transformers shards
    them. `extra_files` (tokenizer files, say) are copied in. Everything is written to a temporary
    directory and renamed into place; an existing `path` is refused unless overwrite=True. Every
    parameter must have the config's param_dtype and be finite; one that is not is refused by name
    before anything is written.
    """
    if format == "hf":
        return save_hf(path, model, params, overwrite=overwrite, max_shard_size=max_shard_size,
                       extra_files=extra_files)
    if format == "flax":
        return save_native(path, model, params, overwrite=overwrite, extra_files=extra_files)
    raise ValueError(f"unknown format {format!r}; use 'hf' or 'flax'")
