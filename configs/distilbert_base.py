"""DistilBERT pre-training (Sanh et al. 2019): a 6-layer student taught by BERT-base with
soft-target KL at temperature 2 (weight 5), MLM (weight 2) and a cosine loss on the hidden states
(weight 1); dynamic masking, no NSP; AdamW lr 5e-4, batch ~4k sequences via accumulation.

    flaxbert pretrain --config configs/distilbert_base.py --workdir runs/distil \
        --config.data.train=data/r512 --config.objective_settings.teacher=path/to/bert-base-uncased

`:tiny` uses distilbert-tiny taught by a randomly initialised 4-layer bert-tiny (a smoke test
only).
"""
from flaxbert.training.config import default_config, tiny_run


def get_config(arg: str = ""):
    c = default_config()
    c.model = "distilbert-base-uncased"
    c.objective = "distillation"
    # A transformers/flaxbert directory holding the trained teacher (required: e.g. bert-base-uncased
    # converted with `flaxbert convert`). A registered name with teacher_seed gives a randomly
    # initialised teacher, which only the :tiny smoke test uses.
    c.objective_settings.teacher = ""
    c.objective_settings.temperature = 2.0
    c.objective_settings.alpha_ce = 5.0
    c.objective_settings.alpha_mlm = 2.0
    c.objective_settings.alpha_cos = 1.0
    # The paper's initialisation: the teacher's embeddings, MLM head and every second layer.
    c.objective_settings.init_student_from_teacher = True
    # The student predicts over the teacher's vocabulary (the data must use its tokenizer).
    c.vocab_from_data = False
    c.data.max_predictions_per_seq = 77
    c.train.global_batch_size = 4096
    c.train.num_microbatches = 8
    c.train.num_steps = 100_000
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 2_000
    c.checkpoint.save_every = 5_000
    if arg == "tiny":
        tiny_run(c, "distilbert-tiny")
        c.objective_settings.teacher = "bert-tiny"
        c.objective_settings.teacher_seed = 0
        # 4 teacher layers, so that every second one fills distilbert-tiny's 2.
        c.objective_settings.teacher_overrides = {"num_hidden_layers": 4}
    elif arg:
        raise ValueError(f"distilbert_base.py: argument {arg!r}; use nothing or tiny")
    return c
