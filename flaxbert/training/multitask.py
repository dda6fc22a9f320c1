"""Multi-task fine-tuning as a Trainer data source: several classification tasks, one shared
encoder with one head each (flaxbert.models.multitask), each training batch drawn from one task.

    flaxbert finetune --config configs/finetune_multitask.py --workdir runs/glue_mt \
        --config.model=checkpoints/bert-base-uncased \
        --config.multitask.tasks.sst2.train=glue/SST-2/train.tsv \
        --config.multitask.tasks.sst2.validation=glue/SST-2/dev.tsv ...

`data.train` names the tasks that train, comma-separated (their order is their task_id); each is
a block `multitask.tasks.<name>` (`task_block()`: glue, train, validation, columns). Every task
is read, labelled and encoded by its own `TaskData` (its files, label map and GLUE metrics);
the shared options (task.max_seq_length, buckets, overflow) hold for all of them.

Sampling: task i is drawn with probability p_i ∝ n_i ("proportional") or p_i ∝ n_i^(1/T)
("temperature", multitask.temperature = T: T=1 is proportional, a large T near uniform), n_i
its training examples. The task of step s is a function of (data.seed, s) alone and each task
keeps its own shuffled stream, so a checkpoint's data state (the next step and every task's
position) resumes the same batches bit for bit. Batches carry `task_id` (batch,), the same
in every row; the one jitted step scores that task's head only.

Evaluation is a pass per task (and per validation file of it): `eval_<name>_loss`,
`eval_<name>_accuracy` and the task's own metrics (GLUE's for a GLUE task). The export is one
transformers directory per task, <dir>/<name>: the shared encoder and that task's head as
`<Family>ForSequenceClassification`, with its id2label.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import ml_collections
import numpy as np

from flaxbert.models import registry
from flaxbert.training.sources import TaskData, _config_from_dict, _overrides

log = logging.getLogger(__name__)

SAMPLING = ("proportional", "temperature")
BLOCK_FIELDS = ("glue", "train", "validation", "text_column", "text_pair_column", "label_column")


def task_block(**fields) -> ml_collections.ConfigDict:
    """A `multitask.tasks.<name>` block: every field present, so the command line can set any."""
    unknown = sorted(set(fields) - set(BLOCK_FIELDS))
    if unknown:
        raise ValueError(f"task_block: unknown field(s) {unknown}; fields are {BLOCK_FIELDS}")
    return ml_collections.ConfigDict({k: str(fields.get(k, "")) for k in BLOCK_FIELDS})


# ----------------------------------------------------------------------------- sampling

def task_probabilities(sizes: Sequence[int], sampling: str = "proportional",
                       temperature: float = 1.0) -> np.ndarray:
    """p_i ∝ n_i ("proportional") or n_i^(1/temperature) ("temperature")."""
    if sampling not in SAMPLING:
        raise ValueError(f"multitask.sampling={sampling!r}; choose one of {SAMPLING}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature > 0):
        raise ValueError(f"multitask.temperature={temperature!r} must be a finite number > 0")
    sizes = np.asarray(sizes, np.float64)
    if not len(sizes) or (sizes <= 0).any():
        raise ValueError(f"task sizes {sizes.tolist()} must be positive")
    power = 1.0 if sampling == "proportional" else 1.0 / temperature
    # In logs: n^(1/T) overflows float64 for a large task and a small T.
    scores = power * np.log(sizes)
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


class TaskSampler:
    """The task of each step, drawn from `probabilities` by a generator seeded with
    (seed, step): any step's task is known without replaying the ones before it."""

    def __init__(self, probabilities: Sequence[float], seed: int):
        self.probabilities = np.asarray(probabilities, np.float64)
        self.cumulative = np.cumsum(self.probabilities)
        self.cumulative[-1] = 1.0  # rounding must not leave a draw past the last task
        self.seed = int(seed)

    def task_at(self, step: int) -> int:
        u = np.random.default_rng((self.seed, int(step))).random()
        return int(np.searchsorted(self.cumulative, u, side="right"))

    def tasks(self, start: int, stop: int) -> np.ndarray:
        return np.array([self.task_at(s) for s in range(start, stop)], np.int32)


class MultiTaskBatches(Iterator[dict]):
    """Each step's batch from the task the sampler picks, with `task_id`; `state()` is the
    next step and every task's TaskBatches position."""

    def __init__(self, streams: Sequence[Iterator[dict]], sampler: TaskSampler,
                 names: Sequence[str], next_batch: int = 0):
        self.streams, self.sampler, self.names = list(streams), sampler, list(names)
        self.next_batch = int(next_batch)

    def __next__(self) -> dict:
        task = self.sampler.task_at(self.next_batch)
        batch = next(self.streams[task])
        self.next_batch += 1
        return with_task_id(batch, task)

    def state(self) -> dict:
        return {"next_batch": self.next_batch, "sampler_seed": self.sampler.seed,
                "probabilities": self.sampler.probabilities.tolist(),
                "tasks": {name: s.state() for name, s in zip(self.names, self.streams)}}


def with_task_id(batch: Mapping, task: int) -> dict:
    rows = np.shape(batch["input_ids"])[0]
    return {**batch, "task_id": np.full((rows,), task, np.int32)}


def _tagged(batches, task: int):
    for batch in batches:
        yield with_task_id(batch, task)


# ----------------------------------------------------------------------------- the source

class _OneTask(TaskData):
    """One task of the mix: TaskData's reading, labels, features, batches and metrics; the
    model config is the shared one with this task's labels (the checkpoint is loaded once,
    by MultiTaskData)."""

    def __init__(self, config, shared_config, name: str):
        self._shared_config, self.name = shared_config, name
        super().__init__(config)

    def _checkpoint_names(self):
        return None  # the checkpoint's head is not any one task's

    def _model(self):
        if self.label_map.regression:
            raise ValueError(f"multitask.tasks.{self.name}: its labels are numbers "
                             "(regression); multitask_classification trains classification "
                             "heads only")
        return self._shared_config.replace(num_labels=self.label_map.num_labels,
                                           id2label=tuple(self.label_map.names)), None


class MultiTaskData:
    """See the module docstring. `description`: what an earlier run kept (restoring for an
    export reads nothing else)."""

    def __init__(self, config, description: dict | None = None):
        self.config = config
        self.seq_len = int(config.task.max_seq_length)
        if description is not None:
            self._description = description
            self.tokenizer_dir = description.get("tokenizer_dir", "")
            self.names = [t["name"] for t in description["tasks"]]
            self.label_names = [tuple(t["labels"]) for t in description["tasks"]]
            self._model_config = _config_from_dict(description["model"])
            self.tasks, self.initial_params = [], None
            return
        self._description = None
        self.names, blocks = self._check(config)
        self._model_config, checkpoint = self._shared_model()
        self.tasks = []
        for name, block in zip(self.names, blocks):
            try:
                self.tasks.append(_OneTask(self._task_config(config, block), self._model_config,
                                           name))
            except (ValueError, FileNotFoundError, KeyError) as e:
                message = str(e) if str(e).startswith("multitask.") else \
                    f"multitask.tasks.{name}: {e}"
                raise type(e)(message) from None
        self.tokenizer_dir = self.tasks[0].tokenizer_dir
        self.label_names = [tuple(t.label_names) for t in self.tasks]
        sizes = [len(t.train_features) for t in self.tasks]
        m = config.multitask
        self.probabilities = task_probabilities(sizes, m.sampling, float(m.temperature))
        log.info("multi-task sampling (%s): %s", m.sampling, ", ".join(
            f"{n} {s} examples p={p:.3f}" for n, s, p in zip(self.names, sizes,
                                                              self.probabilities)))
        epochs = config.train.get("num_epochs", 0)
        if epochs:  # epochs over all the tasks' training examples together
            config.train.num_steps = max(1, math.ceil(
                epochs * sum(sizes) / config.train.global_batch_size))
        self.initial_params = None if checkpoint is None else self._initial_params(checkpoint)

    # ---- the config -----------------------------------------------------------------------
    @staticmethod
    def _check(config):
        """(names, blocks) of data.train's tasks, or ValueError naming the field."""
        m = config.get("multitask")
        if m is None:
            raise ValueError("objective 'multitask_classification' needs a multitask block "
                             "(flaxbert.training.finetune.finetune_config has one)")
        task_probabilities([1], m.sampling, m.temperature)  # refuses bad sampling settings
        names = [n.strip() for n in str(config.data.train).split(",") if n.strip()]
        blocks = m.tasks.to_dict() if m.tasks else {}
        if not names:
            raise ValueError("data.train: name the tasks to train, comma-separated (blocks of "
                             f"multitask.tasks: {sorted(blocks) or 'none'})")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"data.train={config.data.train!r}: task(s) {repeated} named "
                             "more than once")
        missing = [n for n in names if n not in blocks]
        if missing:
            raise ValueError(f"data.train: task(s) {missing} have no multitask.tasks.<name> "
                             f"block (the blocks: {sorted(blocks) or 'none'})")
        if config.data.validation:
            raise ValueError("data.validation: a multi-task run reads each task's own "
                             "(multitask.tasks.<name>.validation); leave data.validation empty")
        t = config.task
        if t.get("long_inputs", "truncate") != "truncate" or t.pack or t.glue or t.regression:
            raise ValueError("task.long_inputs / pack / glue / regression do not apply to "
                             "multitask_classification: set the GLUE name per task "
                             "(multitask.tasks.<name>.glue), classification only")
        for name in names:
            block = blocks[name]
            where = f"multitask.tasks.{name}"
            if not name.isidentifier():
                raise ValueError(f"{where}: the name must be an identifier (it names the "
                                 "task's head, metrics and export directory)")
            unknown = sorted(set(block) - set(BLOCK_FIELDS))
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {unknown}; fields are "
                                 f"{BLOCK_FIELDS}")
            if block.get("glue"):
                from flaxbert.tasks.glue import glue_task
                try:
                    glue = glue_task(block["glue"])
                except ValueError as e:
                    raise ValueError(f"{where}.glue: {e}") from None
                if glue.is_regression:
                    raise ValueError(f"{where}.glue={block['glue']!r} is a regression task; "
                                     "multitask_classification trains classification heads")
            if not block.get("train"):
                raise ValueError(f"{where}.train: no training file given")
            for field in ("train", "validation"):
                for spec in (s.strip() for s in str(block.get(field, "")).split(",")):
                    if spec and not spec.startswith(("tfds:", "hf:")) and \
                            not Path(spec).exists():
                        raise FileNotFoundError(f"{where}.{field}: {spec} does not exist")
        return names, [blocks[n] for n in names]

    @staticmethod
    def _task_config(config, block: Mapping):
        """The single-task config TaskData reads for one block."""
        sub = copy.deepcopy(config)
        sub.objective = "classification"
        sub.data.train, sub.data.validation = block["train"], block.get("validation", "")
        sub.train.num_epochs = 0
        for field in ("glue", "text_column", "text_pair_column", "label_column"):
            sub.task[field] = block.get(field, "")
        return sub

    def _shared_model(self):
        """(the encoder's config, the checkpoint's backbone params or None for a registered
        name). Loaded as the bare encoder: a sequence-classification load would initialise a
        head only to discard it."""
        import flaxbert
        model = self.config.model
        if Path(model).is_dir():
            loaded, params = flaxbert.from_pretrained(model, task="base",
                                                      **_overrides(self.config))
            return loaded.config, params["backbone"]
        return registry.get_config(model, **_overrides(self.config)), None

    def _initial_params(self, backbone):
        import jax

        from flaxbert.models.multitask import multitask_classifier, with_backbone_params
        model = multitask_classifier(self._model_config, self._head_sizes())
        return with_backbone_params(model, backbone, jax.random.PRNGKey(self.config.train.seed))

    def _head_sizes(self):
        return tuple((n, len(labels)) for n, labels in zip(self.names, self.label_names))

    # ---- what the Trainer asks ------------------------------------------------------------
    model_config = TaskData.model_config  # the same check of max_seq_length

    def objective_settings(self, objective_cls) -> dict:
        settings = self.config.objective_settings.to_dict() if self.config.objective_settings \
            else {}
        settings["tasks"] = tuple(zip(self.names, self.label_names))
        return settings

    def check(self, objective) -> None:
        if objective.name != "multitask_classification":
            raise ValueError(f"objective {self.config.objective!r}: multitask blocks train "
                             "with objective 'multitask_classification'")

    def example_batch(self, batch_size: int = 1) -> dict:
        shape = (batch_size, self.seq_len)
        return {"input_ids": np.ones(shape, np.int32), "attention_mask": np.ones(shape, np.int32),
                "token_type_ids": np.zeros(shape, np.int32),
                "labels": np.zeros((batch_size,), np.int32),
                "example_weights": np.ones((batch_size,), np.float32),
                "task_id": np.zeros((batch_size,), np.int32)}

    def sampler(self) -> TaskSampler:
        return TaskSampler(self.probabilities, self.config.data.seed)

    def train_batches(self, state: dict | None):
        sampler = self.sampler()
        saved = state if state and "tasks" in state else None
        if saved is not None:
            mine = {"sampler_seed": sampler.seed, "tasks": self.names}
            then = {"sampler_seed": saved.get("sampler_seed"), "tasks": list(saved["tasks"])}
            if then != mine or not np.allclose(saved.get("probabilities", []),
                                               sampler.probabilities, rtol=0, atol=1e-12):
                raise ValueError(f"the saved data position is for another task mix: {then} "
                                 f"p={saved.get('probabilities')} then, {mine} "
                                 f"p={sampler.probabilities.tolist()} now")
        streams = [t.train_batches(saved["tasks"][t.name] if saved else None)
                   for t in self.tasks]
        return MultiTaskBatches(streams, sampler, self.names,
                                saved["next_batch"] if saved else 0)

    def eval_passes(self):
        passes = []
        for i, task in enumerate(self.tasks):
            for prefix, batches in task.eval_passes():
                passes.append((f"eval_{task.name}_{prefix[len('eval_'):]}",
                               _tagged(batches, i)))
        return passes

    def outputs_metrics(self, outputs: list[dict]) -> dict:
        """The metrics of the task the pass evaluated (its task_id), on its own labels."""
        task = self.tasks[int(outputs[0]["task_id"][0])]
        width = task.label_map.num_labels
        return task.outputs_metrics([{**o, "logits": o["logits"][:, :width]} for o in outputs])

    def description(self) -> dict:
        if self._description is not None:
            return self._description
        return {"kind": "task", "task": "multitask_classification",
                "max_seq_length": self.seq_len, "labels": None,
                "tokenizer_dir": self.tokenizer_dir,
                "tasks": [{"name": t.name, "glue": t.glue.name if t.glue else "",
                           "labels": list(t.label_names),
                           "train_examples": len(t.train_features)} for t in self.tasks],
                "sampling": {"mode": self.config.multitask.sampling,
                             "temperature": float(self.config.multitask.temperature),
                             "probabilities": self.probabilities.tolist()},
                "model": {"family": registry.family_of(self._model_config).name,
                          "config": self._model_config.to_dict()}}
