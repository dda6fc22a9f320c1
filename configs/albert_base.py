"""ALBERT-base pre-training (Lan et al. 2019, section 4.1): MLM with n-gram masking (n <= 3) +
sentence-order prediction, 512 tokens (10% shorter), batch 4096, LAMB lr 0.00176, 125k steps.

    flaxbert prepare corpus/ --tokenizer TOK --mode sop --max-seq-length 512 --output data/a512
    flaxbert pretrain --config configs/albert_base.py --workdir runs/albert --config.data.train=data/a512

`:tiny` switches to albert-tiny for a local run.
"""
from flaxbert.training.config import default_config, tiny_run


def get_config(arg: str = ""):
    c = default_config()
    c.model = "albert-base-v2"
    c.objective = "mlm_sop"
    c.data.max_ngram = 3
    c.data.max_predictions_per_seq = 20
    c.train.global_batch_size = 4096
    c.train.num_steps = 125_000
    c.optimizer.name = "lamb"
    c.optimizer.learning_rate = 0.00176
    c.optimizer.warmup_steps = 3_125
    c.checkpoint.save_every = 5_000
    if arg == "tiny":
        # LAMB scales each update by the layer's weight norm: tiny models need a larger rate.
        tiny_run(c, "albert-tiny", learning_rate=1e-2)
    elif arg:
        raise ValueError(f"albert_base.py: argument {arg!r}; use nothing or tiny")
    return c
