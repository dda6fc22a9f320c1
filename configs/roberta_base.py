"""RoBERTa-base pre-training (Liu et al. 2019, table 9): MLM only with dynamic masking, full
sentences packed across documents at 512 tokens, batch 8k, 500k steps, AdamW lr 6e-4 with
beta2 0.98, eps 1e-6, weight decay 0.01, 24k warmup steps, linear decay.

    flaxbert prepare corpus/ --tokenizer TOK --mode full-sentences --max-seq-length 512 --output data/r512
    flaxbert pretrain --config configs/roberta_base.py --workdir runs/roberta --config.data.train=data/r512

`:tiny` switches to roberta-tiny for a local run. `:pod` is the same recipe on roberta-large for
a TPU slice of 256+ chips: the batch of 8k in 8 microbatches, bf16 compute, scanned layers, remat
"dots", FSDP over every chip (flaxbert.training.config.pod_run; measured with `flaxbert compile`
in tpu_scripts/README.md):

    flaxbert compile --config configs/roberta_base.py:pod --topology v5e:16x16
"""
from flaxbert.training.config import default_config, pod_run, tiny_run


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
    elif arg == "pod":
        pod_run(c, "roberta-large", global_batch_size=8192, num_microbatches=8)
    elif arg:
        raise ValueError(f"roberta_base.py: argument {arg!r}; use nothing, tiny or pod")
    return c
