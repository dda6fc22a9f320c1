"""Fine-tuning: the pre-training Trainer on a labelled task, from a checkpoint.

    flaxbert finetune --config configs/finetune_glue.py:sst2 --workdir W \
        --config.model=path/to/bert-base-uncased --config.data.train=train.tsv \
        --config.data.validation=dev.tsv

    import flaxbert
    config = flaxbert.finetune_config(model="path/to/checkpoint", objective="classification")
    config.data.train, config.data.validation = "train.csv", "dev.csv"
    metrics = flaxbert.finetune(config, "runs/sst2")      # no subprocess needed

Everything the Trainer does holds here (one jitted sharded step, Orbax checkpoints, resume after
SIGTERM or kill -9, metrics.jsonl, TensorBoard, NaN guard); what is new is the data
(`flaxbert.training.sources.TaskData`), the objective (`classification`, `token_classification`,
`multiple_choice`) and keeping the best evaluation: `train.best_metric` names the metric
(`eval_accuracy`, `eval_f1`, `eval_matthews_correlation`, ...), the best model is exported to
<workdir>/export/best as a transformers directory with the tokenizer and the label names, and
`train.early_stopping_patience` evaluations without improvement end the run.
"""
from __future__ import annotations

import os

import ml_collections

from flaxbert.training.config import default_config


def finetune_config(**fields) -> ml_collections.ConfigDict:
    """Defaults from transformers' run_glue / run_ner examples (AdamW, lr 2e-5, linear decay,
    batch 32, 128 tokens); `fields` set top-level entries (model=..., objective=...)."""
    c = default_config()
    c.model = ""  # a transformers / flaxbert checkpoint directory (or a registered name: random)
    c.objective = "classification"  # | "token_classification" | "multiple_choice"
    #                                   | "question_answering" | "multitask_classification"
    c.vocab_from_data = False

    c.task = ml_collections.ConfigDict()
    c.task.glue = ""  # a GLUE task name: its columns, labels and metrics
    c.task.text_column = ""  # defaults follow run_glue (sentence, sentence1/sentence2, ...)
    c.task.text_pair_column = ""
    c.task.label_column = ""
    c.task.regression = False  # float labels, one output (detected when every label is a number)
    c.task.replace_labels = False  # a checkpoint head with other labels is re-initialised
    c.task.max_seq_length = 128
    c.task.overflow = "truncate"  # or "error": longer texts are refused, naming file and line
    c.task.label_all_subwords = False  # token tasks: label every sub-word, not just the first
    c.task.buckets = ()  # padded lengths; () doubles from 32 up to max_seq_length
    c.task.pack = False  # several short examples per row (flaxbert.packing)
    c.task.tokenizer = ""  # default: the checkpoint directory's tokenizer
    c.task.metrics = ()  # beyond GLUE's own: names from flaxbert.tasks.metrics.METRICS
    # Texts longer than max_seq_length (flaxbert.tasks.windows): "truncate" cuts them;
    # "windows" cuts each document into windows of max_seq_length tokens, each a training row
    # with the document's label (token tasks: its own token labels), and evaluation scores
    # each document once, from its windows pooled; "chunks" (classification) encodes each
    # window of a document and classifies the pooled chunk embeddings
    # (flaxbert.models.hierarchical: exported as a transformers encoder plus chunk_head.safetensors
    # and chunk_config.json, which the text-classification pipeline reads).
    c.task.long_inputs = "truncate"  # | "windows" | "chunks"
    c.task.stride = 32  # tokens two consecutive windows (or chunks) share
    c.task.window_pooling = "mean"  # | "max" | "first": a document's logits from its windows'
    c.task.max_chunks = 8  # "chunks": chunks kept per document (the rest cut, with a warning)
    c.task.chunk_pooling = "attention"  # | "transformer": one transformer layer over chunks
    # Question answering (objective="question_answering"), as transformers' run_qa: windows of
    # max_seq_length sharing doc_stride tokens, questions cut to max_query_length tokens, answers
    # of at most max_answer_length tokens chosen from the n_best_size best starts and ends;
    # version_2 (SQuAD v2.0) lets the null answer win by null_score_diff_threshold. Answers whose
    # text is not at their answer_start: "skip" (counted and reported), "keep" or "error".
    c.task.doc_stride = 128
    c.task.max_query_length = 64
    c.task.max_answer_length = 30
    c.task.n_best_size = 20
    c.task.version_2 = False
    c.task.null_score_diff_threshold = 0.0
    c.task.on_mismatch = "skip"

    # Multi-task classification (objective="multitask_classification",
    # flaxbert.training.multitask): data.train names the tasks trained together, e.g.
    # "sst2,mnli" (their order is their task_id); each is a block multitask.tasks.<name> =
    # flaxbert.training.multitask.task_block(glue=..., train=..., validation=..., columns), and
    # the task options above (max_seq_length, buckets, overflow) hold for all of them. A step's
    # batch comes from task i with p_i ∝ n_i ("proportional") or n_i^(1/temperature)
    # ("temperature": 1 is proportional, larger is nearer uniform).
    c.multitask = ml_collections.ConfigDict()
    c.multitask.sampling = "proportional"  # | "temperature"
    c.multitask.temperature = 1.0
    c.multitask.tasks = ml_collections.ConfigDict()

    c.data.validation = ""  # comma-separated for several evaluation sets (MNLI m / mm)
    c.data.masking = False

    c.optimizer.learning_rate = 2e-5
    c.optimizer.warmup_steps = 0
    c.optimizer.eps = 1e-8  # transformers' AdamW
    c.optimizer.weight_decay = 0.0
    # Fine-tuning options (flaxbert.training.optim): layer-wise lr decay (1: off), the head's
    # peak lr (0: learning_rate), a linear probe (only the head trains), gradual unfreezing of
    # one more top layer every N steps (0: off).
    c.optimizer.layer_decay = 1.0
    c.optimizer.head_learning_rate = 0.0
    c.optimizer.freeze_encoder = False
    c.optimizer.unfreeze_every = 0

    c.train.num_steps = 1000
    c.train.num_epochs = 0  # > 0: num_steps becomes epochs x training examples / batch
    c.train.global_batch_size = 32
    c.train.log_every = 50
    c.train.eval_every = 0  # 0: only at the end
    c.train.best_metric = ""  # e.g. "eval_accuracy"; "" keeps no best model
    c.train.best_mode = "max"  # "min" for a loss
    c.train.early_stopping_patience = 0  # evaluations without improvement; 0: never stop early

    c.checkpoint.save_every = 500
    c.checkpoint.keep = 2
    for key, value in fields.items():  # a pathlib.Path is a directory name, as str would be
        c[key] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return c


def tiny_finetune(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A fine-tuning recipe's `:tiny` switch: 100 steps at 64 tokens, sized for a CPU."""
    c.task.max_seq_length = 64
    c.train.num_epochs, c.train.num_steps, c.train.global_batch_size = 0, 100, 16
    c.train.eval_every, c.train.log_every = 50, 10
    c.optimizer.learning_rate = 1e-3
    c.checkpoint.save_every = 50
    return c


def finetune(config: ml_collections.ConfigDict, workdir) -> dict:
    """Run (or resume) a fine-tuning run; returns the last logged metrics."""
    from flaxbert.hub import is_hub_id, resolve
    from flaxbert.training.trainer import Trainer
    if is_hub_id(config.model):  # model="org/name": its snapshot, as the CLI resolves it
        config = config.copy_and_resolve_references()
        config.model = str(resolve(config.model))
    return Trainer(config, workdir).run()
