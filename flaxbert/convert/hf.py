"""Two-way conversion between flaxbert parameters and transformers' PyTorch checkpoint directories.

The mapping is declared once per family (`HFSpec.rules`: flax module path -> transformers name);
everything else here is generic: layout changes are read off the parameter shapes
(a Dense kernel is `weight.T`, reshaped to the (heads, head_dim) split where the flax module has
one), so adding a family means writing its naming rules only. safetensors needs no torch;
`pytorch_model.bin` does and says so.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from flaxbert.hub import hub_blob_store
from flaxbert.io import atomic_directory, copy_files, read_json
from flaxbert.layers.config import DTYPES, FLAXBERT_FIELDS, EncoderConfig
from flaxbert.layers.peft import is_peft_path
from flaxbert.progress import progress
from flaxbert.layers.encoder import stack_layers, unstack_layers
from flaxbert.models import registry

log = logging.getLogger(__name__)

SAFE_WEIGHTS, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_WEIGHTS, TORCH_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_LEAF_NAMES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# ----------------------------------------------------------------------------- tensor files

class CheckpointTensors:
    """Read-on-demand view of a checkpoint directory's tensors as numpy arrays."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._where: dict[str, Path] = {}
        self._torch: dict[str, Any] | None = None
        if (directory / SAFE_INDEX).exists():
            self._index(directory / SAFE_INDEX)
        elif (directory / SAFE_WEIGHTS).exists():
            self._scan(directory / SAFE_WEIGHTS)
        elif (directory / TORCH_WEIGHTS).exists() or (directory / TORCH_INDEX).exists():
            self._load_torch(directory)
        else:
            raise FileNotFoundError(
                f"{directory} has no weights: looked for {SAFE_WEIGHTS}, {SAFE_INDEX}, "
                f"{TORCH_WEIGHTS} and {TORCH_INDEX}")

    def _weight_map(self, index_file: Path) -> dict[str, str]:
        """An index's tensor -> file map; every file must lie inside the checkpoint directory."""
        weight_map = read_json(index_file).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise ValueError(f"{index_file} needs a 'weight_map' object mapping tensor names to "
                             f"file names, got {type(weight_map).__name__}")
        # resolve() follows symlinks, so a link to a file elsewhere is refused as well, except
        # into the blob store of a HF cache snapshot, whose files are all such links.
        roots = [r for r in (self.directory.resolve(), hub_blob_store(self.directory)) if r]
        for key, name in weight_map.items():
            target = (self.directory / name).resolve()
            if not any(target.is_relative_to(root) for root in roots):
                raise ValueError(f"{index_file}: weight_map entry {key!r} -> {name!r} points "
                                 f"outside the checkpoint directory {self.directory}")
        return weight_map

    def _index(self, index_file: Path) -> None:
        weight_map = self._weight_map(index_file)
        for name in sorted(set(weight_map.values())):
            self._scan(self.directory / name, expected=[k for k, v in weight_map.items() if v == name])

    def _scan(self, file: Path, expected: list[str] | None = None) -> None:
        _need_file(file, "safetensors")
        try:
            with safe_open(file, "np") as f:
                keys = list(f.keys())
        except SafetensorError as e:
            raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt): "
                             f"{e}") from e
        missing = set(expected or ()) - set(keys)
        if missing:
            raise ValueError(f"{file} lacks tensors its index lists: {sorted(missing)[:5]}")
        self._where.update((k, file) for k in keys)

    def _load_torch(self, directory: Path) -> None:
        try:
            import torch
        except ImportError:
            raise ImportError(f"{directory} holds PyTorch .bin weights, which need torch to read "
                              "(pip install torch); safetensors checkpoints do not") from None
        files = ([directory / TORCH_WEIGHTS] if (directory / TORCH_WEIGHTS).exists() else
                 [directory / n for n in sorted(set(self._weight_map(directory / TORCH_INDEX)
                                                    .values()))])
        self._torch = {}
        for file in progress(files, desc="reading checkpoint", unit="file", enabled=len(files) > 1):
            _need_file(file, "PyTorch checkpoint")
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises several types for a bad file
                raise ValueError(f"{file} is not a readable PyTorch checkpoint: {e}") from e
            for key, t in state.items():
                t = t.detach().contiguous()
                if t.dtype == torch.bfloat16:
                    self._torch[key] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
                else:
                    self._torch[key] = t.numpy()

    @property
    def sharded(self) -> bool:
        """Whether the tensors are spread over several safetensors files."""
        return len(set(self._where.values())) > 1

    def keys(self) -> list[str]:
        return list(self._torch) if self._torch is not None else list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in (self._torch if self._torch is not None else self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._torch is not None:
            return tuple(self._torch[key].shape)
        with safe_open(self._where[key], "np") as f:
            return tuple(f.get_slice(key).get_shape())

    def __getitem__(self, key: str) -> np.ndarray:
        if self._torch is not None:
            return self._torch[key]
        try:
            with safe_open(self._where[key], "np") as f:
                return f.get_tensor(key)
        except SafetensorError as e:
            raise ValueError(f"cannot read {key!r} from {self._where[key]}: {e}") from e


def _need_file(file: Path, kind: str) -> None:
    if file.is_dir():
        raise IsADirectoryError(f"{file} is a directory, expected a {kind} file")
    if not file.exists():
        raise FileNotFoundError(f"{file} is listed in the index but does not exist")


def check_tensor(what: str, value, allow_nonfinite: bool = False) -> None:
    """Refuse a parameter tensor that is not floating point or holds NaN/inf; `what` names it."""
    dtype = np.dtype(value.dtype)
    if dtype.name not in FLOAT_DTYPES:
        raise ValueError(f"{what} has dtype {dtype.name}; parameters must be one of {FLOAT_DTYPES}")
    if allow_nonfinite:
        return
    # numpy: one pass, no compile per shape (jnp eagerly took 8 s for bert-base's params, numpy
    # 0.1 s); only an array spread over other hosts is counted where it lives.
    xp = jnp if isinstance(value, jax.Array) and not value.is_fully_addressable else np
    bad = int(np.size(value) - xp.count_nonzero(xp.isfinite(value if xp is jnp
                                                            else np.asarray(value))))
    if bad:
        raise ValueError(f"{what} holds {bad} non-finite values (NaN/inf)")


def parse_size(size: int | str) -> int:
    """'5GB' -> 5e9 bytes (transformers counts decimal units); an int is bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", size, re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {size!r}; use bytes or e.g. '500MB', '5GB'")
    unit = m.group(2).upper()
    scale = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * scale)


def write_safetensors(directory: Path, tensors: dict[str, np.ndarray], max_shard_size: int) -> None:
    """One model.safetensors, or numbered shards + index when larger than max_shard_size."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, value in tensors.items():
        if shards[-1] and size + value.nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = np.ascontiguousarray(value)
        size += value.nbytes
    if len(shards) == 1:
        save_file(shards[0], directory / SAFE_WEIGHTS, metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(progress(shards, desc="writing shards", unit="shard"), 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())},
             "weight_map": weight_map}
    (directory / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


# ----------------------------------------------------------------------------- configs

def read_hf_config(directory: Path) -> dict:
    file = directory / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"{directory} has no config.json; is it a transformers checkpoint?")
    return read_json(file)


def family_for_hf_config(hf_config: dict) -> registry.Family:
    model_type = hf_config.get("model_type")
    for family in registry.FAMILIES.values():
        if family.hf.model_type == model_type:
            return family
    known = sorted(f.hf.model_type for f in registry.FAMILIES.values())
    raise ValueError(f"model_type {model_type!r} (architectures {hf_config.get('architectures')})"
                     f" is not one flaxbert supports: {known}")


def _labels(id2label: Any) -> tuple[str, ...]:
    """config.json's id2label ({"0": name, ...}) as a tuple; keys must be exactly 0..N-1."""
    if not isinstance(id2label, dict) or not all(isinstance(v, str) for v in id2label.values()):
        raise ValueError(f"id2label must map ids to label names, got {id2label!r:.80}")
    wanted = [str(i) for i in range(len(id2label))]
    missing = [k for k in wanted if k not in id2label]
    if missing:
        raise ValueError(f"id2label keys must be 0..{len(id2label) - 1}; missing {missing[0]!r} "
                         f"(has {sorted(set(id2label) - set(wanted))[:3]})")
    return tuple(id2label[k] for k in wanted)


def config_from_hf(family: registry.Family, hf_config: dict, **overrides) -> EncoderConfig:
    """Our config for a config.json's fields; values are taken as they are (a "12" stays a string
    and is refused), never coerced."""
    for field, allowed in family.hf.config_requirements:
        if field in hf_config and hf_config[field] not in allowed:
            raise ValueError(f"{field}={hf_config[field]!r}; flaxbert's "
                             f"{family.name} supports {field} in {list(allowed)}")
    hf_config = {dict(family.hf.config_renames).get(k, k): v for k, v in hf_config.items()}
    fields = {f.name for f in dataclasses.fields(family.config_cls)} - set(FLAXBERT_FIELDS)
    # A null is transformers' "not set" only where its config allows one (Optional fields, the
    # pad id, the family's declared nulls); a null size or rate is an error, not a default.
    may_be_null = {f.name for f in dataclasses.fields(family.config_cls) if "None" in str(f.type)}
    may_be_null |= {"pad_token_id"} | {k for k, _ in family.hf.config_null_values}
    for k in sorted(fields - may_be_null):
        if k in hf_config and hf_config[k] is None:
            raise ValueError(f"{k} is null; it needs a value "
                             f"(the default would be {getattr(family.config_cls, k, '?')!r})")
    kwargs = {k: hf_config[k] for k in fields if k in hf_config and hf_config[k] is not None}
    if "id2label" in hf_config:
        kwargs["id2label"] = _labels(hf_config["id2label"])
        kwargs["num_labels"] = len(kwargs["id2label"])
    dtype = hf_config.get("dtype") or hf_config.get("torch_dtype")
    if isinstance(dtype, str) and dtype in DTYPES:
        kwargs["param_dtype"] = dtype
    nulls = {k: v for k, v in family.hf.config_null_values
             if k in hf_config and hf_config[k] is None}
    return family.config_cls(**kwargs).replace(**{**nulls, **overrides})


def config_to_hf(family: registry.Family, config: EncoderConfig, task: str) -> dict:
    out = {"architectures": [family.hf.architecture(task)], "model_type": family.hf.model_type}
    to_hf_name = {ours: theirs for theirs, ours in family.hf.config_renames}
    # None means "transformers' default" on our side; transformers reads a written null as None.
    out.update({to_hf_name.get(k, k): list(v) if isinstance(v, tuple) else v
                for k, v in config.to_dict().items()
                if k not in FLAXBERT_FIELDS and k not in family.hf.config_omit and v is not None})
    labels = config.id2label or tuple(f"LABEL_{i}" for i in range(config.num_labels))
    out["id2label"] = {str(i): label for i, label in enumerate(labels)}
    out["label2id"] = {label: i for i, label in enumerate(labels)}
    out["dtype"] = config.param_dtype
    out["tie_word_embeddings"] = True
    return out


# ----------------------------------------------------------------------------- the mapping

def _flatten(tree: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


class _Leaf:
    """One flax parameter and its transformers counterpart.

    A Dense kernel (in..., out...) is torch's (out, in) weight transposed, flattened where the
    flax side splits heads (`in_dims` input axes); a bias is flattened; a weight with a declared
    `permutation` (a conv kernel) is transposed by it; anything else is copied as is. A padded
    vocabulary axis (`vocab_axis`, EncoderConfig.vocab_pad_multiple) holds `vocab_size` rows in
    transformers: the padding rows are dropped on the way out and zeros on the way in.
    """

    def __init__(self, path, shape, hf_key, in_dims=0, permutation=None, vocab_axis=None,
                 vocab_size=0):
        self.path, self.hf_key, self.padded_shape = path, hf_key, tuple(shape)
        self.in_dims, self.permutation, self.vocab_axis = in_dims, permutation, vocab_axis
        self.shape = self.padded_shape  # the flax shape of the rows transformers holds
        if vocab_axis is not None:
            self.shape = shape[:vocab_axis] + (vocab_size,) + shape[vocab_axis + 1:]

    @property
    def hf_shape(self) -> tuple[int, ...]:
        if self.permutation:
            return tuple(self.shape[i] for i in self.permutation)
        if self.in_dims:
            return (math.prod(self.shape[self.in_dims:]), math.prod(self.shape[:self.in_dims]))
        if self.path[-1] == "bias":
            return (math.prod(self.shape),)
        return self.shape

    def to_flax(self, hf: np.ndarray) -> np.ndarray:
        if self.permutation:
            value = hf.transpose(np.argsort(self.permutation))
        else:
            value = hf.T.reshape(self.shape) if self.in_dims else hf.reshape(self.shape)
        if self.vocab_axis is None:
            return value
        padding = list(self.padded_shape)
        padding[self.vocab_axis] -= self.shape[self.vocab_axis]
        return np.concatenate([value, np.zeros(padding, value.dtype)], axis=self.vocab_axis)

    def to_hf(self, value: np.ndarray) -> np.ndarray:
        if self.vocab_axis is not None:
            value = value[(slice(None),) * self.vocab_axis + (slice(0, self.shape[self.vocab_axis]),)]
        if self.permutation:
            return value.transpose(self.permutation)
        if self.in_dims:
            return value.reshape(self.hf_shape[::-1]).T
        return value.reshape(self.hf_shape)


def _leaves(family: registry.Family, abstract_params: dict, base: str,
            config: EncoderConfig | None = None,
            vocab_axes: dict[tuple[str, ...], int] | None = None) -> list[_Leaf]:
    """Map every (unrolled) flax parameter to its transformers key; `vocab_axes` (from
    `padded_vocab_axes`) names the parameters whose vocabulary rows are padded."""
    vocab_axes = vocab_axes or {}
    flat = dict(_flatten(abstract_params))
    leaves = []
    for path, value in flat.items():
        if is_peft_path(path):  # LoRA / adapter weights: no transformers name (flaxbert.peft)
            continue
        if path[-1] not in _LEAF_NAMES:
            # A bare tensor (XLNet's r_w_bias, mask_emb, ...): a rule names the whole path.
            leaves.append(_Leaf(path, value.shape,
                                family.hf.module_name("/".join(path), base, config)))
            continue
        module = (family.hf.module_name("/".join(path[:-1]), base, config)
                  if len(path) > 1 else "")
        hf_key = f"{module}.{_LEAF_NAMES[path[-1]]}" if module else _LEAF_NAMES[path[-1]]
        permutation = family.hf.layout("/".join(path))
        in_dims = 0
        if path[-1] == "kernel" and permutation is None:
            bias = flat.get(path[:-1] + ("bias",))
            in_dims = value.ndim - (bias.ndim if bias is not None else 1)
        leaves.append(_Leaf(path, value.shape, hf_key, in_dims, permutation,
                            vocab_axes.get(path), config.vocab_size if config else 0))
    return leaves


def padded_vocab_axes(model: nn.Module) -> dict[tuple[str, ...], int]:
    """Parameter path -> its `vocab` axis, for the parameters whose vocabulary is padded beyond
    vocab_size (EncoderConfig.vocab_pad_multiple); found by the logical axis names."""
    cfg = model.config
    if cfg.padded_vocab_size == cfg.vocab_size:
        return {}
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))
    axes = {}
    for path, leaf in _flatten(boxed["params"]):
        names = tuple(getattr(leaf, "names", ()))
        if "vocab" in names and np.shape(leaf.value)[names.index("vocab")] == cfg.padded_vocab_size:
            axes[path] = names.index("vocab")
    return axes


def model_leaves(model: nn.Module, base: str) -> list[_Leaf]:
    """`_leaves` of `model`'s unrolled parameters, padded vocabulary included."""
    unrolled = _unrolled(model)
    return _leaves(registry.family_of(model.config), abstract_params(unrolled), base,
                   model.config, padded_vocab_axes(unrolled))


def abstract_params(model: nn.Module) -> dict:
    """Unboxed parameter shapes of `model` (nothing is allocated)."""
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))
    return nn.meta.unbox(variables)["params"]


def _unrolled(model: nn.Module) -> nn.Module:
    return model.clone(config=model.config.replace(scan_layers=False, remat_policy="none"))


def _same_architecture(family, task_a: str, task_b: str) -> bool:
    return family.hf.architecture(task_a) == family.hf.architecture(task_b)


# ----------------------------------------------------------------------------- HF -> flax

def _sentence_transformers_settings(directory: Path) -> dict | None:
    """pooling / normalize_embeddings from a sentence-transformers layout, if there is one."""
    modules_file = directory / "modules.json"
    if not modules_file.exists():
        return None
    modules = read_json(modules_file, expect=list)
    settings: dict[str, Any] = {"normalize_embeddings": False}
    for module in modules:
        if not isinstance(module, dict) or not isinstance(module.get("type", ""), str):
            raise ValueError(f"{modules_file}: each module must be an object with a 'type', "
                             f"got {module!r:.80}")
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind == "Pooling":
            pooling = read_json(directory / str(module.get("path", "")) / "config.json")
            modes = [m for m, key in (("mean", "pooling_mode_mean_tokens"),
                                      ("cls", "pooling_mode_cls_token"),
                                      ("max", "pooling_mode_max_tokens")) if pooling.get(key)]
            if len(modes) != 1:
                raise ValueError(f"{directory}: sentence-transformers pooling {pooling} is not one "
                                 "of mean / cls / max, which is what flaxbert supports")
            settings["pooling"] = modes[0]
        elif kind == "Normalize":
            settings["normalize_embeddings"] = True
    return settings


def load_hf(path: str | os.PathLike, task: str | None = None, *, rng: int | jax.Array = 0,
            allow_nonfinite: bool = False, **config_overrides):
    """(model, params) from a transformers checkpoint directory. See `flaxbert.from_pretrained`."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory (nor a Hugging Face Hub id "
                                "'org/name', so nothing is downloaded)")
    hf_config = read_hf_config(directory)
    try:  # a bad value in the file is reported with the file; a bad override is not the file's
        family = family_for_hf_config(hf_config)
        architectures = hf_config.get("architectures") or [family.hf.architecture("base")]
        if not isinstance(architectures, list) or not isinstance(architectures[0], str):
            raise ValueError(f"architectures must be a list of class names, got {architectures!r}")
        saved_task = family.hf.task_of(architectures[0])
        if saved_task is None:
            raise ValueError(f"architecture {architectures[0]!r} is not one flaxbert's "
                             f"{family.name} provides")
        config = config_from_hf(family, hf_config)
    except ValueError as e:
        raise ValueError(f"{directory / 'config.json'}: {e}") from None
    st_settings = _sentence_transformers_settings(directory)
    if saved_task == "base" and st_settings is not None:
        saved_task = "embedding"
    task = task or saved_task
    if task == "embedding" and st_settings:
        config_overrides = {**st_settings, **config_overrides}
    model = family.model(task, config.replace(**config_overrides) if config_overrides else config)
    return model, params_from_tensors(model, CheckpointTensors(directory), saved_task,
                                      str(directory), rng, allow_nonfinite)


class InMemoryTensors(dict):
    """A dict of numpy arrays with CheckpointTensors' interface."""

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(np.shape(self[key]))


def params_from_tensors(model: nn.Module, tensors, saved_task: str, source: str,
                        rng: int | jax.Array = 0, allow_nonfinite: bool = False) -> dict:
    """Build `model`'s params from transformers-named tensors saved by a `saved_task` model.

    Rules: every tensor used must be floating point and finite (unless allow_nonfinite). The
    backbone must be complete. With the saved head, every tensor must be used and none
    may be missing. With another head, tensors of other heads are dropped (logged) and the new
    head (and a pooler the checkpoint lacks) is initialised from `rng` (warned).
    """
    family, config, task = registry.family_of(model.config), model.config, model.task
    prefix = family.hf.base_prefix + "."
    base = prefix if any(k.startswith(prefix) for k in tensors.keys()) else ""
    flat, missing, used = {}, [], set()
    leaves = progress(model_leaves(model, base),
                      desc="reading checkpoint", unit="tensor",
                      enabled=getattr(tensors, "sharded", False))  # large models are sharded
    for leaf in leaves:
        if leaf.hf_key not in tensors:
            missing.append(leaf)
            continue
        got = tensors.shape(leaf.hf_key)
        if got != leaf.hf_shape:
            raise ValueError(f"tensor {leaf.hf_key!r} in {source} has shape {got}, "
                             f"but {family.name} config expects {leaf.hf_shape}")
        tensor = tensors[leaf.hf_key]
        check_tensor(f"tensor {leaf.hf_key!r} in {source}", tensor, allow_nonfinite)
        flat[leaf.path] = jnp.asarray(leaf.to_flax(tensor), config.weights_dtype)
        used.add(leaf.hf_key)

    def listing(keys):
        return f"{keys[:10]}" + (f" (and {len(keys) - 10} more)" if len(keys) > 10 else "")

    same_head = _same_architecture(family, task, saved_task)
    backbone_missing = [l for l in missing if l.path[0] == "backbone" and l.path[1] != "pooler"]
    if backbone_missing or (missing and same_head):
        raise ValueError(f"{source} is missing tensors the model needs: "
                         f"{listing([l.hf_key for l in missing])}")
    unused = [k for k in tensors.keys() if k not in used and not family.hf.is_ignored(k)]
    head_like = tuple(family.hf.head_prefixes) + (base + "pooler.",)
    unexpected = [k for k in unused if same_head or not k.startswith(head_like)]
    if unexpected:
        raise ValueError(f"{source} has tensors that {family.hf.architecture(task)} does not "
                         f"use: {listing(unexpected)}")
    if unused:
        log.info("not used by the %s head (saved by a %s model): %s", task, saved_task, unused)
    # LoRA / adapter weights are never in a checkpoint: initialised like a new head (as the
    # identity, so the model computes what the checkpoint does until they train).
    peft_paths = [p for p, _ in _flatten(abstract_params(_unrolled(model))) if is_peft_path(p)]
    if missing or peft_paths:
        if missing:
            log.warning("newly initialised (not in the checkpoint; train them): %s",
                        [l.hf_key for l in missing])
        key = jax.random.key(rng) if isinstance(rng, int) else rng
        unrolled = _unrolled(model)
        fresh = jax.jit(lambda k: unrolled.init(k, **unrolled.dummy_inputs()))(key)
        fresh_flat = dict(_flatten(nn.meta.unbox(fresh)["params"]))
        for path in [l.path for l in missing] + peft_paths:
            flat[path] = fresh_flat[path]
    params = _unflatten(flat)
    return stack_layers(params) if config.scan_layers else params


# ----------------------------------------------------------------------------- flax -> HF

def check_params(model: nn.Module, params: dict, allow_nonfinite: bool = False,
                 source: str = "") -> None:
    """Raise if `params` does not have exactly the parameters, shapes and dtype (the config's
    param_dtype) `model` needs, or (unless allow_nonfinite) holds NaN/inf."""
    expected = dict(_flatten(abstract_params(model)))
    got = dict(_flatten(nn.meta.unbox(params)))
    missing = sorted("/".join(p) for p in expected.keys() - got.keys())
    extra = sorted("/".join(p) for p in got.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"params do not match {type(model).__name__}: missing {missing[:10]}, "
                         f"unexpected {extra[:10]}")
    want = np.dtype(model.config.weights_dtype)
    for path, value in got.items():
        what = f"parameter {'/'.join(path)}" + (f" in {source}" if source else "")
        if tuple(np.shape(value)) != tuple(expected[path].shape):
            raise ValueError(f"{what} has shape {np.shape(value)}, "
                             f"expected {expected[path].shape}")
        if np.dtype(value.dtype) != want:
            raise ValueError(f"{what} has dtype {np.dtype(value.dtype).name}, but the config's "
                             f"param_dtype is {want.name}")
        check_tensor(what, value, allow_nonfinite)


def hf_state_dict(model: nn.Module, params: dict,
                  allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """transformers' tensor names -> numpy arrays for these params (checked by check_params)."""
    family = registry.family_of(model.config)
    if getattr(model.config, "peft", "none") != "none":
        raise ValueError(f"peft={model.config.peft!r}: transformers has no place for adapter "
                         "weights; export flaxbert.peft.merge_lora(model, params) (LoRA) or keep "
                         "them with flaxbert.peft.save_peft")
    check_params(model, params, allow_nonfinite)
    params = nn.meta.unbox(params)
    if model.config.scan_layers:
        params = unstack_layers(params)
    arch = family.hf.architecture(model.task)
    base = "" if arch == family.hf.class_prefix + "Model" else family.hf.base_prefix + "."
    flat = dict(_flatten(params))
    out = {}
    for leaf in model_leaves(model, base):
        out[leaf.hf_key] = leaf.to_hf(np.asarray(jax.device_get(flat[leaf.path])))
    return out


def _write_sentence_transformers(directory: Path, config: EncoderConfig) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if config.normalize_embeddings:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (directory / "2_Normalize").mkdir()
    (directory / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (directory / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": config.hidden_size,
               "pooling_mode_cls_token": config.pooling == "cls",
               "pooling_mode_mean_tokens": config.pooling == "mean",
               "pooling_mode_max_tokens": config.pooling == "max",
               "pooling_mode_mean_sqrt_len_tokens": False}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")


def save_hf(path: str | os.PathLike, model: nn.Module, params: dict, *, overwrite: bool = False,
            max_shard_size: int | str = "50GB", extra_files=()) -> Path:
    """Write a transformers checkpoint directory (atomically). See `flaxbert.save_pretrained`."""
    family = registry.family_of(model.config)
    tensors = hf_state_dict(model, params)
    with atomic_directory(path, overwrite) as tmp:
        config = config_to_hf(family, model.config, model.task)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        write_safetensors(tmp, tensors, parse_size(max_shard_size))
        if model.task == "embedding":
            _write_sentence_transformers(tmp, model.config)
        copy_files(extra_files, tmp)
    return Path(path)
