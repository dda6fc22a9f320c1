"""Extractive question answering (SQuAD v1.1, or v2.0 with `:v2`) as transformers' run_qa README
runs it for bert-base-uncased: lr 3e-5, batch 12, 2 epochs, windows of 384 tokens with a stride
of 128, the best evaluation by F1.

    flaxbert finetune --config configs/finetune_squad.py --workdir runs/squad \
        --config.model=checkpoints/bert-base-uncased \
        --config.data.train=train-v1.1.json --config.data.validation=dev-v1.1.json

`:v2` lets questions have no answer (the null answer wins by task.null_score_diff_threshold);
`:tiny` trains for 100 steps at 64 tokens (stride 32), for a local CPU run; `:v2,tiny` both.
"""
from flaxbert.training.finetune import finetune_config, tiny_finetune


def get_config(arg: str = ""):
    options = {a.strip() for a in arg.split(",") if a.strip()}
    if options - {"v2", "tiny"}:
        raise ValueError(f"finetune_squad.py: argument {arg!r}; use nothing, v2, tiny or v2,tiny")
    c = finetune_config(model="", objective="question_answering")
    c.task.max_seq_length = 384
    c.task.doc_stride = 128
    c.task.max_query_length = 64
    c.task.version_2 = "v2" in options
    c.optimizer.learning_rate = 3e-5
    c.train.global_batch_size = 12
    c.train.num_epochs = 2
    c.train.eval_every = 2000
    c.train.best_metric = "eval_f1"
    if "tiny" in options:
        tiny_finetune(c)
        c.task.doc_stride = 32
        c.task.max_query_length = 16
    return c
