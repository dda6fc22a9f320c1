"""Loading and saving: transformers checkpoint directories and flaxbert's own (Orbax) format."""
from __future__ import annotations

import os
from pathlib import Path

import flax.linen as nn

from flaxbert.convert.hf import load_hf, save_hf
from flaxbert.convert.native import is_native, load_native, save_native
from flaxbert.convert.positions import extend_position_embeddings  # noqa: F401
from flaxbert.hub import resolve


def from_pretrained(path: str | os.PathLike, task: str | None = None, *,
                    allow_nonfinite: bool = False, revision: str | None = None,
                    rng: int = 0, **config_overrides):
    """(model, params) from a checkpoint directory or a Hugging Face Hub id ("org/name").

    A hub id is fetched into the HF cache (at `revision`, default main), or with HF_HUB_OFFLINE=1
    read from it (flaxbert.hub.resolve); a local directory always wins. The directory
    is a transformers directory (config.json + model.safetensors, a sharded
    model.safetensors.index.json, or pytorch_model.bin, which needs torch) or a flaxbert directory
    (flaxbert.json + Orbax params). `task` picks the head ("masked-lm", "sequence-classification",
    ...; see flaxbert.TASKS); by default it follows config.json's `architectures` (a
    sentence-transformers layout gives "embedding"). Heads the checkpoint lacks are initialised
    fresh (from the seed `rng`), with a warning, when `task` differs from the saved one.
    `config_overrides` replace config
    fields, e.g. num_labels=3, dtype="bfloat16", attention_impl="cudnn", scan_layers=True.

    Every parameter tensor must be floating point and finite; a tensor holding NaN/inf is refused
    by name unless `allow_nonfinite=True` (to inspect a run that diverged, say). Index entries
    must stay inside `path`.
    """
    path = resolve(path, revision=revision)
    if is_native(path):
        return load_native(path, task, allow_nonfinite=allow_nonfinite, rng=rng,
                           **config_overrides)
    return load_hf(path, task, allow_nonfinite=allow_nonfinite, rng=rng, **config_overrides)


LABEL_TASKS = ("sequence-classification", "token-classification")  # heads sized by num_labels


def with_num_labels(model: nn.Module, params: dict, num_labels: int, task: str | None = None, *,
                    replace_head: bool = False, source: str = "", rng: int = 0):
    """(model, params) with a `task` head of `num_labels` outputs, as transformers'
    from_pretrained(..., num_labels=N) makes one: a head the params lack (a base or masked-LM
    checkpoint's) is initialised fresh from `rng`, with a warning naming its weights; label names
    become LABEL_0..N-1. `task` defaults to the model's own head when it has labels, else
    sequence-classification. A head of the same task with another number of labels is refused
    unless replace_head=True (transformers' ignore_mismatched_sizes=True): then only the
    mis-sized tensors are initialised afresh. `source` names the checkpoint in messages."""
    from flaxbert.convert.hf import (InMemoryTensors, hf_state_dict, model_leaves,
                                     params_from_tensors)
    from flaxbert.models import registry
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels={num_labels!r} must be an int >= 1")
    task = task or (model.task if model.task in LABEL_TASKS else "sequence-classification")
    if task not in LABEL_TASKS:
        raise ValueError(f"num_labels sizes the {' and '.join(LABEL_TASKS)} heads, not {task!r}")
    if task == model.task and model.config.num_labels == num_labels:
        return model, params
    family = registry.family_of(model.config)
    new = family.model(task, model.config.replace(num_labels=num_labels))
    tensors = InMemoryTensors(hf_state_dict(model, params, allow_nonfinite=True))
    saved_task = model.task
    if task == model.task:
        if not replace_head:
            raise ValueError(f"{source or 'the checkpoint'}: its {task} head has "
                             f"{model.config.num_labels} labels, not {num_labels}; replace it with "
                             f"a fresh {num_labels}-label head with replace_head=True (flaxbert "
                             "convert --ignore-mismatched-sizes)")
        base = family.hf.base_prefix + "."
        expected = {leaf.hf_key: leaf.hf_shape for leaf in model_leaves(new, base)}
        tensors = InMemoryTensors({k: v for k, v in tensors.items()
                                   if k not in expected or tensors.shape(k) == expected[k]})
        saved_task = "base"  # so the dropped tensors count as a head to initialise, not as missing
    return new, params_from_tensors(new, tensors, saved_task, source or "the checkpoint", rng,
                                    allow_nonfinite=True)


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
