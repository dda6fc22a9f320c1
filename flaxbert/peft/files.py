"""A PEFT model's own files (adapter / LoRA weights and the head, with the settings that made
them) and folding LoRA into a plain model that transformers loads.

A saved directory holds `peft_config.json` (family, task, the full config) and
`peft_model.safetensors`, whose keys are flax parameter paths of the unrolled model
("backbone/encoder/layers_0/attention/query_lora/a", "classifier/dense/kernel", ...): only the
leaves `trainable_mask` marks, so it is a few MB next to a base model of hundreds.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from flaxbert.convert.hf import abstract_params, check_params
from flaxbert.io import atomic_directory, read_json
from flaxbert.layers.config import FLAXBERT_FIELDS, PEFT_FIELDS
from flaxbert.layers.encoder import stack_layers, unstack_layers
from flaxbert.layers.peft import is_peft_path, lora_kernel_delta
from flaxbert.models import registry
from flaxbert.peft.freezing import trainable_mask

CONFIG_FILE, WEIGHTS_FILE = "peft_config.json", "peft_model.safetensors"
FORMAT = "flaxbert-peft/1"
# What the saved head needs of the config (everything else comes from the base checkpoint).
HEAD_FIELDS = ("num_labels", "id2label", "problem_type", "classifier_dropout", "pooling",
               "normalize_embeddings")


def _flat_unrolled(model: nn.Module, params) -> dict[str, np.ndarray]:
    params = nn.meta.unbox(params)
    if model.config.scan_layers:
        params = unstack_layers(params)
    return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def _restacked(model: nn.Module, flat: dict) -> dict:
    params = traverse_util.unflatten_dict(flat, sep="/")
    return stack_layers(params) if model.config.scan_layers else params


def save_peft(path: str | os.PathLike, model: nn.Module, params) -> Path:
    """Write the trainable leaves (LoRA / adapters + head) and the settings to `path`, a new
    directory (written aside and renamed into place; an existing one is refused)."""
    config = model.config
    if config.peft == "none":
        raise ValueError("save_peft: model.config.peft='none' has no adapter weights; use "
                         "flaxbert.save_pretrained for a plain model")
    flat = _flat_unrolled(model, params)
    mask = traverse_util.flatten_dict(trainable_mask(traverse_util.unflatten_dict(
        flat, sep="/"), config), sep="/")
    tensors = {k: np.ascontiguousarray(v) for k, v in flat.items() if mask[k]}
    settings = {"format": FORMAT, "family": registry.family_of(config).name, "task": model.task,
                "config": config.to_dict()}
    with atomic_directory(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        save_file(tensors, str(tmp / WEIGHTS_FILE))
    return Path(path)


def _read_settings(directory: Path) -> tuple[registry.Family, str, dict]:
    file = directory / CONFIG_FILE
    settings = read_json(file)
    try:
        if settings.get("format") != FORMAT:
            raise ValueError(f"format={settings.get('format')!r}, expected {FORMAT!r}")
        family = registry.family_by_name(settings.get("family"))
        fields = settings.get("config")
        if not isinstance(fields, dict) or not isinstance(settings.get("task"), str):
            raise ValueError("'task' must be a string and 'config' an object")
        for name in ("id2label", "lora_targets"):  # JSON has lists, the config tuples
            if isinstance(fields.get(name), list):
                fields[name] = tuple(fields[name])
        family.config_cls().replace(**fields)  # names any bad field
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    return family, settings["task"], fields


def load_peft(path: str | os.PathLike, base_dir: str | os.PathLike, **config_overrides):
    """(model, params): the base checkpoint in `base_dir` (any `flaxbert.from_pretrained`
    directory) with the adapter / LoRA weights and head saved in `path` by `save_peft`.
    `config_overrides` change run-time fields (dtype, scan_layers, ...)."""
    import flaxbert
    directory = Path(path)
    family, task, saved = _read_settings(directory)
    own = {**{k: saved[k] for k in PEFT_FIELDS + HEAD_FIELDS}, **config_overrides}
    base_model, base_params = flaxbert.from_pretrained(
        base_dir, task=task, **{k: v for k, v in own.items() if k not in PEFT_FIELDS})
    base_config = base_model.config
    if registry.family_of(base_config) is not family:
        raise ValueError(f"{base_dir} is a {registry.family_of(base_config).name} checkpoint, but "
                         f"{directory} was trained on {family.name}")
    for field in dataclasses.fields(base_config):  # the architecture must be the one trained on
        name, value = field.name, getattr(base_config, field.name)
        if name not in FLAXBERT_FIELDS and "dropout" not in name and saved.get(name) != value:
            raise ValueError(f"{base_dir} has {name}={value!r}, but the adapter in {directory} "
                             f"was trained on {name}={saved.get(name)!r}")
    model = base_model.clone(config=base_config.replace(**own))
    flat = _flat_unrolled(base_model, base_params)
    dtype = model.config.weights_dtype
    saved_tensors = {k: jnp.asarray(v, dtype)
                     for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
    unrolled = model.clone(config=model.config.replace(scan_layers=False))
    expected = traverse_util.flatten_dict(abstract_params(unrolled), sep="/")
    mask = traverse_util.flatten_dict(trainable_mask(traverse_util.unflatten_dict(
        expected, sep="/"), model.config), sep="/")
    unexpected = sorted(k for k in saved_tensors if not mask.get(k, False))
    missing = sorted(k for k in expected if is_peft_path(k.split("/")) and k not in saved_tensors)
    if unexpected or missing:
        raise ValueError(f"{directory / WEIGHTS_FILE} does not fit {type(model).__name__}: "
                         f"unexpected {unexpected[:5]}, missing {missing[:5]}")
    params = _restacked(model, {**flat, **saved_tensors})
    check_params(model, params, source=str(directory))
    return model, params


def merge_lora(model: nn.Module, params) -> tuple[nn.Module, dict]:
    """Fold every LoRA into its projection (W + (alpha / r) B A, computed in float32) and return
    the plain model (peft="none") and its params, which `flaxbert.save_pretrained` exports."""
    config = model.config
    if config.peft == "none":
        return model, params
    if config.peft != "lora":
        raise ValueError(f"merge_lora: peft={config.peft!r} adapters are not linear, so they "
                         "cannot be folded into the base weights; keep them with save_peft")

    def fold(node):
        if not isinstance(node, dict):
            return node
        out = {k: fold(v) for k, v in node.items() if not k.endswith("_lora")}
        for name, lora in node.items():
            if name.endswith("_lora"):
                base = name[:-len("_lora")]
                holder = out[base] if isinstance(out[base], dict) else None  # XLNet's bare `o`
                kernel = holder["kernel"] if holder is not None else out[base]
                merged = (jnp.asarray(kernel, jnp.float32)
                          + lora_kernel_delta(config, lora, kernel.shape)).astype(kernel.dtype)
                out[base] = {**holder, "kernel": merged} if holder is not None else merged
        return out

    tree = nn.meta.unbox(params)
    if config.scan_layers:
        tree = unstack_layers(tree)
    plain = model.clone(config=config.replace(peft="none"))
    merged = fold(tree)
    return plain, stack_layers(merged) if config.scan_layers else merged
