"""Multi-task GLUE fine-tuning: one shared encoder, one classification head per task, as MT-DNN
(Liu et al., 2019) trains it: lr 5e-5, batch 32, 5 epochs over all the tasks' examples, each
mini-batch from one task, the tasks sampled in proportion to their sizes (MT-DNN shuffles every
task's mini-batches together). MT-DNN used Adamax; this recipe keeps fine-tuning's AdamW.
`--config.multitask.sampling=temperature --config.multitask.temperature=2` mixes the tasks
as T5 (Raffel et al., 2020, §3.5.2) does, p_i ∝ n_i^(1/T).

    flaxbert finetune --config configs/finetune_multitask.py --workdir runs/glue_mt \
        --config.model=checkpoints/bert-base-uncased --config.data.train=sst2,mrpc,qnli,rte \
        --config.multitask.tasks.sst2.train=glue/SST-2/train.tsv \
        --config.multitask.tasks.sst2.validation=glue/SST-2/dev.tsv \
        --config.multitask.tasks.mrpc.train=glue/MRPC/train.tsv ...
    # or straight from tensorflow-datasets:
    #   --config.multitask.tasks.sst2.train=tfds:glue/sst2:train

data.train picks the tasks (any of the GLUE classification blocks below); each is evaluated on
its own validation file (`eval_sst2_accuracy`, `eval_mrpc_f1`, ...) and exported to
<workdir>/export/step_N/<task>. STS-B (regression) is not a classification head, so it has no
block. `:tiny` trains sst2 and mrpc for 100 steps at 64 tokens, for a local CPU run.
"""
from flaxbert.training.finetune import finetune_config, tiny_finetune
from flaxbert.training.multitask import task_block

GLUE_CLASSIFICATION = ("cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "wnli")


def get_config(arg: str = ""):
    if arg not in ("", "tiny"):
        raise ValueError(f"finetune_multitask.py: argument {arg!r}; use nothing or tiny")
    c = finetune_config(model="", objective="multitask_classification")
    c.data.train = "sst2,mrpc,qnli,rte"
    for name in GLUE_CLASSIFICATION:
        c.multitask.tasks[name] = task_block(glue=name)
    c.multitask.sampling, c.multitask.temperature = "proportional", 1.0
    c.task.max_seq_length = 128
    c.optimizer.learning_rate = 5e-5
    c.train.global_batch_size = 32
    c.train.num_epochs = 5
    c.train.eval_every = 1000
    c.train.best_metric = ""  # several tasks: name one metric (eval_sst2_accuracy) to keep a best
    if arg == "tiny":
        tiny_finetune(c)
        c.data.train = "sst2,mrpc"
    return c
