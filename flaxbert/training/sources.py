"""Where a run's batches come from: prepared pre-training shards, or a labelled task's files.

The Trainer asks its source for the same few things whatever it trains: the model config the data
needs, an example batch (shapes for init), a resumable stream of training batches, the evaluation
passes, the metrics of an evaluation's outputs, and a JSON description that it keeps in the
workdir so a later export needs nothing else.

    PretrainingData  `flaxbert prepare` directories -> masked (or plain) batches, mean metrics
    TaskData         CSV / TSV / JSON(L) / CoNLL / SWAG / tfds: / hf: files -> bucketed task
                     batches (training rows packed with task.pack), with the task's metrics
                     (GLUE's, entity F1, ...) on the predictions
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from flaxbert import storage
from flaxbert.models import registry

log = logging.getLogger(__name__)


def _overrides(config) -> dict:
    return dict(config.model_overrides.to_dict()) if config.model_overrides else {}


# ----------------------------------------------------------------------------- pre-training

def data_dirs(config) -> list[str]:
    dirs = [d.strip() for d in str(config.data.train).split(",") if d.strip()]
    for d in dirs:
        if not (storage.as_path(d) / "manifest.json").is_file():  # local or gs://
            raise FileNotFoundError(f"data.train: {d} is not a directory written by "
                                    "`flaxbert prepare` (no manifest.json)")
    return dirs


def model_config_for(config, manifest: dict):
    """The registered config with the run's overrides; vocabulary and pad id from the data's
    tokenizer when `vocab_from_data` (a model must cover every id the data holds)."""
    overrides = _overrides(config)
    base = registry.get_config(config.model)
    vocab = int(manifest["tokenizer"]["vocab_size"])
    if config.vocab_from_data:
        overrides.setdefault("vocab_size", vocab)
        pad = manifest["tokenizer"].get("special_ids", {}).get("pad")
        if pad is not None and "pad_token_id" in {f for f in base.to_dict()}:
            overrides.setdefault("pad_token_id", int(pad))
    model_config = base.replace(**overrides)
    if model_config.vocab_size < vocab:
        raise ValueError(f"model vocab_size={model_config.vocab_size} is smaller than the data "
                         f"tokenizer's {vocab}")
    needed = int(manifest["max_seq_length"])
    if model_config.max_sequence_length < needed:
        raise ValueError(f"the data has sequences of {needed} tokens but {config.model} allows "
                         f"{model_config.max_sequence_length}")
    return model_config


class PretrainingData:
    """`flaxbert prepare` directories (data.train) or, given `manifest`, just their description
    (benchmarks feed synthetic batches; an export reads the copy its workdir keeps)."""

    def __init__(self, config, manifest: dict | None = None):
        from flaxbert.data.masking import MaskingConfig
        self.config = config
        if manifest is None:
            from flaxbert.data.pipeline import read_manifest
            self.data_dirs = data_dirs(config)
            manifest = read_manifest(self.data_dirs)
        else:
            self.data_dirs = []
        self.manifest = manifest
        self.seq_len = int(manifest["max_seq_length"])
        d = config.data
        self.masking = MaskingConfig(
            mlm_probability=d.mlm_probability,
            max_predictions_per_seq=d.max_predictions_per_seq or None,  # 0: sized to the rate
            mask_token_prob=d.get("mask_token_fraction", 0.8),
            random_token_prob=d.get("random_token_fraction", 0.1),
            whole_word=d.whole_word, max_ngram=d.max_ngram) if d.masking else None
        from flaxbert.data.length_schedule import parse_length_schedule
        self.length_schedule = parse_length_schedule(
            d.get("seq_length_schedule", ""), config.train.num_steps, self.seq_len)
        if self.masking is not None:
            wanted = max(1, round(d.mlm_probability * self.seq_len))
            if self.masking.predictions(self.seq_len) < wanted:
                log.warning("data.max_predictions_per_seq=%d caps masking below "
                            "data.mlm_probability=%g of %d tokens (%d); raise it or set 0",
                            d.max_predictions_per_seq, d.mlm_probability, self.seq_len, wanted)

    @property
    def tokenizer_dir(self) -> str:
        return self.manifest.get("tokenizer_dir", "")

    def model_config(self):
        return model_config_for(self.config, self.manifest)

    def objective_settings(self, objective_cls) -> dict:
        settings = self.config.objective_settings.to_dict() if self.config.objective_settings \
            else {}
        if "special_ids" in getattr(objective_cls, "defaults", {}):
            # XLNet's PLM never predicts special tokens: take them from the data's tokenizer.
            settings.setdefault("special_ids", self.manifest["tokenizer"].get("all_special_ids"))
        return settings

    def check(self, objective) -> None:
        need_pairs = getattr(objective, "pair_task", None)
        mode = self.manifest.get("mode")
        if need_pairs and mode != need_pairs:
            raise ValueError(f"objective {self.config.objective!r} needs data prepared with "
                             f"--mode {need_pairs}; {self.data_dirs} were prepared with {mode!r}")
        wants_masking = objective.data == "mlm"
        if objective.data == "task":
            raise ValueError(f"objective {self.config.objective!r} fine-tunes on labelled task "
                             "files: use `flaxbert finetune` with a finetune_*.py config")
        if wants_masking != bool(self.config.data.masking):
            raise ValueError(f"objective {self.config.objective!r} needs data.masking="
                             f"{wants_masking}")

    def example_batch(self, batch_size: int = 1) -> dict:
        """Zeros shaped like a pipeline batch (for init and shape checks)."""
        s = self.seq_len
        p = self.masking.predictions(s) if self.masking is not None else 0
        batch = {"input_ids": np.ones((batch_size, s), np.int32),
                 "attention_mask": np.ones((batch_size, s), np.int32),
                 "token_type_ids": np.zeros((batch_size, s), np.int32)}
        if self.masking is not None:
            batch.update(masked_positions=np.zeros((batch_size, p), np.int32),
                         masked_ids=np.zeros((batch_size, p), np.int32),
                         masked_weights=np.ones((batch_size, p), np.float32))
        if self.manifest.get("mode") in ("nsp", "sop"):
            batch["pair_label"] = np.zeros((batch_size,), np.int32)
        return batch

    def train_batches(self, state: dict | None):
        from flaxbert.data.pipeline import BatchIterator
        return BatchIterator(self.data_dirs, split="train",
                             global_batch_size=self.config.train.global_batch_size,
                             masking=self.masking, seed=self.config.data.seed,
                             shuffle_buffer=self.config.data.shuffle_buffer,
                             start_batch=int((state or {}).get("next_batch", 0)),
                             length_schedule=self.length_schedule)

    def eval_passes(self):
        """[(metric prefix, batches)]: the validation split once, in order."""
        from flaxbert.data.pipeline import make_eval_dataset
        if not self.manifest.get("sequences", {}).get("validation", 0):
            log.warning("no evaluation: %s hold no validation sequences", self.data_dirs)
            return []
        return [("eval_", make_eval_dataset(
            self.data_dirs, global_batch_size=self.config.train.global_batch_size,
            masking=self.masking, seed=self.config.data.seed).as_numpy_iterator())]

    def outputs_metrics(self, outputs: list[dict]) -> dict:
        return {}  # pre-training reports the means of the step's own metrics only

    def description(self) -> dict:
        return {"kind": "pretraining",
                **{k: v for k, v in self.manifest.items()
                   if k not in ("files", "manifests", "data_dirs", "tokenizer_dir")},
                "data_dirs": list(self.manifest.get("data_dirs", []))}


# ----------------------------------------------------------------------------- fine-tuning

class TaskData:
    """A labelled task: `config.model` (a transformers or flaxbert directory) fine-tuned on
    data.train, evaluated on data.validation (comma-separated for several, e.g. MNLI's matched
    and mismatched). Labels are mapped once, from the training file (or the GLUE task's names,
    or the checkpoint's id2label when it holds every training label)."""

    def __init__(self, config, description: dict | None = None):
        from flaxbert.tokenizer import Tokenizer
        from flaxbert.training.objectives import OBJECTIVES
        self.config, t = config, config.task
        # An objective that trains on another's data (TinyBERT's task stage) names that one.
        self.kind = getattr(OBJECTIVES.get(config.objective), "task_kind", config.objective)
        self.seq_len = int(t.max_seq_length)
        self._long_inputs_mode(config)
        self.glue = None
        if t.glue:
            from flaxbert.tasks.glue import glue_task
            self.glue = glue_task(t.glue)
        if description is not None:  # restoring from a workdir: nothing else is read
            self._description = description
            self.tokenizer_dir = description.get("tokenizer_dir", "")
            self.label_names = description.get("labels")
            self._model_config = _config_from_dict(description["model"])
            self.train_features = self.initial_params = None
            self._packing = {}
            return
        source = t.tokenizer or config.model
        if not Path(source).is_dir():
            raise FileNotFoundError(f"task.tokenizer: {source} is not a tokenizer directory "
                                    "(give a checkpoint directory as model, or task.tokenizer)")
        self.tokenizer_dir = str(Path(source).absolute())
        self.tokenizer = Tokenizer.from_pretrained(source)
        if config.data.train:
            train = self._read(config.data.train, "train", labelled=True)
            self.label_map = self._label_map(train)
        else:  # evaluating a fine-tuned model: its own labels
            train, self.label_map = None, self._checkpoint_label_map()
        self.label_names = None if self.label_map is None or self.label_map.regression \
            else list(self.label_map.names)
        self._model_config, self.initial_params = self._model()
        self.train_features = None if train is None else self._features(train)
        self._packing = self._packing_conventions() if t.pack else {}
        epochs = config.train.get("num_epochs", 0)
        if epochs and train is not None:  # the schedule is built after the data, from this
            rows = self._batches(self.train_features, train=True).rows_per_epoch
            config.train.num_steps = max(1, math.ceil(
                epochs * rows / config.train.global_batch_size))
        self.eval_sets = []
        for i, spec in enumerate(s.strip() for s in str(config.data.validation).split(",")):
            if spec:
                name = spec.rsplit(":", 1)[-1] if self.glue else f"{i}"
                self.eval_sets.append((name, self._features(
                    self._read(spec, self._split(spec, "validation"), labelled=True))))
        self._description = None

    # ---- reading --------------------------------------------------------------------------
    @staticmethod
    def _split(spec: str, default: str) -> str:
        return spec.rsplit(":", 1)[1] if spec.startswith(("tfds:", "hf:")) and \
            spec.count(":") >= 2 else default

    def _read(self, spec, split, labelled):
        from flaxbert.tasks import readers
        t = self.config.task
        if not spec:
            raise ValueError(f"data.{split}: no file given")
        if self.kind == "token_classification":
            return readers.read_token_examples(spec, split=split, require_labels=labelled)
        if self.kind == "multiple_choice":
            return readers.read_choice_examples(spec, split=split, require_labels=labelled)
        columns = {}
        if self.glue is not None:
            columns = dict(text_column=self.glue.text_columns[0],
                           text_pair_column=(self.glue.text_columns[1]
                                             if len(self.glue.text_columns) > 1 else ""),
                           label_column=self.glue.label_column)
        if t.text_column:
            columns.update(text_column=t.text_column, text_pair_column=t.text_pair_column)
        if t.label_column:
            columns["label_column"] = t.label_column
        examples = readers.read_sequence_examples(spec, split=split, require_labels=labelled,
                                                  **columns)
        if self.glue is not None and not self.glue.is_regression:
            # GLUE's files (and tfds) hold label ids: 0 is the first name, and so on.
            names = self.glue.label_names
            for e in examples:
                label = str(e.get("label", ""))
                if label.isdigit() and int(label) < len(names):
                    e["label"] = names[int(label)]
        return examples

    def _checkpoint_names(self):
        config_file = Path(self.config.model) / "config.json"
        if not config_file.is_file():
            return None
        from flaxbert.io import read_json
        labels = read_json(config_file).get("id2label")
        return [labels[k] for k in sorted(labels, key=int)] if isinstance(labels, dict) else None

    def _checkpoint_label_map(self):
        from flaxbert.tasks.labels import LabelMap
        if self.kind == "multiple_choice":
            return None
        if self.glue is not None:
            return LabelMap(regression=True) if self.glue.is_regression else \
                LabelMap(tuple(self.glue.label_names))
        config_file = Path(self.config.model) / "config.json"
        if self.config.task.regression or (config_file.is_file() and (
                json_field(config_file, "num_labels") == 1
                or json_field(config_file, "problem_type") == "regression")):
            return LabelMap(regression=True)
        names = self._checkpoint_names()
        if not names:
            raise ValueError(f"{self.config.model} has no id2label, so without data.train the "
                             "labels of data.validation cannot be mapped")
        return LabelMap(tuple(names))

    def _label_map(self, train):
        from flaxbert.tasks.labels import LabelMap, label_map_for
        if self.kind == "multiple_choice":
            return None
        if self.glue is not None:
            return LabelMap(regression=True) if self.glue.is_regression else \
                label_map_for(train, names=self.glue.label_names)
        return label_map_for(train, regression=True if self.config.task.regression else None,
                             checkpoint_names=self._checkpoint_names(),
                             checkpoint=str(self.config.model),
                             replace_checkpoint_labels=self.config.task.replace_labels)

    def _model(self):
        """The model config the task needs and the checkpoint's weights (a fresh head where
        the checkpoint has none); a registered name starts from random weights."""
        import flaxbert
        task = _TASK_OF[self.kind]
        labels = {}
        if self.label_map is not None:
            labels = {"num_labels": self.label_map.num_labels,
                      "id2label": None if self.label_map.regression else
                      tuple(self.label_map.names)}
        overrides = {**labels, **_overrides(self.config)}
        if self.long_inputs == "chunks":
            return self._chunk_model(overrides)
        if Path(self.config.model).is_dir():
            # train.seed seeds a fresh head, as transformers' set_seed before from_pretrained
            model, params = flaxbert.from_pretrained(self.config.model, task=task,
                                                     rng=self.config.train.seed, **overrides)
            return model.config, params
        return registry.get_config(self.config.model, **overrides), None

    def _features(self, examples):
        from flaxbert.tasks import features
        t = self.config.task
        overflow = t.overflow
        if self.long_inputs != "truncate":
            return self._long_features(examples)
        if self.kind == "token_classification":
            return features.encode_words(examples, self.tokenizer, self.label_map,
                                         max_length=self.seq_len, overflow=overflow,
                                         label_all_subwords=t.label_all_subwords)
        if self.kind == "multiple_choice":
            return features.encode_choices(examples, self.tokenizer, max_length=self.seq_len,
                                           overflow=overflow)
        return features.encode_sequences(examples, self.tokenizer, self.label_map,
                                         max_length=self.seq_len, overflow=overflow)

    # ---- what the Trainer asks ------------------------------------------------------------
    def model_config(self):
        if self._model_config.max_sequence_length < self.seq_len:
            raise ValueError(f"task.max_seq_length={self.seq_len} exceeds the "
                             f"{self._model_config.max_sequence_length} positions of "
                             f"{self.config.model}")
        return self._model_config

    def objective_settings(self, objective_cls) -> dict:
        settings = self.config.objective_settings.to_dict() if self.config.objective_settings \
            else {}
        if self.long_inputs == "chunks":
            settings.update(self._chunk_settings())
        return settings

    def check(self, objective) -> None:
        if objective.data != "task":
            raise ValueError(f"objective {self.config.objective!r} pre-trains; a task config "
                             f"needs one of {sorted(_TASK_OF)}")

    def example_batch(self, batch_size: int = 1) -> dict:
        choices = (2,) if self.kind == "multiple_choice" else \
            (int(self.config.task.max_chunks),) if self.long_inputs == "chunks" else ()
        shape = (batch_size,) + choices + (self.seq_len,)
        labels = (batch_size, self.seq_len) if self.kind == "token_classification" \
            else (batch_size,)
        regression = self._model_config.num_labels == 1 and self.kind == "classification"
        return {"input_ids": np.ones(shape, np.int32), "attention_mask": np.ones(shape, np.int32),
                "token_type_ids": np.zeros(shape, np.int32),
                "labels": np.zeros(labels, np.float32 if regression else np.int32),
                "example_weights": np.ones((batch_size,), np.float32)}

    def _batches(self, features, *, train: bool, state=None):
        import jax

        from flaxbert.tasks.batching import TaskBatches
        t = self.config.task
        return TaskBatches(features, self.config.train.global_batch_size,
                           max_length=self.seq_len, pad_id=self.tokenizer.pad_token_id
                           if getattr(self.tokenizer, "pad_token_id", None) is not None else 0,
                           padding_side=self.tokenizer.padding_side,
                           buckets=tuple(t.buckets) or None, shuffle=train,
                           seed=self.config.data.seed, repeat=train, pack=bool(t.pack and train),
                           **(self._packing if train else {}),
                           process_index=jax.process_index(), process_count=jax.process_count(),
                           state=state)

    def _packing_conventions(self) -> dict:
        """The positions packed rows give (flaxbert.packing: restarting per example, from the
        family's first position); one clear error for a model that takes no segment ids."""
        import inspect

        from flaxbert.packing import packing_conventions
        model = registry.family_of(self._model_config).model(_TASK_OF[self.kind],
                                                             self._model_config)
        if "segment_ids" not in inspect.signature(type(model).__call__).parameters:
            raise ValueError(f"task.pack=True: {type(model).__name__} takes no segment ids, so "
                             "packed examples would attend to each other; use the default "
                             "length buckets")
        conventions = packing_conventions(model)
        return {k: conventions[k] for k in ("position_offset", "pad_position")}

    def train_batches(self, state: dict | None):
        if self.train_features is None:
            raise ValueError("data.train is empty: there is nothing to train on")
        return self._batches(self.train_features, train=True,
                             state=state if state and "epoch" in state else None)

    def eval_passes(self):
        """[(metric prefix, batches)] per evaluation set. Feature indices (example_index) are
        made unique across the sets, so that outputs say which set, and which feature of it,
        each row is (`eval_set_of`)."""
        prefix = "eval_" if len(self.eval_sets) <= 1 else None
        passes, offset, self._eval_offsets = [], 0, []
        for name, features in self.eval_sets:
            self._eval_offsets.append(offset)
            passes.append((prefix or f"eval_{name}_",
                           _offset_index(self._batches(features, train=False), offset)))
            offset += len(features)
        return passes

    def eval_set_of(self, outputs: list[dict]) -> tuple[int, int]:
        """(index into eval_sets, its first feature index) of an evaluation pass's outputs."""
        first = int(min(o["example_index"].min() for o in outputs))
        s = max(i for i, start in enumerate(self._eval_offsets) if start <= first)
        return s, self._eval_offsets[s]

    def outputs_metrics(self, outputs: list[dict]) -> dict:
        """The task's metrics on an evaluation pass's (logits, labels) rows."""
        from flaxbert.tasks import glue, metrics
        logits = [o["logits"] for o in outputs]
        labels = [o["labels"] for o in outputs]
        if self.long_inputs == "windows":  # one score per document, from its windows
            logits, labels = self._document_outputs(outputs)
            if not logits:
                return {}
        if self.kind == "token_classification":
            width = max(x.shape[1] for x in labels)
            labels = np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1])),
                                            constant_values=-100) for x in labels])
            logits = np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0)))
                                     for x in logits])
            return metrics.token_classification_metrics(logits, labels, self.label_names)
        logits, labels = np.concatenate(logits), np.concatenate(labels)
        if self.glue is not None:
            return glue.compute_metrics(self.glue, logits, labels)
        if self._model_config.num_labels == 1 and self.kind == "classification":
            return metrics.compute_named_metrics(["pearson", "spearmanr"], logits[:, 0], labels)
        names = list(self.config.task.metrics) or ["accuracy"]
        return metrics.compute_named_metrics(names, logits.argmax(-1), labels)

    def description(self) -> dict:
        if self._description is not None:
            return self._description
        out = {"kind": "task", "task": self.kind, "max_seq_length": self.seq_len,
               "labels": self.label_names, "tokenizer_dir": self.tokenizer_dir,
               "model": {"family": registry.family_of(self._model_config).name,
                         "config": self._model_config.to_dict()}}
        if self.long_inputs != "truncate":
            t = self.config.task
            out["long_inputs"] = {"mode": self.long_inputs, "stride": int(t.stride),
                                  **({"window_pooling": t.window_pooling}
                                     if self.long_inputs == "windows" else self._chunk_settings())}
        return out

    # ---- long inputs (flaxbert.tasks.windows, flaxbert.models.hierarchical) ----------------
    def _long_inputs_mode(self, config) -> None:
        """task.long_inputs, checked; "chunks" selects the chunk model's objective."""
        from flaxbert.tasks.windows import LONG_INPUTS, POOLING
        t = config.task
        self.long_inputs = t.get("long_inputs", "truncate")
        if self.kind == "chunk_classification":  # a saved chunk run's config
            self.kind, self.long_inputs = "classification", "chunks"
        if self.long_inputs not in LONG_INPUTS:
            raise ValueError(f"task.long_inputs={self.long_inputs!r}; choose one of {LONG_INPUTS}")
        if self.long_inputs == "truncate":
            return
        if self.kind not in ("classification", "token_classification") or (
                self.long_inputs == "chunks" and self.kind != "classification"):
            raise ValueError(f"task.long_inputs={self.long_inputs!r} does not apply to objective "
                             f"{config.objective!r} (windows: classification and "
                             "token_classification; chunks: classification)")
        if self.long_inputs == "windows" and t.window_pooling not in POOLING:
            raise ValueError(f"task.window_pooling={t.window_pooling!r}; choose one of {POOLING}")
        if self.long_inputs == "chunks":
            config.objective = "chunk_classification"  # the Trainer builds the chunk model

    def _chunk_settings(self) -> dict:
        """The chunk model's settings, with how documents are cut (its export records them)."""
        saved = (getattr(self, "_description", None) or {}).get("long_inputs")
        t = self.config.task
        cut = {"chunk_length": self.seq_len, "stride": int(t.stride)}
        if saved:  # restoring: the tokenizer is not read again
            return {**{k: saved[k] for k in ("max_chunks", "chunk_pooling", "cls_position")},
                    **cut}
        # Tokenizers that pad on the left (XLNet) end each chunk with its CLS token.
        left = self.tokenizer.padding_side == "left"
        return {"max_chunks": int(t.max_chunks), "chunk_pooling": t.chunk_pooling,
                "cls_position": "last" if left else "first", **cut}

    def _chunk_model(self, overrides):
        """The chunk model's config and, from a checkpoint directory, its encoder's weights
        with a fresh pooling head."""
        import jax

        import flaxbert
        from flaxbert.models.hierarchical import HierarchicalClassifier, with_encoder_params
        if not Path(self.config.model).is_dir():
            return registry.get_config(self.config.model, **overrides), None
        model, params = flaxbert.from_pretrained(self.config.model, task="base", **overrides)
        chunked = HierarchicalClassifier(model.config, **self._chunk_settings())
        return model.config, with_encoder_params(chunked, params,
                                                 jax.random.PRNGKey(self.config.train.seed))

    def _long_features(self, examples):
        """Whole documents (no truncation) cut into windows of max_seq_length tokens; for
        "chunks", each document's windows become one feature of max_chunks chunks (missing
        ones empty)."""
        from flaxbert.tasks import features, windows
        t = self.config.task
        pair = next((e for e in examples if "text_pair" in e), None)
        if pair is not None:
            raise ValueError(f"{pair.get('origin', 'an example')}: task.long_inputs="
                             f"{self.long_inputs!r} takes single texts, not text pairs")
        whole = 2 ** 31 - 1
        if self.kind == "token_classification":
            documents = features.encode_words(examples, self.tokenizer, self.label_map,
                                              max_length=whole,
                                              label_all_subwords=t.label_all_subwords)
        else:
            documents = features.encode_sequences(examples, self.tokenizer, self.label_map,
                                                  max_length=whole)
        prefix, suffix = windows.special_layout(self.tokenizer)
        cut = windows.split_into_windows(documents, max_length=self.seq_len, stride=int(t.stride),
                                         prefix=prefix, suffix=suffix)
        return cut if self.long_inputs == "windows" else self._chunks(cut, examples)

    def _chunks(self, cut, examples) -> list[dict]:
        limit, empty = int(self.config.task.max_chunks), np.zeros(0, np.int32)
        counts = np.bincount(cut.layout.document, minlength=cut.layout.num_documents)
        if (counts > limit).any():
            first = int(np.flatnonzero(counts > limit)[0])
            where = examples[first].get("origin", f"example {first}")
            if self.config.task.overflow == "error":
                raise ValueError(f"{where}: {counts[first]} chunks of {self.seq_len} tokens, "
                                 f"more than task.max_chunks={limit}")
            log.warning("%d of %d documents (first: %s) had more than task.max_chunks=%d chunks "
                        "and were cut", int((counts > limit).sum()), len(counts), where, limit)
        grouped = []
        for d, document in enumerate(cut.documents):
            mine = [cut[w] for w in np.flatnonzero(cut.layout.document == d)[:limit]]
            feature = {k: tuple(c[k] for c in mine) + (empty,) * (limit - len(mine))
                       for k in ("input_ids", "token_type_ids")}
            if "labels" in document:
                feature["labels"] = document["labels"]
            grouped.append(feature)
        return grouped

    def _document_outputs(self, outputs) -> tuple[list, list]:
        """Window rows -> per-document (logits, labels) lists, as outputs_metrics reads them,
        for the documents whose windows were all evaluated (train.eval_batches may stop early)."""
        from flaxbert.tasks.windows import WindowLayout, document_token_logits, pool_window_logits
        s, offset = self.eval_set_of(outputs)
        cut = self.eval_sets[s][1]
        layout, rows = cut.layout, {}
        for o in outputs:
            rows.update((int(i) - offset, x) for i, x in zip(o["example_index"], o["logits"]))
        seen = np.zeros(len(cut), bool)
        seen[list(rows)] = True
        docs = np.flatnonzero(np.bincount(layout.document[~seen],
                                          minlength=layout.num_documents) == 0)
        keep = np.flatnonzero(np.isin(layout.document, docs))
        if not len(keep):
            return [], []
        renumbered = np.searchsorted(docs, layout.document[keep])
        if self.kind != "token_classification":
            pooled = pool_window_logits(np.stack([rows[w] for w in keep]), renumbered, len(docs),
                                        self.config.task.window_pooling)
            return [pooled], [np.asarray([cut.documents[d]["labels"] for d in docs])]
        left = self.tokenizer.padding_side == "left"
        unpadded = []
        for w in keep:  # each window's own tokens out of its padded row
            n, row = layout.window_length(w), rows[w]
            unpadded.append(row[len(row) - n:] if left else row[:n])
        sub = WindowLayout(renumbered, layout.start[keep], layout.length[keep], layout.prefix,
                           layout.suffix, layout.document_lengths[docs])
        return ([x[None] for x in document_token_logits(unpadded, sub)],
                [np.asarray(cut.documents[d]["labels"])[None] for d in docs])


def json_field(file: Path, name: str):
    from flaxbert.io import read_json
    return read_json(file).get(name)


def _offset_index(batches, offset: int):
    """Task batches with their example_index moved by `offset` (padding rows stay -1)."""
    for batch in batches:
        index = batch["example_index"]
        yield {**batch, "example_index": np.where(index >= 0, index + offset, -1).astype(np.int32)}


_TASK_OF = {"classification": "sequence-classification",
            "token_classification": "token-classification", "multiple_choice": "multiple-choice",
            "question_answering": "question-answering"}


def _config_from_dict(saved: dict):
    family = registry.family_by_name(saved["family"])
    # JSON keeps tuples (id2label, lora_targets) as lists.
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in saved["config"].items()}
    return family.config_cls(**fields)


def data_source(config, manifest: dict | None = None, description: dict | None = None):
    """The source for `config`: a task when it has a `task` block, else pre-training data."""
    if "task" in config and config.objective == "question_answering":
        from flaxbert.training.qa_source import QuestionAnsweringData
        return QuestionAnsweringData(config, description)
    if "task" in config and config.objective == "multitask_classification":
        from flaxbert.training.multitask import MultiTaskData
        return MultiTaskData(config, description)
    if "task" in config:
        return TaskData(config, description)
    if description is not None:
        manifest = description
    return PretrainingData(config, manifest)
