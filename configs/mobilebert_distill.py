"""MobileBERT (Sun et al. 2020) taught by a wide teacher, in two stages as the paper does:

1. knowledge transfer (`""` / `transfer`): the student's every layer learns the teacher's layer
   of the same depth, its output feature map (MSE) and its attention distributions, with the
   TinyBERT layer-wise objective (`tinybert`, flaxbert/training/tinybert.py: hidden-state MSE
   plus attention MSE of the probabilities; the paper uses the KL divergence of the attention
   distributions). The embeddings' and predictions' terms are off: the paper transfers layer
   outputs and attentions only.
2. pre-training distillation (`distill`): from stage 1's export, the MLM loss and the soft
   cross entropy against the teacher's MLM logits, 0.5 each (the paper's alpha = 0.5), with the
   `distillation` objective (its hidden-state cosine off).

    flaxbert pretrain --config configs/mobilebert_distill.py --workdir runs/mb-transfer \
        --config.data.train=data/s128 --config.objective_settings.teacher=path/to/ib-bert
    flaxbert pretrain --config configs/mobilebert_distill.py:distill --workdir runs/mb-distill \
        --config.data.train=data/s128 --config.objective_settings.teacher=path/to/ib-bert \
        --config.init_from=runs/mb-transfer/export/step_N

The teacher is a transformers / flaxbert masked-LM directory with MobileBERT's depth (24), width
(512), head count (4) and vocabulary: the paper's IB-BERT_LARGE is MobileBERT with an inverted
(wide) bottleneck, a `model_type: mobilebert` config with, for instance,
intra_bottleneck_size=1024, intermediate_size=4096, num_feedforward_networks=1.

What differs from the paper: its progressive transfer trains one layer at a time (24 stages,
the layers below frozen); here all layers learn together (the paper's "auxiliary" variant of
the same losses), and the next-sentence loss of its distillation stage is left out (the
`distillation` objective has none). Batch 4096 with LAMB as in the paper; the learning rates,
warm-up and step counts are this recipe's choices.

`:tiny` is stage 1 on mobilebert-tiny taught by a randomly initialised, wide-bottleneck
mobilebert-tiny (a smoke test only).
"""
from flaxbert.training.config import default_config, tiny_run


def _common(c):
    c.model = "mobilebert-uncased"
    c.vocab_from_data = False  # the teacher's vocabulary (the data must use its tokenizer)
    c.data.max_predictions_per_seq = 20
    c.train.global_batch_size = 4096
    c.train.num_microbatches = 8
    c.optimizer.name = "lamb"
    c.optimizer.warmup_steps = 10_000
    c.checkpoint.save_every = 5_000
    c.objective_settings.teacher = ""  # required: the teacher directory
    c.objective_settings.teacher_seed = 0
    return c


def transfer_config():
    c = _common(default_config())
    c.objective = "tinybert"
    c.objective_settings.layer_map = ()  # uniform: equal depths map layer m to layer m
    c.objective_settings.temperature = 1.0
    c.objective_settings.alpha_embedding = 0.0
    c.objective_settings.alpha_hidden = 1.0
    c.objective_settings.alpha_attention = 1.0
    c.objective_settings.alpha_prediction = 0.0
    c.train.num_steps = 240_000
    c.optimizer.learning_rate = 1e-3
    return c


def distill_config():
    c = _common(default_config())
    c.objective = "distillation"
    c.objective_settings.temperature = 1.0
    c.objective_settings.alpha_ce = 0.5
    c.objective_settings.alpha_mlm = 0.5
    c.objective_settings.alpha_cos = 0.0
    c.objective_settings.init_student_from_teacher = False  # it starts from stage 1 (init_from)
    c.train.num_steps = 500_000
    c.optimizer.learning_rate = 1e-3
    return c


def get_config(arg: str = ""):
    if arg in ("", "transfer"):
        return transfer_config()
    if arg == "distill":
        return distill_config()
    if arg == "tiny":
        c = transfer_config()
        tiny_run(c, "mobilebert-tiny")
        c.optimizer.name = "adamw"  # LAMB's trust ratio is meant for large batches
        c.objective_settings.teacher = "mobilebert-tiny"
        c.objective_settings.teacher_seed = 1
        # The same depth, width and heads; a bottleneck as wide as the hidden state, one FFN.
        c.objective_settings.teacher_overrides = {"intra_bottleneck_size": 128,
                                                  "intermediate_size": 256,
                                                  "num_feedforward_networks": 1}
        return c
    raise ValueError(f"mobilebert_distill.py: argument {arg!r}; use nothing (transfer), "
                     "distill or tiny")
