"""Label names <-> ids for a fine-tuning task, fixed once from the training data.

`label_map_for(train_examples)` sorts the training labels (numerically when they are all
integers, as a CSV column of 0/1/2 is), or takes them in the order of label names given
(a label file: `read_label_names`) or of the checkpoint's own id2label when its head already
knows them. The result, a `LabelMap`, encodes every later file's labels (a label the training
data never had is one clear error naming file, line and label) and gives the `num_labels` /
`id2label` the model config and the exported config.json carry. Float labels make a
regression task (num_labels=1), as transformers' run_glue decides from the column's dtype.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from flaxbert.io import read_text

log = logging.getLogger(__name__)
IGNORE_INDEX = -100  # transformers' ignored-label id: specials, padding, non-first sub-words
_INTEGER = re.compile(r"[+-]?\d+")
_DEFAULT_NAME = re.compile(r"LABEL_\d+")


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _sorted_labels(labels: Iterable[str]) -> tuple[str, ...]:
    unique = set(labels)
    if all(_INTEGER.fullmatch(x) for x in unique):
        return tuple(sorted(unique, key=int))
    return tuple(sorted(unique))


def is_regression(labels: Iterable[str]) -> bool:
    """True when every label is a number and one is not an integer ("3.8", "5.0"), as a
    dataframe reading the column would make it a float column."""
    labels = list(labels)
    return bool(labels) and all(_float(x) is not None for x in labels) and \
        not all(_INTEGER.fullmatch(x) for x in labels)


def is_default_names(names: Sequence[str] | None) -> bool:
    """transformers' placeholder names (LABEL_0, LABEL_1, ...): no real labels."""
    return not names or all(_DEFAULT_NAME.fullmatch(n) for n in names)


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """names: label names in id order (empty for regression)."""

    names: tuple[str, ...] = ()
    regression: bool = False

    def __post_init__(self):
        if self.regression and self.names:
            raise ValueError("a regression LabelMap has no label names")
        if not self.regression and len(self.names) < 1:
            raise ValueError("a classification LabelMap needs at least one label name")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"label names repeat: {list(self.names)}")

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names)) if self.names else {0: "LABEL_0"}

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    def config_fields(self) -> dict:
        """The model-config fields (num_labels, id2label) the exported config.json carries."""
        return {"num_labels": self.num_labels, "id2label": self.names or None}

    def encode(self, label: str, origin: str) -> int | float:
        """The id (float value for regression) of one label; `origin` ("file:line") names
        where it came from in the error for a label the training data did not have."""
        if self.regression:
            value = _float(label)
            if value is None or not math.isfinite(value):
                raise ValueError(f"{origin}: label {label!r} is not a finite number (the task "
                                 f"is regression)")
            return value
        try:
            return self._index[label]
        except KeyError:
            raise ValueError(f"{origin}: label {label!r} was not seen in training; known "
                             f"labels: {', '.join(self.names)}") from None

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.names[int(i)] for i in ids]

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def inside_ids(self) -> np.ndarray:
        """For each id, the id of its I- tag when it is a B- tag with an I- partner, else
        itself: the label run_ner gives continuation sub-words with label_all_tokens."""
        index = self._index
        return np.array([index.get("I-" + n[2:], i) if n.startswith("B-") else i
                         for i, n in enumerate(self.names)], np.int32)

    def check_num_labels(self, num_labels: int, what: str) -> None:
        """Refuse a checkpoint (or config) whose head has another number of labels."""
        if num_labels != self.num_labels:
            kind = "regression (1 output)" if self.regression else \
                f"{self.num_labels} labels ({', '.join(self.names)})"
            raise ValueError(f"{what} has num_labels={num_labels}, but the task has {kind}")


def example_labels(examples: Iterable[Mapping]) -> list[tuple[str, str]]:
    """(label, origin) of every example: its "label", or each of its "tags"."""
    out = []
    for example in examples:
        origin = example.get("origin", "?")
        if "tags" in example:
            out += [(tag, origin) for tag in example["tags"]]
        elif "label" in example:
            out.append((example["label"], origin))
    return out


def label_map_for(train_examples: Sequence[Mapping], *, names: Sequence[str] | None = None,
                  regression: bool | None = None,
                  checkpoint_names: Sequence[str] | None = None,
                  checkpoint: str = "the checkpoint",
                  replace_checkpoint_labels: bool = False) -> LabelMap:
    """The task's LabelMap, fixed from the training examples.

    names: label names in id order (a label file); every training label must be one of them.
    regression: None detects it (`is_regression`). checkpoint_names: the id2label of the
    checkpoint being fine-tuned, when its head has one (placeholder LABEL_i names count as
    none): its order is kept when it holds every training label; a head with another number
    of labels is refused unless replace_checkpoint_labels (the head is re-initialised then).
    """
    labelled = example_labels(train_examples)
    if not labelled:
        raise ValueError("the training examples have no labels")
    values = [label for label, _ in labelled]
    if regression is None:
        regression = names is None and is_regression(values)
    if regression:
        label_map = LabelMap(regression=True)
        for label, origin in labelled:
            label_map.encode(label, origin)
        return label_map
    checkpoint_names = None if is_default_names(checkpoint_names) or replace_checkpoint_labels \
        else tuple(checkpoint_names)
    found = _sorted_labels(values)
    if names is not None:
        label_map = LabelMap(tuple(names))
    elif checkpoint_names is not None and set(found) <= set(checkpoint_names):
        label_map = LabelMap(checkpoint_names)
    else:
        label_map = LabelMap(found)
    for label, origin in labelled:
        label_map.encode(label, origin)
    if checkpoint_names is not None and label_map.names != checkpoint_names:
        if len(checkpoint_names) != label_map.num_labels:
            label_map.check_num_labels(len(checkpoint_names), f"{checkpoint} (labels "
                                       f"{', '.join(checkpoint_names)})")
        log.warning("%s's labels (%s) differ from the task's (%s); the task's are used",
                    checkpoint, ", ".join(checkpoint_names), ", ".join(label_map.names))
    return label_map


def read_label_names(path) -> tuple[str, ...]:
    """Label names in id order from a file: one a line (.txt), a JSON list, or a JSON object
    with id2label (a config.json) or mapping "0".."N-1" to names."""
    import json
    path = Path(path)
    text = read_text(path)
    if path.suffix.lower() == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if isinstance(value, dict):
            value = value.get("id2label", value)
            keys = [str(i) for i in range(len(value))]
            if not isinstance(value, dict) or sorted(value) != sorted(keys):
                raise ValueError(f"{path}: expected id2label keys 0..{len(value) - 1}")
            value = [value[k] for k in keys]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path}: expected a list of label names")
        lines = list(enumerate(value, 1))
    else:
        lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no label names")
    seen = {}
    for number, name in lines:
        if name in seen:
            raise ValueError(f"{path}:{number}: label {name!r} repeats line {seen[name]}")
        seen[name] = number
    return tuple(seen)
