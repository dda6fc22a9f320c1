"""One registry: model names -> configs, config classes -> families.

A family registers its config class, its task models and its transformers naming; each size is a
name -> config entry. A name only selects a config; no code branches on it.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from flaxbert.layers.config import EncoderConfig


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    config_cls: type[EncoderConfig]
    task_models: dict[str, type]  # task name -> module class
    hf: Any  # flaxbert.convert.spec.HFSpec

    def model(self, task: str, config: EncoderConfig):
        if task not in self.task_models:
            raise ValueError(f"{self.name} has no task {task!r}; it has {sorted(self.task_models)}")
        return self.task_models[task](config)


FAMILIES: dict[str, Family] = {}
CONFIGS: dict[str, EncoderConfig] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def register(name: str, config: EncoderConfig) -> None:
    if name in CONFIGS:
        raise ValueError(f"model name {name!r} is registered twice")
    CONFIGS[name] = config


def list_models() -> list[str]:
    return sorted(CONFIGS)


def get_config(name: str, **overrides) -> EncoderConfig:
    """The registered config for `name`, with any fields replaced."""
    if name not in CONFIGS:
        close = difflib.get_close_matches(name, CONFIGS, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model name {name!r}.{hint} Known: {', '.join(list_models())}")
    return CONFIGS[name].replace(**overrides) if overrides else CONFIGS[name]


def family_of(config: EncoderConfig) -> Family:
    for family in FAMILIES.values():
        if type(config) is family.config_cls:
            return family
    raise TypeError(f"{type(config).__name__} belongs to no registered family "
                    f"({', '.join(f.config_cls.__name__ for f in FAMILIES.values())})")


def family_by_name(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def create_model(name_or_config: str | EncoderConfig, task: str = "base", **overrides):
    """A task model for a registered name (or a config), e.g. create_model('bert-tiny', 'masked-lm')."""
    config = (get_config(name_or_config, **overrides) if isinstance(name_or_config, str)
              else name_or_config.replace(**overrides))
    return family_of(config).model(task, config)
