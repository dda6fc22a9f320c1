"""RoBERTa-base pre-training (Liu et al. 2019, table 9): MLM only with dynamic masking, full
sentences packed across documents at 512 tokens, batch 8k, 500k steps, AdamW lr 6e-4 with
beta2 0.98, eps 1e-6, weight decay 0.01, 24k warmup steps, linear decay.

    flaxbert prepare corpus/ --tokenizer TOK --mode full-sentences --max-seq-length 512 --output data/r512
    flaxbert pretrain --config configs/roberta_base.py --workdir runs/roberta --config.data.train=data/r512

`:tiny` switches to roberta-tiny for a local run.
"""
from flaxbert.training.config import default_config, tiny_run


def get_config(arg: str = ""):
    c = default_config()
    c.model = "roberta-base"
    c.objective = "mlm"
    c.data.max_predictions_per_seq = 77  # 15% of 512
    c.train.global_batch_size = 8192
    c.train.num_steps = 500_000
    c.optimizer.learning_rate = 6e-4
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-6
    c.optimizer.warmup_steps = 24_000
    c.checkpoint.save_every = 10_000
    if arg == "tiny":
        tiny_run(c, "roberta-tiny")
    elif arg:
        raise ValueError(f"roberta_base.py: argument {arg!r}; use nothing or tiny")
    return c
