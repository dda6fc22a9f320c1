"""GLUE fine-tuning as transformers' run_glue README runs it (lr 2e-5, batch 32, 3 epochs,
128 tokens, AdamW with linear decay and no warmup); the BERT paper searched lr in {5e-5, 4e-5,
3e-5, 2e-5} with batch 32 for 3 epochs. The argument names the task (cola, sst2, mrpc, stsb,
qqp, mnli, qnli, rte, wnli): it selects the columns, the labels and the metrics, and the best
evaluation by the task's main metric is exported.

    flaxbert finetune --config configs/finetune_glue.py:mrpc --workdir runs/mrpc \
        --config.model=checkpoints/bert-base-cased \
        --config.data.train=glue/MRPC/train.tsv --config.data.validation=glue/MRPC/dev.tsv
    # or straight from tensorflow-datasets / HF datasets:
    #   --config.data.train=tfds:glue/mrpc:train --config.data.validation=tfds:glue/mrpc:validation

`:<task>,tiny` (or `:tiny` for sst2) trains for 100 steps at 64 tokens, for a local CPU run.
"""
from flaxbert.tasks.glue import glue_task
from flaxbert.training.finetune import finetune_config, tiny_finetune

MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "pearson", "mrpc": "f1", "qqp": "f1"}


def get_config(arg: str = "sst2"):
    name, _, size = arg.partition(",")
    if name == "tiny":
        name, size = "sst2", "tiny"
    if size not in ("", "tiny"):
        raise ValueError(f"finetune_glue.py: argument {arg!r}; use <task> or <task>,tiny")
    task = glue_task(name)
    c = finetune_config(model="", objective="classification")
    c.task.glue = task.name
    c.task.max_seq_length = 128
    c.optimizer.learning_rate = 2e-5
    c.train.global_batch_size = 32
    c.train.num_epochs = 3
    c.train.eval_every = 1000
    c.train.best_metric = "eval_" + MAIN_METRIC.get(task.name, "accuracy")
    if size == "tiny":
        tiny_finetune(c)
    return c
