"""ELECTRA-small pre-training (Clark et al. 2020, appendix A): replaced-token detection with a
generator sharing the discriminator's embeddings, lambda 50, 128 tokens, batch 128, AdamW lr 5e-4,
10k warmup, 1M steps.

    flaxbert prepare corpus/ --tokenizer TOK --mode full-sentences --max-seq-length 128 --output data/e128
    flaxbert pretrain --config configs/electra_small.py --workdir runs/electra --config.data.train=data/e128

`:tiny` switches to electra-tiny (with electra-tiny-generator) for a local run.
"""
from flaxbert.training.config import default_config, tiny_run


def get_config(arg: str = ""):
    c = default_config()
    c.model = "electra-small-discriminator"
    c.objective = "rtd"
    c.objective_settings.generator = "electra-small-generator"
    c.objective_settings.rtd_weight = 50.0
    c.data.max_predictions_per_seq = 20
    c.train.global_batch_size = 128
    c.train.num_steps = 1_000_000
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 10_000
    c.checkpoint.save_every = 10_000
    if arg == "tiny":
        tiny_run(c, "electra-tiny")
        c.objective_settings.generator = "electra-tiny-generator"
    elif arg:
        raise ValueError(f"electra_small.py: argument {arg!r}; use nothing or tiny")
    return c
