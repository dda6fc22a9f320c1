"""The GLUE tasks: which columns hold the text, the label names, how many outputs the head has
and the metrics the GLUE leaderboard reports, under the names HF `datasets` ("glue") and
tensorflow-datasets ("glue/<task>") use for the columns and splits, and the metric names of
transformers' run_glue.py."""
from __future__ import annotations

import dataclasses
import difflib

import numpy as np

from flaxbert.tasks import metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class GlueTask:
    name: str
    text_columns: tuple[str, ...]  # one sentence, or the pair in the order the model reads it
    label_names: tuple[str, ...]  # in label-id order; empty for regression
    metrics: tuple[str, ...]  # names from flaxbert.tasks.metrics.METRICS
    evaluation_splits: tuple[str, ...] = ("validation",)
    label_column: str = "label"

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}


_NLI = ("entailment", "neutral", "contradiction")
_BINARY_NLI = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueTask] = {task.name: task for task in (
    GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",)),
    GlueTask("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
    GlueTask("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
             ("accuracy", "f1")),
    GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
             ("accuracy", "f1")),
    GlueTask("stsb", ("sentence1", "sentence2"), (), ("pearson", "spearmanr")),
    GlueTask("mnli", ("premise", "hypothesis"), _NLI, ("accuracy",),
             evaluation_splits=("validation_matched", "validation_mismatched")),
    GlueTask("qnli", ("question", "sentence"), _BINARY_NLI, ("accuracy",)),
    GlueTask("rte", ("sentence1", "sentence2"), _BINARY_NLI, ("accuracy",)),
    # WNLI's ids are the other way round from RTE's and QNLI's.
    GlueTask("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",)),
    # The diagnostic set: test split only (labels hidden), scored with an MNLI model.
    GlueTask("ax", ("premise", "hypothesis"), _NLI, ("matthews_correlation",),
             evaluation_splits=("test",)),
)}


def glue_task(name: str) -> GlueTask:
    """The task called `name` ("SST-2", "sts_b" and "sst2" are the same task)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    close = difflib.get_close_matches(key, GLUE_TASKS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(GLUE_TASKS)}"
    raise ValueError(f"unknown GLUE task {name!r}{hint}")


def compute_metrics(task: str | GlueTask, predictions, labels) -> dict[str, float]:
    """The task's GLUE metrics, plus their mean as `combined_score` when there are several (as
    run_glue.py reports). `predictions` are class ids or logits (examples, num_labels); for STS-B
    scores of shape (examples,) or (examples, 1)."""
    task = task if isinstance(task, GlueTask) else glue_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if task.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.ndim != 1:
            raise ValueError(f"{task.name} is a regression: expected one score per example, got "
                             f"predictions of shape {predictions.shape}")
    else:
        if predictions.ndim == labels.ndim + 1:
            predictions = predictions.argmax(-1)
        outside = labels[(labels < 0) | (labels >= task.num_labels)]
        if len(outside):  # e.g. -1, the hidden labels of GLUE's test splits
            raise ValueError(f"{task.name} labels must be 0..{task.num_labels - 1} "
                             f"({', '.join(task.label_names)}), found {outside[0]}")
    results = metrics_lib.compute_named_metrics(task.metrics, predictions, labels)
    if len(results) > 1:
        results["combined_score"] = float(np.mean(list(results.values())))
    return results
