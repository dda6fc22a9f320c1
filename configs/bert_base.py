"""BERT-base pre-training, the paper's recipe (Devlin et al. 2018, appendix A.2).

MLM + NSP, batch 256, AdamW lr 1e-4 (weight decay 0.01, linear warmup 10k steps, linear decay),
1M steps: 90% at 128 tokens (phase1), the last 10% at 512 (phase2, started from phase 1's export).

    flaxbert prepare corpus/ --tokenizer TOK --mode nsp --max-seq-length 128 --output data/s128
    flaxbert pretrain --config configs/bert_base.py:phase1 --workdir runs/bert1 \
        --config.data.train=data/s128
    flaxbert pretrain --config configs/bert_base.py:phase2 --workdir runs/bert2 \
        --config.data.train=data/s512 --config.init_from=runs/bert1/export/step_900000

`:tiny` switches to bert-tiny for a local run on a CPU. `:pod` is phase 2 (512 tokens, 80
predictions) on bert-large-uncased for a TPU slice of 256+ chips: batch 2048 in 2 microbatches,
bf16 compute, scanned layers, remat "dots", FSDP over every chip (flaxbert.training.config.pod_run;
measured with `flaxbert compile` in tpu_scripts/README.md):

    flaxbert compile --config configs/bert_base.py:pod --topology v5e:16x16
"""
from flaxbert.training.config import default_config, pod_run, tiny_run


def get_config(arg: str = "phase1"):
    if arg not in ("phase1", "phase2", "tiny", "pod"):
        raise ValueError(f"bert_base.py: argument {arg!r}; use phase1, phase2, tiny or pod")
    c = default_config()
    c.model = "bert-base-uncased"
    c.objective = "mlm_nsp"
    c.train.global_batch_size = 256
    c.optimizer.learning_rate = 1e-4
    c.optimizer.weight_decay = 0.01
    c.optimizer.decay = "linear"
    if arg in ("phase2", "pod"):
        c.train.num_steps = 100_000
        c.optimizer.warmup_steps = 1_000
        c.data.max_predictions_per_seq = 80
    else:
        c.train.num_steps = 900_000
        c.optimizer.warmup_steps = 10_000
        c.data.max_predictions_per_seq = 20
    c.checkpoint.save_every = 10_000
    if arg == "tiny":
        tiny_run(c, "bert-tiny")
    if arg == "pod":
        pod_run(c, "bert-large-uncased", global_batch_size=2048, num_microbatches=2)
    return c
