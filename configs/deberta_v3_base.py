"""DeBERTa-v3-base pre-training (He et al. 2021): ELECTRA-style replaced-token detection with
gradient-disentangled embedding sharing (GDES). The generator is as wide as the discriminator and
half as deep (6 layers), as in the official rtd_base.json; it shares its token embeddings E, the
discriminator embeds with stop_gradient(E) + its own zero-initialised delta, and the export folds
the delta in. loss = generator MLM + rtd_weight x RTD with rtd_weight 10, the official code's
`rtd_lambda` default (DeBERTa/apps/tasks/rtd_task.py; its rtd.sh keeps it; ELECTRA used 50).
"Pre-trained using the same settings as DeBERTa": 512 tokens, batch 2k, AdamW lr 2e-4
(b1 0.9, b2 0.999, eps 1e-6, weight decay 0.01, clipping 1.0: the defaults), 10k warmup,
linear decay, 1M steps; whole-word masking of 15%, every chosen token [MASK] (the official RTD
task's mask generator).

    flaxbert prepare corpus/ --tokenizer TOK --mode full-sentences --max-seq-length 512 --output data/d512
    flaxbert pretrain --config configs/deberta_v3_base.py --workdir runs/deberta-v3 \
        --config.data.train=data/d512

The export holds generator/ (loads in transformers as DebertaV2ForMaskedLM) and discriminator/
(transformers has no class for its replaced-token head: DebertaV2Model / AutoModel load the
backbone and skip the head's `mask_predictions.*` weights). The paper's comparison reruns with
--config.objective_settings.embedding_sharing=es (ELECTRA's sharing) or nes (none).

`:tiny` switches to deberta-v3-tiny (a 1-layer generator) for a local run. `:pod` is the same
recipe on deberta-v3-large (its generator 12 layers) for a TPU slice of 256+ chips: batch 2048 in
2 microbatches, bf16 compute, scanned layers, remat "dots", FSDP over every chip
(flaxbert.training.config.pod_run; measured with `flaxbert compile` in tpu_scripts/README.md):

    flaxbert compile --config configs/deberta_v3_base.py:pod --topology v5e:16x16
"""
from flaxbert.training.config import default_config, pod_run, tiny_run


def get_config(arg: str = ""):
    c = default_config()
    c.model = "deberta-v3-base"
    c.objective = "rtd"
    c.objective_settings.embedding_sharing = "gdes"
    c.objective_settings.generator_size = 1.0  # the discriminator's width ...
    c.objective_settings.generator_depth = 0.5  # ... and half its layers
    c.objective_settings.rtd_weight = 10.0
    # The official RTD task masks every chosen token ([MASK] always: keep_prob=0, mask_prob=1).
    c.data.mask_token_fraction, c.data.random_token_fraction = 1.0, 0.0
    c.data.whole_word = True
    c.data.max_predictions_per_seq = 77
    c.train.global_batch_size = 2048
    c.train.num_steps = 1_000_000
    c.optimizer.learning_rate = 2e-4
    c.optimizer.warmup_steps = 10_000
    c.checkpoint.save_every = 10_000
    if arg == "tiny":
        tiny_run(c, "deberta-v3-tiny")
    elif arg == "pod":
        pod_run(c, "deberta-v3-large", global_batch_size=2048, num_microbatches=2)
    elif arg:
        raise ValueError(f"deberta_v3_base.py: argument {arg!r}; use nothing, tiny or pod")
    return c
