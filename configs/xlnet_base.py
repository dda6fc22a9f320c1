"""XLNet-base pre-training with the permutation LM (Yang et al. 2019): partial prediction K=6 on
512-token sequences, Adam lr 4e-4 with warmup and linear decay, weight decay 0.01, eps 1e-6,
500k steps — the paper's pre-training hyperparameter table (given for XLNet-Large, batch 8192);
the batch here is 2048 for a base model, so tune the learning rate if you change it.

    flaxbert prepare corpus/ --tokenizer TOK --mode full-sentences --max-seq-length 512 --output data/x512
    flaxbert pretrain --config configs/xlnet_base.py --workdir runs/xlnet --config.data.train=data/x512

`:tiny` switches to xlnet-tiny for a local run.
"""
from flaxbert.training.config import default_config, tiny_run


def get_config(arg: str = ""):
    c = default_config()
    c.model = "xlnet-base-cased"
    c.objective = "plm"
    c.objective_settings.plm_K = 6
    c.data.masking = False  # the objective builds perm_mask / target_mapping inside the step
    c.train.global_batch_size = 2048
    c.train.num_steps = 500_000
    c.optimizer.learning_rate = 4e-4
    c.optimizer.warmup_steps = 40_000
    c.optimizer.eps = 1e-6
    c.checkpoint.save_every = 10_000
    if arg == "tiny":
        tiny_run(c, "xlnet-tiny")
    elif arg:
        raise ValueError(f"xlnet_base.py: argument {arg!r}; use nothing or tiny")
    return c
