"""DeBERTa-v3-base backbone trained with MLM (DeBERTa v1/v2's objective, He et al. 2020): 512
tokens, batch 2k, AdamW lr 2e-4 (the paper's base setting), 10k warmup. DeBERTa-v3's own recipe is
ELECTRA-style RTD with gradient-disentangled embedding sharing, which flaxbert does not provide
(the `rtd` objective is ELECTRA's); see the README.

`:tiny` switches to deberta-v3-tiny for a local run.
"""
from flaxbert.training.config import default_config, tiny_run


def get_config(arg: str = ""):
    c = default_config()
    c.model = "deberta-v3-base"
    c.objective = "mlm"
    c.data.whole_word = True
    c.data.max_predictions_per_seq = 77
    c.train.global_batch_size = 2048
    c.train.num_steps = 1_000_000
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 10_000
    c.checkpoint.save_every = 10_000
    if arg == "tiny":
        tiny_run(c, "deberta-v3-tiny")
    elif arg:
        raise ValueError(f"deberta_v3_base.py: argument {arg!r}; use nothing or tiny")
    return c
