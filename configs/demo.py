"""The `make demo` run: a tiny BERT pre-trained for a few minutes on a 2-core CPU.

MLM + NSP on whatever `flaxbert prepare` made (the demo uses Python's standard-library
docstrings, in 64-token pairs), with whole-word masking; sized so the loss falls visibly within
about 3 minutes on 2 cores.

    flaxbert pretrain --config configs/demo.py --workdir /tmp/demo --config.data.train=DATA
"""
from flaxbert.training.config import default_config


def get_config(arg: str = ""):
    if arg:
        raise ValueError(f"demo.py takes no argument (got {arg!r})")
    c = default_config()
    c.model = "bert-tiny"
    c.model_overrides.hidden_dropout_prob = 0.0
    c.model_overrides.attention_probs_dropout_prob = 0.0
    c.objective = "mlm_nsp"
    c.data.whole_word = True
    c.data.max_predictions_per_seq = 10  # 15% of the demo's 64-token sequences
    c.train.num_steps = 600
    c.train.global_batch_size = 64
    c.train.log_every = 50
    c.train.eval_every = 300
    c.train.eval_batches = 5
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 50
    c.checkpoint.save_every = 100
    c.checkpoint.keep = 2
    return c
