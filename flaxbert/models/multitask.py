"""Multi-task classification: one shared encoder of any family with one classification head per
task, each head the family's own sequence-classification head (BERT's pooled dense, RoBERTa's
two-layer head, XLNet's sequence summary, ...).

    model = multitask_classifier(config, (("sst2", 2), ("mnli", 3)))
    out = model.apply({"params": params}, input_ids, attention_mask, token_type_ids)
    out.logits["mnli"]                                       # (batch, 3); every head, every row

The model is the family's `<Family>ForSequenceClassification` with its one `classifier` replaced
by `heads/<task>`: parameters {"backbone": ..., "heads": {<task>: ...}}, all created with
logical axis names, so `single_task` cuts out a plain `<Family>ForSequenceClassification` (the
shared backbone + that task's head) that transformers loads as it is.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxbert.layers.config import EncoderConfig
from flaxbert.models import registry
from flaxbert.models.base import TaskModel
from flaxbert.models.outputs import Output


class TaskHeads(nn.Module):
    """One `head_cls(config, num_labels)` per task, named by the task."""

    config: EncoderConfig
    tasks: tuple[tuple[str, int], ...]
    head_cls: Any
    deterministic: bool = True

    @nn.compact
    def __call__(self, out: Output) -> dict:
        return {name: self.head_cls(self.config, num_labels, self.deterministic, name=name)(out)
                for name, num_labels in self.tasks}


class MultiTaskHeads(TaskModel):
    """Mixed in before a family's sequence-classification class: its backbone (and inputs,
    pooler choice, head class), with `heads` in place of its `classifier`."""

    tasks: tuple[tuple[str, int], ...] = ()
    task: ClassVar[str] = "multitask-classification"

    def head(self, backbone, out, attention_mask, deterministic):
        return dict(logits=TaskHeads(self.config, self.tasks, self.head_cls, deterministic,
                                     name="heads")(out))


_CLASSES: dict[type, type] = {}


def _multitask_class(single: type) -> type:
    if single not in _CLASSES:
        name = single.__name__.replace("ForSequenceClassification", "ForMultiTaskClassification")
        _CLASSES[single] = type(name, (MultiTaskHeads, single), {"__module__": __name__})
    return _CLASSES[single]


def check_tasks(tasks: Sequence[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    tasks = tuple((str(name), int(n)) for name, n in tasks)
    names = [name for name, _ in tasks]
    if not tasks:
        raise ValueError("a multi-task classifier needs at least one (name, num_labels) task")
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    bad = [(name, n) for name, n in tasks if not name.isidentifier() or n < 2]
    if bad:
        raise ValueError(f"tasks {bad}: names must be identifiers and num_labels >= 2 "
                         "(classification)")
    return tasks


def multitask_classifier(config: EncoderConfig, tasks: Sequence[tuple[str, int]]) -> nn.Module:
    """The shared-encoder model for `tasks` ((name, num_labels), ...) on `config`'s family."""
    single = registry.family_of(config).task_models["sequence-classification"]
    return _multitask_class(single)(config, tasks=check_tasks(tasks))


def single_task(model: nn.Module, params: dict, name: str, labels: Sequence[str]
                ) -> tuple[nn.Module, dict]:
    """(the family's sequence-classification model with `labels` as id2label, its params): the
    shared backbone and task `name`'s head."""
    if name not in params["heads"]:
        raise ValueError(f"no task {name!r}; the heads are {sorted(params['heads'])}")
    config = model.config.replace(num_labels=len(labels), id2label=tuple(labels))
    single = registry.family_of(config).task_models["sequence-classification"](config)
    return single, {"backbone": params["backbone"], "classifier": params["heads"][name]}


def with_backbone_params(model: nn.Module, backbone_params: dict, rng) -> dict:
    """The model's params with `backbone_params` (a checkpoint's, e.g. from
    flaxbert.from_pretrained(dir, task="base")["backbone"]) and freshly initialised heads;
    only the small heads are initialised, not the encoder again."""
    cfg = model.config
    wanted = jax.eval_shape(lambda key: model.init(key, **model.dummy_inputs()),
                            jax.random.key(0))["params"]["backbone"]
    missing = sorted(set(wanted) - set(backbone_params))
    if missing:
        raise ValueError(f"{type(model).__name__} needs backbone parameters {missing}, which "
                         "the checkpoint's encoder does not have")
    # RoBERTa's bare model has a pooler that its classifier never reads: left out.
    backbone_params = {k: backbone_params[k] for k in wanted}
    heads = TaskHeads(cfg, model.tasks, model.head_cls, parent=None)
    dtype = cfg.compute_dtype
    # What the heads read of the backbone's output, shaped like it (batch 1, two tokens).
    out = Output(last_hidden_state=jnp.zeros((1, 2, cfg.hidden_size), dtype),
                 pooler_output=jnp.zeros((1, cfg.hidden_size), dtype))
    head_params = jax.jit(lambda key: heads.init(key, out))(rng)["params"]
    return {"backbone": backbone_params, "heads": nn.meta.unbox(head_params)}
