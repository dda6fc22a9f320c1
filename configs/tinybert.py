"""TinyBERT (Jiao et al. 2020): a 4-layer, 312-wide student (12 heads, 1200 feed-forward) learns
BERT-base's embeddings, hidden states (through learned W_e / W_h, 312 -> 768) and attentions of
layers 3, 6, 9, 12, first on pre-training text (general stage), then on a task (task stage:
intermediate layers, then predictions), as the paper does. The objectives and their settings are
in flaxbert/training/tinybert.py; the projections train with the student and are not exported.

    # 1. general distillation (the paper: 3 epochs of English Wikipedia at 128 tokens)
    flaxbert pretrain --config configs/tinybert.py --workdir runs/tinybert \
        --config.data.train=data/s128 --config.objective_settings.teacher=path/to/bert-base-uncased
    # 2. task distillation, intermediate layers, from the general student and a fine-tuned teacher
    flaxbert finetune --config configs/tinybert.py:task --workdir runs/tb-sst2-1 \
        --config.model=runs/tinybert/export/step_N --config.task.glue=sst2 \
        --config.data.train=train.tsv --config.data.validation=dev.tsv \
        --config.objective_settings.teacher=path/to/bert-base-sst2
    # 3. task distillation, predictions (soft cross entropy at temperature 1)
    flaxbert finetune --config configs/tinybert.py:task_prediction --workdir runs/tb-sst2-2 \
        --config.model=runs/tb-sst2-1/export/step_M ... (the same data and teacher)

Arguments: "" (general), `tiny` (general, a 2-layer 128-wide 4-head bert-tiny taught by a
randomly initialised bert-mini: a smoke test only), `task`, `task_prediction`.

objective_settings (both objectives; `flaxbert pretrain --help` lists the rest of the config):
    teacher            a transformers / flaxbert directory ("masked-lm" for the general stage, a
                       fine-tuned `...ForSequenceClassification` for the task stage), or a
                       registered name initialised from teacher_seed (tests only)
    teacher_seed, teacher_overrides   the registered teacher's seed and config fields
    layer_map          () for the uniform map g(m) = m * N // M, or one teacher layer (1-based)
                       per student layer, e.g. (3, 6, 9, 12)
    alpha_embedding, alpha_hidden, alpha_attention, alpha_prediction   the four weights
    temperature        of the prediction layer's soft cross entropy (the paper: 1)
Attention is compared as probabilities (what flaxbert's models return), the student and the
teacher need the same number of heads and the same vocabulary (tokenizer). The paper's task-stage
data augmentation (GloVe / BERT word replacement) is not part of this recipe.
"""
from flaxbert.training.config import default_config, tiny_run
from flaxbert.training.finetune import finetune_config

# TinyBERT_4's shape: BERT-base's vocabulary and positions with 4 layers of 312.
TINYBERT_4 = {"num_hidden_layers": 4, "hidden_size": 312, "num_attention_heads": 12,
              "intermediate_size": 1200}


def _settings(c, **alphas):
    c.objective_settings.teacher = ""  # required: the teacher directory
    c.objective_settings.teacher_seed = 0
    c.objective_settings.layer_map = ()
    c.objective_settings.temperature = 1.0
    for term in ("embedding", "hidden", "attention", "prediction"):
        c.objective_settings[f"alpha_{term}"] = alphas.get(term, 1.0)


def general_config():
    c = default_config()
    c.model = "bert-base-uncased"
    for key, value in TINYBERT_4.items():
        c.model_overrides[key] = value
    c.objective = "tinybert"
    _settings(c, prediction=0.0)  # the paper's general stage: intermediate layers only
    c.vocab_from_data = False  # the teacher's vocabulary (the data must use its tokenizer)
    c.data.max_predictions_per_seq = 20
    # Batch 256 as the released code's README runs it, lr 5e-5 and 10% warmup its defaults;
    # the paper trains 3 epochs at 128 tokens: set num_steps from your corpus.
    c.train.global_batch_size = 256
    c.train.num_steps = 100_000
    c.optimizer.learning_rate = 5e-5
    c.optimizer.warmup_steps = 10_000
    c.checkpoint.save_every = 5_000
    return c


def task_config(prediction: bool):
    """The paper's task stage: intermediate layers for 20 epochs at lr 5e-5 (10 on tasks of
    over 100k examples), then the predictions for 3 epochs at an lr from {1e-5, 2e-5, 3e-5}
    (3e-5 here), batch 32, 128 tokens; temperature 1."""
    # model: the student directory (the general stage's export), whose size it keeps.
    c = finetune_config(model="", objective="tinybert_task")
    if prediction:
        _settings(c, embedding=0.0, hidden=0.0, attention=0.0, prediction=1.0)
        c.optimizer.learning_rate, c.train.num_epochs = 3e-5, 3
    else:
        _settings(c, prediction=0.0)
        c.optimizer.learning_rate, c.train.num_epochs = 5e-5, 20
    c.task.max_seq_length = 128
    c.train.global_batch_size = 32
    c.train.eval_every = 1000
    c.train.best_metric = "eval_accuracy"
    return c


def get_config(arg: str = ""):
    if arg in ("", "general"):
        return general_config()
    if arg == "tiny":
        c = general_config()
        c.model_overrides = type(c.model_overrides)()
        tiny_run(c, "bert-tiny")
        c.model_overrides.num_attention_heads = 4  # the teacher's head count
        c.objective_settings.teacher = "bert-mini"  # 4 layers of 256: map (2, 4), W 128 -> 256
        c.objective_settings.teacher_seed = 0
        return c
    if arg in ("task", "task_prediction"):
        return task_config(prediction=arg == "task_prediction")
    raise ValueError(f"tinybert.py: argument {arg!r}; use nothing (general), tiny, task or "
                     "task_prediction")
