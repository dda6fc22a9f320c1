"""flaxbert's own checkpoint directory: `flaxbert.json` (family, task, config) + Orbax `params/`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from flaxbert.convert.hf import (InMemoryTensors, abstract_params, check_params, hf_state_dict,
                                 params_from_tensors)
from flaxbert.io import atomic_directory, copy_files
from flaxbert.models import registry

META = "flaxbert.json"


def is_native(path: str | os.PathLike) -> bool:
    return (Path(path) / META).exists()


def save_native(path: str | os.PathLike, model: nn.Module, params: dict, *,
                overwrite: bool = False, extra_files=()) -> Path:
    check_params(model, params)
    family = registry.family_of(model.config)
    with atomic_directory(path, overwrite) as tmp:
        meta = {"family": family.name, "task": model.task, "config": model.config.to_dict()}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "params", nn.meta.unbox(params))
        checkpointer.wait_until_finished()
        copy_files(extra_files, tmp)
    return Path(path)


def load_native(path: str | os.PathLike, task: str | None = None, **config_overrides):
    directory = Path(path).absolute()
    meta = json.loads((directory / META).read_text())
    family = registry.family_by_name(meta["family"])
    fields = dict(meta["config"])
    if fields.get("id2label") is not None:
        fields["id2label"] = tuple(fields["id2label"])
    saved = family.model(meta["task"], family.config_cls(**fields))
    params = ocp.StandardCheckpointer().restore(
        directory / "params", jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), abstract_params(saved)))
    if (task is None or task == meta["task"]) and not config_overrides:
        return saved, params
    # Another head or other settings: the same rules as loading a transformers checkpoint.
    model = family.model(task or meta["task"], saved.config.replace(**config_overrides))
    tensors = InMemoryTensors(hf_state_dict(saved, params))
    return model, params_from_tensors(model, tensors, meta["task"], str(directory))
