"""The pre-training config: every field `flaxbert pretrain` reads, with its default.

Experiment files in configs/ start from `default_config()` and change only what their recipe
changes; `--config.<field>=<value>` overrides any field on the command line (ml_collections
checks the type). `check_config` turns bad values into one clear error before anything runs.
"""
from __future__ import annotations

import math
from pathlib import Path

import ml_collections

from flaxbert.models import registry
from flaxbert.training import optim


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "bert-tiny"  # a registered name (`flaxbert models`)
    # Config fields to replace, e.g. {"dtype": "bfloat16", "attention_impl": "cudnn"}.
    c.model_overrides = ml_collections.ConfigDict()
    # Size the vocabulary (and pad id) from the data's tokenizer instead of the registered config.
    c.vocab_from_data = True
    c.init_from = ""  # a transformers/flaxbert directory to start from (e.g. phase 2 from phase 1)

    c.objective = "mlm_nsp"  # see flaxbert.training.objectives.OBJECTIVES
    c.objective_settings = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # directories written by `flaxbert prepare`, comma-separated
    c.data.seed = 0
    c.data.shuffle_buffer = 10_000
    c.data.masking = True  # False for objectives that mask in the model (XLNet's PLM)
    # The mask rate: BERT's 15% (Devlin et al., 2019); MosaicBERT (Portes et al., 2023) and
    # "Should You Mask 15%?" (Wettig et al., 2023) use 30%, with max_predictions_per_seq to match.
    c.data.mlm_probability = 0.15
    # Predictions per row; 0 sizes them to the rate, round(mlm_probability * length).
    c.data.max_predictions_per_seq = 20
    # What a chosen token becomes: BERT's 80% [MASK] / 10% random / 10% kept; MosaicBERT and
    # "Cramming" (Geiping & Goldstein, 2023) use mask-only (1.0 / 0.0).
    c.data.mask_token_fraction = 0.8
    c.data.random_token_fraction = 0.1
    c.data.whole_word = False
    c.data.max_ngram = 1
    # Sequence-length warm-up: "LEN:FRACTION,..." of train.num_steps, shortest first, rows cut
    # to LEN (keeping their closing token) until the next stage; "" trains at the data's length.
    # BERT's own recipe ran 90% of steps at 128 then 10% at 512 (Devlin et al., 2019; "128:0.9,
    # 512:0.1" here); Li et al. (2022, "The Stability-Efficiency Dilemma") warm up in more stages.
    # Each length compiles the train step once more.
    c.data.seq_length_schedule = ""

    # name, learning_rate, warmup_steps, decay, end_learning_rate, power, b1, b2, eps,
    # weight_decay, clip_norm (0: no clipping); see flaxbert.training.optim.
    c.optimizer = ml_collections.ConfigDict(optim.DEFAULTS)

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 1000
    c.train.global_batch_size = 32
    c.train.num_microbatches = 1  # gradient accumulation inside the one jitted step
    c.train.seed = 0
    c.train.log_every = 10
    c.train.eval_every = 0  # 0: only at the end
    c.train.eval_batches = -1  # -1: whole validation split, in order; 0: none; N: N batches
    c.train.max_consecutive_nonfinite = 10  # skipped NaN/inf steps in a row before halting
    c.train.progress_bar = True

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.save_every = 500
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: every device not used by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # Logical-axis -> mesh-axis rules; empty means flaxbert.layers.sharding.LOGICAL_AXIS_RULES.
    c.mesh.rules = ()
    # A dimension its rule's mesh axes do not divide: "replicate" it (over the axes that do not
    # divide), or "error" (the Trainer names the parameter before compiling).
    c.mesh.indivisible = "replicate"

    c.export = ml_collections.ConfigDict()
    c.export.at_end = True  # write <workdir>/export/<...> transformers directories when done
    return c


def tiny_run(c: ml_collections.ConfigDict, model: str, *, learning_rate: float = 1e-3
             ) -> ml_collections.ConfigDict:
    """A recipe's `:tiny` switch: the same recipe on a tiny registered model, sized for a CPU."""
    c.model = model
    c.data.max_predictions_per_seq = min(c.data.max_predictions_per_seq, 20)
    c.train.num_steps, c.train.global_batch_size, c.train.num_microbatches = 300, 32, 1
    c.optimizer.learning_rate, c.optimizer.warmup_steps = learning_rate, 30
    c.checkpoint.save_every = 100
    return c


def pod_run(c: ml_collections.ConfigDict, model: str, *, global_batch_size: int,
            num_microbatches: int, remat_policy: str = "dots") -> ml_collections.ConfigDict:
    """A recipe's `:pod` switch: the recipe on a large registered model at 512 tokens, for a TPU
    slice of 256 chips or more (v5e-256, v5p-512): bf16 compute over fp32 params, the layers
    under `nn.scan` (24 unrolled layers compile far slower), `remat_policy`, gradient
    accumulation over `num_microbatches`, and FSDP over every chip. `flaxbert compile` measured
    them: tpu_scripts/README.md."""
    c.model = model
    c.model_overrides.dtype = "bfloat16"
    c.model_overrides.scan_layers = True
    c.model_overrides.remat_policy = remat_policy
    c.train.global_batch_size, c.train.num_microbatches = global_batch_size, num_microbatches
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    return c


# Fields whose None is meaningful (every other field must have its default's type).
NULLABLE = ("checkpoint.keep",)


def _check_types(c, defaults, need, prefix="") -> None:
    """ml_collections lets a bool stand for an int and a None for anything; refuse both."""
    for key, default in defaults.items():
        name, value = prefix + key, c.get(key, default)
        if isinstance(default, ml_collections.ConfigDict):
            _check_types(value, default, need, name + ".")
            continue
        if isinstance(default, (tuple, list)) or (value is None and name in NULLABLE):
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = (isinstance(value, int if isinstance(default, int) else (int, float))
                  and not isinstance(value, bool) and math.isfinite(value))
        else:
            ok = isinstance(value, type(default))
        kind = "a finite float" if isinstance(default, float) else type(default).__name__
        need(ok, f"{name}={value!r} must be {kind}, got {type(value).__name__}")


def check_config(c: ml_collections.ConfigDict, source: str | None = None) -> None:
    """Raise ValueError naming the first bad field, after `source` (the config file) if given:
    "configs/bert_base.py: optimizer.b1=5.0 must be in [0, 1)"."""
    from flaxbert.training.objectives import OBJECTIVES  # it imports the model stack

    prefix = f"{source}: " if source else "config: "

    def need(ok, message):
        if not ok:
            raise ValueError(prefix + message)

    task = "task" in c  # a fine-tuning config (flaxbert.training.finetune.finetune_config)
    if task:
        from flaxbert.training.finetune import finetune_config
    _check_types(c, finetune_config() if task else default_config(), need)
    t, o, d = c.train, c.optimizer, c.data
    need(t.num_steps >= 1, f"train.num_steps={t.num_steps} must be >= 1")
    need(t.global_batch_size >= 1, f"train.global_batch_size={t.global_batch_size} must be >= 1")
    need(t.num_microbatches >= 1 and t.global_batch_size % t.num_microbatches == 0,
         f"train.num_microbatches={t.num_microbatches} must be >= 1 and divide "
         f"train.global_batch_size={t.global_batch_size}")
    need(t.log_every >= 1, f"train.log_every={t.log_every} must be >= 1")
    need(t.eval_every >= 0, f"train.eval_every={t.eval_every} must be >= 0")
    need(t.max_consecutive_nonfinite >= 1,
         f"train.max_consecutive_nonfinite={t.max_consecutive_nonfinite} must be >= 1")
    need(t.seed >= 0, f"train.seed={t.seed} must be >= 0")
    need(c.objective in OBJECTIVES,
         f"objective={c.objective!r}; choose one of {sorted(OBJECTIVES)}")
    need(bool(d.train) or (task and bool(d.validation)),
         "data.train is empty; give the task's training file "
                        "(--config.data.train=FILE)" if task else "data.train is empty; give "
                        "the directory `flaxbert prepare` wrote (--config.data.train=DIR)")
    if task:
        need(bool(c.model), "model is empty; give the checkpoint directory to fine-tune "
                            "(--config.model=DIR) or a registered name")
        need(c.task.max_seq_length >= 1,
             f"task.max_seq_length={c.task.max_seq_length} must be >= 1")
        packable = sorted(k for k, v in OBJECTIVES.items() if getattr(v, "packable", False))
        need(not c.task.pack or c.objective in packable,
             f"task.pack=True: objective {c.objective!r} cannot train on packed rows (only "
             f"{packable} can); use the default length buckets")
        need(not c.task.pack or c.task.get("long_inputs", "truncate") == "truncate",
             f"task.pack=True packs short examples, task.long_inputs="
             f"{c.task.get('long_inputs')!r} cuts long ones into full rows: use one or the other")
        need(c.task.overflow in ("truncate", "error"),
             f"task.overflow={c.task.overflow!r}; choose 'truncate' or 'error'")
        need(c.train.num_epochs >= 0, f"train.num_epochs={c.train.num_epochs} must be >= 0")
        need(c.train.best_mode in ("max", "min"),
             f"train.best_mode={c.train.best_mode!r}; choose 'max' or 'min'")
        need(c.train.early_stopping_patience >= 0, "train.early_stopping_patience="
             f"{c.train.early_stopping_patience} must be >= 0")
    need(0 < d.mlm_probability < 1, f"data.mlm_probability={d.mlm_probability} must be in (0, 1)")
    need(d.max_predictions_per_seq >= 0,
         f"data.max_predictions_per_seq={d.max_predictions_per_seq} must be >= 1, or 0 to size "
         "it to the mask rate")
    for name in ("mask_token_fraction", "random_token_fraction"):
        need(0 <= d[name] <= 1, f"data.{name}={d[name]} must be in [0, 1]")
    need(d.mask_token_fraction + d.random_token_fraction <= 1 + 1e-9,
         f"data.mask_token_fraction + data.random_token_fraction = {d.mask_token_fraction} + "
         f"{d.random_token_fraction} must be <= 1 (the rest stay unchanged)")
    from flaxbert.data.length_schedule import parse_length_schedule
    try:
        parse_length_schedule(d.seq_length_schedule, t.num_steps)
    except ValueError as e:
        need(False, str(e))
    need(d.max_ngram >= 1, f"data.max_ngram={d.max_ngram} must be >= 1")
    need(d.seed >= 0, f"data.seed={d.seed} must be >= 0")
    need(d.shuffle_buffer >= 0, f"data.shuffle_buffer={d.shuffle_buffer} must be >= 0")
    need(c.checkpoint.save_every >= 1,
         f"checkpoint.save_every={c.checkpoint.save_every} must be >= 1")
    need(c.checkpoint.keep is None or c.checkpoint.keep >= 1,
         f"checkpoint.keep={c.checkpoint.keep} must be >= 1 (or None to keep all)")
    for axis in ("data", "fsdp", "tensor"):
        size = c.mesh[axis]
        need(size == -1 or size >= 1, f"mesh.{axis}={size} must be >= 1 or -1")
    need(c.mesh.get("indivisible", "replicate") in ("replicate", "error"),
         f"mesh.indivisible={c.mesh.get('indivisible')!r}; choose 'replicate' or 'error'")
    try:
        optim.check_optimizer(o, t.num_steps)
        if task and Path(c.model).is_dir():
            return  # its config.json is checked when it loads, naming the file
        model = registry.get_config(c.model)
    except ValueError as e:
        raise ValueError(prefix + str(e)) from None
    try:  # vocab_size (and the pad id) may still change to the data's; the rest is final here
        model.replace(**(c.model_overrides.to_dict() if c.model_overrides else {}))
    except ValueError as e:
        raise ValueError(f"{prefix}model_overrides: {e}") from None
