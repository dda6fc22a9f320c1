"""The `make demo` fine-tune: which standard-library package a docstring comes from.

flaxbert/demo.py writes the task (six packages, ~120 training docstrings each, JSON lines of
{"text", "label"}) and runs this recipe twice with the same steps: from the pre-trained demo
export and from a randomly initialised copy of it, so the gap between the two is what
pre-training is worth. Sized for a 2-core CPU: short texts, a high learning rate for a tiny model.

    flaxbert finetune --config configs/demo_finetune.py --workdir /tmp/ft \\
        --config.model=EXPORT --config.data.train=train.jsonl \\
        --config.data.validation=validation.jsonl

`:tiny` runs a few steps on short texts (the tests' size).
"""
from flaxbert.training.finetune import finetune_config


def get_config(arg: str = ""):
    if arg not in ("", "tiny"):
        raise ValueError(f"demo_finetune.py: argument {arg!r}; use no argument or tiny")
    c = finetune_config(model="", objective="classification")
    c.task.text_column, c.task.label_column = "text", "label"
    c.task.max_seq_length = 64
    c.train.num_steps = 200
    c.train.global_batch_size = 32
    c.train.log_every = 20
    c.train.eval_every = 40
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 20
    c.optimizer.weight_decay = 0.01
    c.checkpoint.save_every = 1000  # the demo does not interrupt it: one save at the end
    c.checkpoint.keep = 1
    if arg == "tiny":
        c.task.max_seq_length = 32
        c.train.num_steps, c.train.global_batch_size = 8, 8
        c.train.log_every, c.train.eval_every = 2, 4
        c.optimizer.warmup_steps = 1
    return c
