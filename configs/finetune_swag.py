"""SWAG multiple choice as the BERT paper fine-tuned it (section 4.4: lr 2e-5, batch 16,
3 epochs), at run_swag's 80 tokens per (context, ending) pair; accuracy picks the best
evaluation. Columns as HF's swag dataset: sent1, sent2, ending0..3, label.

    flaxbert finetune --config configs/finetune_swag.py --workdir runs/swag \
        --config.model=checkpoints/bert-base-uncased \
        --config.data.train=swag/train.csv --config.data.validation=swag/val.csv

`:tiny` trains for 100 steps at 64 tokens, for a local CPU run.
"""
from flaxbert.training.finetune import finetune_config, tiny_finetune


def get_config(arg: str = ""):
    if arg not in ("", "tiny"):
        raise ValueError(f"finetune_swag.py: argument {arg!r}; use nothing or tiny")
    c = finetune_config(model="", objective="multiple_choice")
    c.task.max_seq_length = 80
    c.optimizer.learning_rate = 2e-5
    c.train.global_batch_size = 16
    c.train.num_epochs = 3
    c.train.eval_every = 2000
    c.train.best_metric = "eval_accuracy"
    if arg == "tiny":
        tiny_finetune(c)
    return c
