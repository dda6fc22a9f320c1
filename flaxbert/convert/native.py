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
from flaxbert.io import atomic_directory, copy_files, read_json
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


def _saved_model(meta_file: Path) -> nn.Module:
    """The model flaxbert.json describes; a bad field raises one error naming the file."""
    meta = read_json(meta_file)
    try:
        for key, kind in (("family", str), ("task", str), ("config", dict)):
            if not isinstance(meta.get(key), kind):
                raise ValueError(f"{key!r} must be a JSON {'object' if kind is dict else 'string'}"
                                 f", got {meta.get(key)!r:.80}")
        family = registry.family_by_name(meta["family"])
        # JSON keeps tuples (id2label, lora_targets) as lists.
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
        # replace() names unknown fields; the defaults it starts from are always valid.
        return family.model(meta["task"], family.config_cls().replace(**fields))
    except ValueError as e:
        raise ValueError(f"{meta_file}: {e}") from None


def load_native(path: str | os.PathLike, task: str | None = None, *,
                allow_nonfinite: bool = False, rng: int | jax.Array = 0,
                **config_overrides):
    """(model, params) from a flaxbert directory. See `flaxbert.from_pretrained`."""
    directory = Path(path).absolute()
    saved = _saved_model(directory / META)
    params = ocp.StandardCheckpointer().restore(
        directory / "params", jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), abstract_params(saved)))
    check_params(saved, params, allow_nonfinite, source=str(directory))
    if (task is None or task == saved.task) and not config_overrides:
        return saved, params
    # Another head or other settings: the same rules as loading a transformers checkpoint (the
    # tensors were checked above, once).
    model = registry.family_of(saved.config).model(task or saved.task,
                                                   saved.config.replace(**config_overrides))
    tensors = InMemoryTensors(hf_state_dict(saved, params, allow_nonfinite=True))
    return model, params_from_tensors(model, tensors, saved.task, str(directory), rng,
                                      allow_nonfinite=True)
