"""ELECTRA-base pre-training (Clark et al. 2020, appendix A): replaced-token detection, lambda 50,
512 tokens, batch 256, AdamW lr 2e-4, 10k warmup, 766k steps, generator electra-base-generator.

    flaxbert pretrain --config configs/electra_base.py --workdir runs/electra-base --config.data.train=data/e512
"""
from flaxbert.training.config import default_config


def get_config(arg: str = ""):
    if arg:
        raise ValueError(f"electra_base.py takes no argument (got {arg!r}); "
                         "for a local run use configs/electra_small.py:tiny")
    c = default_config()
    c.model = "electra-base-discriminator"
    c.objective = "rtd"
    c.objective_settings.generator = "electra-base-generator"
    c.objective_settings.rtd_weight = 50.0
    c.data.max_predictions_per_seq = 77
    c.train.global_batch_size = 256
    c.train.num_steps = 766_000
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 10_000
    c.checkpoint.save_every = 10_000
    return c
