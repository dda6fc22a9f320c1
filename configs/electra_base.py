"""ELECTRA-base pre-training (Clark et al. 2020, appendix A): replaced-token detection, lambda 50,
512 tokens, batch 256, AdamW lr 2e-4, 10k warmup, 766k steps, generator electra-base-generator.

    flaxbert pretrain --config configs/electra_base.py --workdir runs/electra-base --config.data.train=data/e512

`:pod` is ELECTRA-large (electra-large-discriminator with electra-large-generator, the paper's
batch 2048, here in 2 microbatches) for a TPU slice of 256+ chips: bf16 compute, scanned layers,
remat "dots", FSDP over every chip (flaxbert.training.config.pod_run; measured with
`flaxbert compile` in tpu_scripts/README.md):

    flaxbert compile --config configs/electra_base.py:pod --topology v5e:16x16
"""
from flaxbert.training.config import default_config, pod_run


def get_config(arg: str = ""):
    if arg not in ("", "pod"):
        raise ValueError(f"electra_base.py: argument {arg!r}; use nothing or pod "
                         "(for a local run use configs/electra_small.py:tiny)")
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
    if arg == "pod":
        pod_run(c, "electra-large-discriminator", global_batch_size=2048, num_microbatches=2)
        c.objective_settings.generator = "electra-large-generator"
    return c
